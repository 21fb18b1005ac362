"""Durations as workflows write them: "90s", "15m", "2h", "1d", "1w", "-1d", or seconds.

Bounded to ten years either way: nothing Herald waits for is further off, and
an unbounded one (``"99999999999999d"``) would overflow a timedelta or a
timestamp far from where it was written.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from config.errors import WorkflowValidationError

_DURATION = re.compile(r"^\s*(-)?\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
MAX_DAYS = 3650
MAX_DURATION = dt.timedelta(days=MAX_DAYS)


def parse_duration(value: Any, field: str) -> dt.timedelta:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"-1d"`` or a number of seconds, at most
    ten years (``3650d``) either way; raises WorkflowValidationError naming ``field``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value)[:100])
        if not match:
            raise WorkflowValidationError(field, f"{_shown(value)} is not a duration like '15m', '2h', '1d'")
        sign = -1 if match.group(1) else 1
        seconds = sign * float(match.group(2)) * _UNITS[match.group(3)]
    if not math.isfinite(seconds) or abs(seconds) > MAX_DURATION.total_seconds():
        raise WorkflowValidationError(field, f"{_shown(value)} is too long: at most {MAX_DAYS}d (10 years)")
    return dt.timedelta(seconds=seconds)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
