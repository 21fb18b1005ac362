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
from dataclasses import dataclass
from typing import Any

import asyncpg

from actors.durations import parse_duration
from config.errors import HeraldConfigError, RateLimitedError, StepError, WorkflowValidationError
from config.settings import VARIABLES, parse_recipient_limit

LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"

RECENT = """
SELECT created_at FROM herald.messages
WHERE tenant_id = $1 AND channel = $2 AND recipient = $3 AND status NOT IN ('failed', 'draft')
  AND created_at > clock_timestamp() - make_interval(secs => $4)
ORDER BY created_at DESC
LIMIT $5
"""


# Messages per recipient per window: 0 turns the limit off; beyond a million it means
# nothing a person would notice, and an unbounded one overflows the count query.
MAX_PER_RECIPIENT = 1_000_000


class InvalidRateLimit(WorkflowValidationError, StepError):
    """A rate limit setting out of range. Saving a workflow (or ``herald rate-limit``)
    refuses it as a validation error; found stored (written before the bounds, or by
    hand) when a message is about to be sent, it fails that step permanently with
    this reason instead of leaving the step *sending*, retried forever."""

    def __init__(self, field: str, message: str) -> None:
        WorkflowValidationError.__init__(self, field, message)
        self.permanent = True
        self.retry_after = None


@dataclass(frozen=True)
class RateLimit:
    per_recipient: int  # 0: no limit
    window: dt.timedelta
    skip: bool = False

    @classmethod
    def parse_default(cls, text: str) -> RateLimit:
        """``"5/1h"`` or ``"0"`` (off), as in HERALD_RECIPIENT_LIMIT (checked with the
        other settings at start; the parsing lives in config so that needs no actors)."""
        per_recipient, window = parse_recipient_limit(text)
        if per_recipient > MAX_PER_RECIPIENT:
            raise HeraldConfigError(f"{VARIABLES['recipient_limit']} must allow at most {MAX_PER_RECIPIENT}"
                                    f" messages per window, or 0 for no limit (got {text!r})")
        return cls(per_recipient, window)

    def override(self, raw: Any, field: str = "rate_limit") -> RateLimit:
        """This limit with a workflow's (or a tenant's) ``rate_limit`` settings applied.

        Raises :class:`InvalidRateLimit` (a validation error, and a permanent step
        error when met while sending) naming the setting at fault.
        """
        if raw is None:
            return self
        if not isinstance(raw, dict):
            raise InvalidRateLimit(field, "must be an object")
        unknown = set(raw) - {"per_recipient", "window", "over_limit"}
        if unknown:
            raise InvalidRateLimit(f"{field}.{sorted(unknown)[0]}", "unknown rate limit setting")
        limit = raw.get("per_recipient", self.per_recipient)
        if (not isinstance(limit, int) or isinstance(limit, bool)
                or not 0 <= limit <= MAX_PER_RECIPIENT):
            raise InvalidRateLimit(f"{field}.per_recipient", f"must be a whole number from 0 (no limit) to"
                                   f" {MAX_PER_RECIPIENT} (got {_shown(limit)})")
        try:
            window = parse_duration(raw["window"], f"{field}.window") if "window" in raw else self.window
        except WorkflowValidationError as exc:
            raise InvalidRateLimit(exc.field, exc.message) from None
        if window <= dt.timedelta(0):
            raise InvalidRateLimit(f"{field}.window", "must be a positive duration")
        policy = raw.get("over_limit", "skip" if self.skip else "wait")
        if policy not in ("wait", "skip"):
            raise InvalidRateLimit(f"{field}.over_limit", "must be 'wait' or 'skip'")
        return RateLimit(limit, window, policy == "skip")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


async def admit(conn: asyncpg.Connection, limit: RateLimit, tenant: str, channel: str, recipient: str) -> None:
    """Inside the transaction that records the message: raise RateLimitedError when
    this recipient has had ``per_recipient`` messages on this channel within the window."""
    if limit.per_recipient == 0:
        return
    await conn.execute(LOCK, f"{tenant}:{channel}:{recipient}")
    recent = await conn.fetch(RECENT, tenant, channel, recipient, limit.window.total_seconds(),
                              limit.per_recipient)
    if len(recent) < limit.per_recipient:
        return
    frees_at = recent[-1]["created_at"] + limit.window
    wait = max((frees_at - dt.datetime.now(dt.UTC)).total_seconds(), 0.5)
    outcome = "skipped" if limit.skip else f"waiting until {frees_at.isoformat(timespec='seconds')}"
    raise RateLimitedError(
        f"rate limited: {limit.per_recipient} {channel} messages per {limit.window} to {recipient}; {outcome}",
        retry_after=wait, skip=limit.skip)
