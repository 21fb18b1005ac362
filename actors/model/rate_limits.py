"""Per-recipient rate limits as workflows and tenants write them: at most
``per_recipient`` messages per channel to one recipient per ``window``, then
``wait`` or ``skip``. Counting is :mod:`actors.rate_limits`' business."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from actors.model.durations import parse_duration
from config.errors import StepError, WorkflowValidationError

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

    @property
    def off(self) -> bool:
        return self.per_recipient == 0

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
