"""Every log line written while a worker handles a message names the message's ids.

Before a message is processed, the worker thread's log context is cleared and
the message's actor, Dramatiq message id and ids bound (``event_ids`` for
match, ``run_ids`` for enrich, ``step_ids`` for the step actors; the singular
``event_id``... for a batch of one). An async actor's coroutine runs as its
own asyncio task, which starts with a copy of these bindings; what the actor
binds further (a step's run, event and tenant) stays in that task. After the
message, failed or not, the thread's context is cleared again, so nothing
carries over to the next message the thread takes.

Added first on the broker, so its "before" hook runs before every other
middleware's and its "after" hooks after theirs: their lines carry the ids too.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from config import log_context

# What a message's ids are, by actor; the step actors (email, sms, ...) take step ids.
ID_KINDS = {"match": "event", "enrich": "run"}


def message_ids(message: dramatiq.Message[Any]) -> dict[str, Any]:
    """The log context of a Herald actor message: actor, message id, and its ids."""
    found: dict[str, Any] = {"actor": message.actor_name, "message_id": message.message_id}
    ids = message.args[0] if message.args else None
    if isinstance(ids, list):
        found.update(log_context.batch_ids(ID_KINDS.get(message.actor_name, "step"), ids))
    return found


class LogContext(Middleware):
    """Binds a message's ids for its log lines, and clears them after it."""

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        log_context.clear()
        log_context.bind(**message_ids(message))

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        log_context.clear()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        log_context.clear()
