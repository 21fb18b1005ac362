"""The Dramatiq broker, set up before any actor is imported (:func:`setup_broker`).

A Redis broker whose idle consumers block on a wake-up list instead of polling:
an enqueue pushes a token, so a waiting worker picks the message up at once
rather than after its poll backoff (up to ``worker_timeout``). Its middleware:
asyncio actors, the wake-up push, per-recipient limits, the worker heartbeat,
and a time limit well below the lease.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware, TimeLimit
from dramatiq.middleware.asyncio import AsyncIO

from actors.middleware.heartbeat import WorkerHeartbeat
from actors.middleware.lifecycle import WorkerLifecycle
from actors.middleware.log_context import LogContext
from actors.middleware.rate_limits import RecipientRateLimits
from actors.middleware.systemd import SystemdNotify
from actors.rate_limits import default_rate_limit
from config.settings import Settings, current

# Wake-up tokens kept per queue; enough for every idle consumer of a queue.
WAKE_TOKENS = 64


def wake_key(namespace: str, queue_name: str) -> str:
    return f"{namespace}:wake:{queue_name}"


class WakeConsumers(Middleware):
    """After an enqueue, push a token that wakes a consumer blocked on that queue."""

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        if delay:
            return  # the worker holding the delayed message moves it when due
        assert isinstance(broker, WakingRedisBroker)
        key = wake_key(broker.namespace, message.queue_name)
        pipe = broker.client.pipeline(transaction=False)
        pipe.lpush(key, 1)
        pipe.ltrim(key, 0, WAKE_TOKENS - 1)
        pipe.execute()


class WakingRedisBroker(RedisBroker):
    """A RedisBroker whose idle consumers block on a wake-up list (see WakeConsumers).

    The consumer subclasses Dramatiq's Redis consumer, which is not public
    API: pyproject.toml pins Dramatiq's major version for that reason.
    """

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer


class _WakingConsumer(_RedisConsumer):
    """Blocks on the queue's wake-up list while there is nothing to fetch."""

    def __next__(self) -> Any:
        if not self.message_cache and self.outstanding_message_count < self.prefetch:
            try:
                self.message_cache = self.broker.do_fetch(
                    self.queue_name, self.prefetch - self.outstanding_message_count
                )
                if not self.message_cache:
                    # Wait for an enqueue, at most worker_timeout, then look again.
                    self.broker.client.blpop(
                        [wake_key(self.broker.namespace, self.queue_name)],
                        timeout=max(self.timeout, 10) / 1000,
                    )
                    return None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise ConnectionClosed(exc) from None
        return super().__next__()


def make_broker(settings: Settings) -> WakingRedisBroker:
    # Socket timeouts: a Redis that stops answering is an error Herald handles
    # (the work waits in PostgreSQL), never a hang. Longer than a consumer's
    # blocking wait for a wake-up token.
    socket_timeout = max(settings.redis_timeout_s, settings.worker_timeout_ms / 1000 + 1)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=socket_timeout,
                                  socket_connect_timeout=settings.redis_timeout_s, health_check_interval=30)
    broker = WakingRedisBroker(client=client)
    # First: its hooks bind the message's ids before, and clear them after, every other middleware's.
    broker.add_middleware(LogContext(), before=type(broker.middleware[0]))
    for middleware in broker.middleware:
        if isinstance(middleware, TimeLimit):
            # Far below Dramatiq's 10-minute default: steps must end well within their lease.
            middleware.time_limit = int(settings.actor_time_limit_s * 1000)
    broker.add_middleware(AsyncIO())
    broker.add_middleware(WakeConsumers())
    broker.add_middleware(RecipientRateLimits(default_rate_limit(settings.recipient_limit)))
    broker.add_middleware(WorkerHeartbeat(settings.database_url, settings.heartbeat_interval_s))
    broker.add_middleware(WorkerLifecycle.from_settings(settings))
    broker.add_middleware(SystemdNotify())  # after the two it relies on (heartbeat, lifecycle)
    return broker


_broker: WakingRedisBroker | None = None

# Herald's actors as their modules declare them (:func:`actor`); actors.worker puts
# them on the broker it sets up. Importing an actor module touches no broker.
_DECLARED: list[tuple[Callable[..., Any], dict[str, Any]]] = []


def actor(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a Herald actor with Dramatiq's options (``queue_name``...); its name is
    the function's. Nothing reaches a broker until :func:`declare_actors`."""
    def declare(fn: Callable[..., Any]) -> Callable[..., Any]:
        _DECLARED.append((fn, options))
        return fn
    return declare


def declare_actors(broker: dramatiq.Broker) -> list[str]:
    """Put every declared actor on ``broker``; return their names."""
    for fn, options in _DECLARED:
        if fn.__name__ not in broker.actors:
            dramatiq.actor(fn, broker=broker, **options)
    return sorted(fn.__name__ for fn, _ in _DECLARED)


def setup_broker(settings: Settings | None = None) -> WakingRedisBroker:
    """This process's broker, built once and made Dramatiq's: called where a
    worker (actors.worker) or a sender (the daemon, `herald retry`) starts,
    before any actor module is imported. Importing this module does nothing."""
    global _broker
    if _broker is None:
        _broker = make_broker(settings or current())
        dramatiq.set_broker(_broker)
    return _broker


def send(actor_name: str, ids: list[int], *, delay_ms: int | None = None,
         broker: dramatiq.Broker | None = None) -> None:
    """Send a batch of ids to a Herald actor by its name (each is named after its
    queue), without importing the actor: a sender needs only a broker (this
    process's, or ``broker``, e.g. the dashboard's own)."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=actor_name, actor_name=actor_name, args=(ids,), kwargs={}, options={})
    (broker or setup_broker()).enqueue(message, delay=delay_ms or None)
