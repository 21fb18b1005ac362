"""Durations as workflows write them: "90s", "15m", "2h", "1d", "1w", "-1d", or seconds."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from config.errors import WorkflowValidationError

_DURATION = re.compile(r"^\s*(-)?\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: Any, field: str) -> dt.timedelta:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"-1d"`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise WorkflowValidationError(field, f"{value!r} is not a duration like '15m', '2h', '1d'")
    sign = -1 if match.group(1) else 1
    return dt.timedelta(seconds=sign * float(match.group(2)) * _UNITS[match.group(3)])
