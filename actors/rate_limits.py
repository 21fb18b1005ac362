"""Per-recipient rate limits: at most N messages per channel to one recipient per window.

The count is taken in PostgreSQL from the messages already handed to
providers, under an advisory lock per (tenant, channel, recipient), so it
holds across any number of workers and survives restarts. Over the limit a
message waits until the window frees (the step's next attempt is set to that
moment; waiting never spends the retry budget) or, with ``"over_limit":
"skip"``, is skipped and the run goes on. Defaults come from
HERALD_RECIPIENT_LIMIT (``5/1h``; ``0`` turns it off); a workflow may set
``"rate_limit": {"per_recipient": 10, "window": "1d", "over_limit": "skip"}``.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from actors.model.rate_limits import MAX_PER_RECIPIENT, RateLimit
from config.errors import HeraldConfigError, RateLimitedError
from config.settings import VARIABLES, parse_recipient_limit


def lock(key_parameter: str) -> str:
    """The statement that takes a recipient's lock, its key (lock_key) the query's
    ``key_parameter`` ("$12"). Whoever counts a recipient's recent messages holds
    it from before its own message is written to its commit (delivery.py
    INSERT_MESSAGE_LOCKED), so two messages to one recipient are counted one
    after the other; the count is a statement of its own, after the lock is held,
    so it sees every message committed by whoever held the lock before."""
    return f"SELECT pg_advisory_xact_lock(hashtextextended({key_parameter}::text, 0))"


def lock_key(tenant: str, channel: str, recipient: str) -> str:
    return f"{tenant}:{channel}:{recipient}"


RECENT = """
SELECT created_at FROM herald.messages
WHERE tenant_id = $1 AND channel = $2 AND recipient = $3 AND status NOT IN ('failed', 'draft')
  AND created_at > clock_timestamp() - make_interval(secs => $4) AND id <> $6
ORDER BY created_at DESC
LIMIT $5
"""


def default_rate_limit(text: str) -> RateLimit:
    """HERALD_RECIPIENT_LIMIT's limit: ``"5/1h"`` or ``"0"`` (off), checked with the
    other settings at start."""
    per_recipient, window = parse_recipient_limit(text)
    if per_recipient > MAX_PER_RECIPIENT:
        raise HeraldConfigError(f"{VARIABLES['recipient_limit']} must allow at most {MAX_PER_RECIPIENT}"
                                f" messages per window, or 0 for no limit (got {text!r})")
    return RateLimit(per_recipient, window)


async def admit(conn: asyncpg.Connection, limit: RateLimit, tenant: str, channel: str, recipient: str,
                message_id: int) -> None:
    """Inside the transaction that just recorded message ``message_id``, holding the
    recipient's lock (:func:`lock`): raise RateLimitedError (which rolls the record back)
    when this recipient has had ``per_recipient`` other messages on this channel
    within the window."""
    if limit.off:
        return
    recent = await conn.fetch(RECENT, tenant, channel, recipient, limit.window.total_seconds(),
                              limit.per_recipient, message_id)
    if len(recent) < limit.per_recipient:
        return
    frees_at = recent[-1]["created_at"] + limit.window
    wait = max((frees_at - dt.datetime.now(dt.UTC)).total_seconds(), 0.5)
    outcome = "skipped" if limit.skip else f"waiting until {frees_at.isoformat(timespec='seconds')}"
    raise RateLimitedError(
        f"rate limited: {limit.per_recipient} {channel} messages per {limit.window} to {recipient}; {outcome}",
        retry_after=wait, skip=limit.skip)
