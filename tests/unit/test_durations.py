"""Durations: the forms workflows write, and bounds that name the field at fault."""

from __future__ import annotations

import datetime as dt

import pytest

from actors.model.durations import parse_duration
from config.errors import WorkflowValidationError


@pytest.mark.parametrize(("value", "seconds"), [
    ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("-1d", -86400),
    (" 1.5 h ", 5400), (30, 30), (2.5, 2.5), ("3650d", 3650 * 86400), ("-3650d", -3650 * 86400),
])
def test_durations_parse(value: object, seconds: float) -> None:
    assert parse_duration(value, "duration") == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("value", [
    "99999999999999d", "3651d", "-99999999999999d", "522w", "1" * 400 + "s", 10**20, -(10**20), 1e300,
    float("inf"), float("-inf"), float("nan"),
])
def test_durations_beyond_ten_years_are_refused_naming_the_field(value: object) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        parse_duration(value, "steps[1].config.duration")
    assert caught.value.field == "steps[1].config.duration"
    assert "at most 3650d" in caught.value.message and len(str(caught.value)) < 200


@pytest.mark.parametrize("value", ["soon", "1y", "", "١d", "1d2h", None, True])
def test_what_is_no_duration_is_refused(value: object) -> None:
    with pytest.raises(WorkflowValidationError, match="is not a duration"):
        parse_duration(value, "offset")
