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
from config.errors import RateLimitedError, WorkflowValidationError
from config.settings import parse_recipient_limit

LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"

RECENT = """
SELECT created_at FROM herald.messages
WHERE tenant_id = $1 AND channel = $2 AND recipient = $3 AND status NOT IN ('failed', 'draft')
  AND created_at > clock_timestamp() - make_interval(secs => $4)
ORDER BY created_at DESC
LIMIT $5
"""


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
        return cls(per_recipient, window)

    def override(self, raw: Any, field: str = "rate_limit") -> RateLimit:
        """This limit with a workflow's ``rate_limit`` settings applied."""
        if raw is None:
            return self
        if not isinstance(raw, dict):
            raise WorkflowValidationError(field, "must be an object")
        unknown = set(raw) - {"per_recipient", "window", "over_limit"}
        if unknown:
            raise WorkflowValidationError(f"{field}.{sorted(unknown)[0]}", "unknown rate limit setting")
        limit = raw.get("per_recipient", self.per_recipient)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise WorkflowValidationError(f"{field}.per_recipient", "must be a whole number >= 0")
        window = parse_duration(raw["window"], f"{field}.window") if "window" in raw else self.window
        if window <= dt.timedelta(0):
            raise WorkflowValidationError(f"{field}.window", "must be a positive duration")
        policy = raw.get("over_limit", "skip" if self.skip else "wait")
        if policy not in ("wait", "skip"):
            raise WorkflowValidationError(f"{field}.over_limit", "must be 'wait' or 'skip'")
        return RateLimit(limit, window, policy == "skip")


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
