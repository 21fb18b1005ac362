"""Duplicate prevention: the same change must not run a workflow twice.

Two rules, per workflow (``"dedupe": {"window_s": 30, "once_per": "1h"}``):

* the duplicate window (default 30 s): a run for the same workflow, record and
  transition (e.g. ``status: in_progress -> completed``) within the window is
  skipped — double saves, retried app requests;
* ``once_per`` (off by default): at most one run per workflow, record and
  resulting state per period — the replaced system's "once an hour per job,
  workflow and status".

Skipped runs are recorded with the reason. Manual and scheduled events are
never deduplicated here (scheduled ones are once per occurrence already).
The keys are stored as a short readable prefix and a sha256 of the whole key,
so a change of any size can be checked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from actors.model.durations import parse_duration
from actors.model.triggers import Trigger
from config.errors import WorkflowValidationError

DEFAULT_WINDOW_S = 30.0
CAPTURED = ("INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True)
class DedupePolicy:
    window: dt.timedelta = dt.timedelta(seconds=DEFAULT_WINDOW_S)
    once_per: dt.timedelta | None = None

    @property
    def prevents_duplicates(self) -> bool:
        """Whether runs are skipped at all: a window, or once_per (``window_s: 0`` alone turns it off)."""
        return self.window > dt.timedelta(0) or self.once_per is not None

    @classmethod
    def from_config(cls, raw: Any, field: str = "dedupe") -> DedupePolicy:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise WorkflowValidationError(field, "must be an object")
        unknown = set(raw) - {"window_s", "once_per"}
        if unknown:
            raise WorkflowValidationError(f"{field}.{min(unknown)}", "unknown dedupe setting")
        window = raw.get("window_s", DEFAULT_WINDOW_S)
        if not isinstance(window, (int, float)) or isinstance(window, bool) or window < 0:
            raise WorkflowValidationError(f"{field}.window_s", "must be a number of seconds >= 0")
        once_per = raw.get("once_per")
        period = parse_duration(once_per, f"{field}.once_per") if once_per is not None else None
        if period is not None and period <= dt.timedelta(0):
            raise WorkflowValidationError(f"{field}.once_per", "must be a positive duration")
        return cls(dt.timedelta(seconds=window), period)


def _value(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def keys(trigger: Trigger, event: dict[str, Any]) -> tuple[str | None, str | None]:
    """(dedupe key, once key) of an event for a workflow with this trigger."""
    if event["operation"] not in CAPTURED:
        return None, None
    record = f"{event['entity']}:{event['row_id']}"
    old, new = event.get("old") or {}, event.get("new") or {}
    if trigger.field is not None:
        transition = f"{trigger.field}:{_value(old.get(trigger.field))}->{_value(new.get(trigger.field))}"
        state = f"{trigger.field}={_value(new.get(trigger.field))}"
    else:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        transition = f"{event['operation']}:" + _value({k: new.get(k) for k in changed})
        state = event["operation"]
    return bounded_key(f"{record}:{transition}"), bounded_key(f"{record}:{state}")


# A key's readable head, for whoever looks at herald.runs; the digest decides.
KEY_PREFIX_CHARS = 64


def bounded_key(key: str) -> str:
    """A fixed-size stand-in for ``key``: its first characters, then the sha256 of all of it.

    The keys hold the changed values, which can be any size, and are indexed
    (btree, for the duplicate checks): a 12 KB change would not fit in an index
    row, and the insert of every run of its batch would fail.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{key[:KEY_PREFIX_CHARS]}#{digest}"


def skip_reason(
    policy: DedupePolicy, dedupe_key: str | None, once_key: str | None,
    previous: list[tuple[str | None, str | None, dt.datetime]], now: dt.datetime,
) -> str | None:
    """Why a run with these keys must be skipped, given earlier runs of the workflow."""
    for earlier_dedupe, earlier_once, created_at in previous:
        age = now - created_at
        if dedupe_key is not None and earlier_dedupe == dedupe_key and age <= policy.window:
            return (f"duplicate: the same change ran this workflow {age.total_seconds():.1f}s ago"
                    f" (window {policy.window.total_seconds():g}s)")
        if policy.once_per is not None and once_key is not None and earlier_once == once_key \
                and age <= policy.once_per:
            return f"already ran for this record and state within {policy.once_per} (once_per)"
    return None
