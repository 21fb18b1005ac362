"""The Dramatiq broker, imported before any actor.

Builds the process's settings once, configures logging, and installs a
Redis broker whose idle consumers block on a wake-up list instead of polling:
an enqueue pushes a token, so a waiting worker picks the message up at once
rather than after its poll backoff (up to ``worker_timeout``).
"""

from __future__ import annotations

from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware.asyncio import AsyncIO

from actors.middleware.rate_limits import RecipientRateLimits
from actors.rate_limits import RateLimit
from config.logging import configure_logging
from config.settings import Settings, current

# Wake-up tokens kept per queue; enough for every idle consumer of a queue.
WAKE_TOKENS = 64


def wake_key(namespace: str, queue_name: str) -> str:
    return f"{namespace}:wake:{queue_name}"


class WakingRedisBroker(RedisBroker):
    """A RedisBroker whose enqueue wakes consumers blocked on the queue."""

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        message = super().enqueue(message, delay=delay)
        if delay is None:
            key = wake_key(self.namespace, message.queue_name)
            pipe = self.client.pipeline(transaction=False)
            pipe.lpush(key, 1)
            pipe.ltrim(key, 0, WAKE_TOKENS - 1)
            pipe.execute()
        return message


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
            except redis.ConnectionError as exc:
                raise ConnectionClosed(exc) from None
        return super().__next__()


def make_broker(settings: Settings) -> WakingRedisBroker:
    broker = WakingRedisBroker(url=settings.redis_url)
    broker.add_middleware(AsyncIO())
    broker.add_middleware(RecipientRateLimits(RateLimit.parse_default(settings.recipient_limit)))
    return broker


settings = current()
configure_logging(settings, process="worker")
broker = make_broker(settings)
dramatiq.set_broker(broker)
