"""The per-recipient rate-limit middleware.

Actors that deliver messages declare ``recipient_limited=True``; this
middleware holds the worker's default limit (HERALD_RECIPIENT_LIMIT) and gives
it to them. The count itself is taken in PostgreSQL (see
:mod:`actors.rate_limits`) when the message is recorded, because only then is
the recipient known, and because a count in the database holds across
workers, restarts and a flushed Redis, which Dramatiq's Redis-backed limiters
would not.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import Middleware

from actors.model.rate_limits import RateLimit


class RecipientRateLimits(Middleware):
    """Declares the ``recipient_limited`` actor option and the default limit."""

    def __init__(self, default: RateLimit) -> None:
        self.default = default

    @property
    def actor_options(self) -> set[str]:
        return {"recipient_limited"}

    def limit_for(self, broker: dramatiq.Broker, actor_name: str) -> RateLimit | None:
        """The default limit for this actor's messages, or None when it is not limited."""
        actor = broker.get_actor(actor_name)
        return self.default if actor.options.get("recipient_limited", False) else None


def default_limit(actor_name: str) -> RateLimit | None:
    """The limit the broker's RecipientRateLimits middleware sets for ``actor_name``."""
    broker = dramatiq.get_broker()
    for middleware in broker.middleware:
        if isinstance(middleware, RecipientRateLimits):
            return middleware.limit_for(broker, actor_name)
    return None
