"""Workflow conditions: parsed once when a workflow is loaded, evaluated per event.

Two spellings are accepted, both from the systems Herald replaces:

* the shorthand map ``{"new_status": "completed"}``: every key must equal its
  value; ``new_<field>`` and ``old_<field>`` read the changed row before and
  after, any other key is a dot path;
* the group form ``{"operator": "and", "conditions": [{"field": ...,
  "operator": "equals", "value": ...}]}``, nestable.

Operators: equals / not_equals (a number equals its numeric string), contains /
not_contains (text in text, or an item in a list), exists / not_exists (present
and not null), greater_than(_or_equal) / less_than(_or_equal) (numbers with
numbers, ISO dates with dates), in / not_in (a list), starts_with / ends_with,
matches (a regular expression of at most 256 characters, given 50 ms on the
first 10,000 characters), changed / changed_from / changed_to (the field's
value in ``old`` against ``new``; ``status``, ``job.status`` and
``new.status`` name the same column), before / after (an ISO date or time, or
"now") and within_last ("7d", "24h", "30m", "90s" or seconds).

Evaluation never raises: a missing path or a type mismatch is simply false,
with the reason recorded. Every event is evaluated against every workflow of
its tenant on a shared worker, so a workflow's conditions are bounded when it
is parsed (see :mod:`actors.model.limits`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import regex

from actors.model.durations import parse_duration
from actors.model.limits import (
    REGEX_MAX_INPUT,
    REGEX_MAX_PATTERN,
    REGEX_TIMEOUT_S,
    WORKFLOW_MAX_CONDITION_DEPTH,
    WORKFLOW_MAX_CONDITIONS,
    WORKFLOW_MAX_PATTERNS,
)
from actors.model.naming import AmbiguousName, column_for
from config.errors import WorkflowValidationError

_MISSING = object()


def resolve_path(context: dict[str, Any], path: str) -> Any:
    """Follow a dot path through nested mappings; ``_MISSING`` when absent."""
    value: Any = context
    for part in path.split("."):
        if not isinstance(value, dict):
            return _MISSING
        try:
            name = column_for(part, value.keys())
        except AmbiguousName:
            return _MISSING
        if name is None:
            return _MISSING
        value = value[name]
    return value


class Mismatch(Exception):
    """A value cannot be compared the way the operator needs: the condition is false."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _moment(value: Any, now: dt.datetime) -> dt.datetime | None:
    """An ISO date or timestamp (naive means UTC), or "now"."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime.combine(value, dt.time())
    elif isinstance(value, str):
        if value.strip().lower() == "now":
            return now
        try:
            moment = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _ordered(actual: Any, expected: Any, now: dt.datetime) -> tuple[Any, Any]:
    """Both as numbers, or both as moments in time; otherwise a mismatch."""
    a, b = _number(actual), _number(expected)
    if a is not None and b is not None:
        return a, b
    if isinstance(actual, str) and isinstance(expected, str):
        ma, mb = _moment(actual, now), _moment(expected, now)
        if ma is not None and mb is not None:
            return ma, mb
    raise Mismatch(f"cannot compare {type(actual).__name__} {actual!r} with {type(expected).__name__}")


def _equals(actual: Any, expected: Any) -> bool:
    if actual == expected:
        return True
    a, b = _number(actual), _number(expected)
    return a is not None and b is not None and a == b and not isinstance(actual, bool)


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, str):
        if not isinstance(expected, str):
            raise Mismatch(f"cannot look for {type(expected).__name__} in a string")
        return expected in actual
    if isinstance(actual, list):
        return any(_equals(item, expected) for item in actual)
    raise Mismatch(f"{type(actual).__name__} {actual!r} is neither text nor a list")


def _text(actual: Any) -> str:
    if not isinstance(actual, str):
        raise Mismatch(f"{type(actual).__name__} {actual!r} is not text")
    return actual


def _matches(actual: Any, pattern: Any) -> bool:
    try:
        return pattern.search(_text(actual)[:REGEX_MAX_INPUT], timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        raise Mismatch(f"the pattern took longer than {REGEX_TIMEOUT_S}s on this value") from None


def _duration(value: Any) -> dt.timedelta | None:
    try:
        duration = parse_duration(value, "value")
    except WorkflowValidationError:
        return None
    return duration if duration > dt.timedelta(0) else None


Compare_ = Callable[[Any, Any, dt.datetime], bool]

OPERATORS: dict[str, Compare_] = {
    "equals": lambda a, e, now: _equals(a, e),
    "not_equals": lambda a, e, now: not _equals(a, e),
    "contains": lambda a, e, now: _contains(a, e),
    "not_contains": lambda a, e, now: not _contains(a, e),
    "greater_than": lambda a, e, now: (lambda x, y: x > y)(*_ordered(a, e, now)),
    "greater_than_or_equal": lambda a, e, now: (lambda x, y: x >= y)(*_ordered(a, e, now)),
    "less_than": lambda a, e, now: (lambda x, y: x < y)(*_ordered(a, e, now)),
    "less_than_or_equal": lambda a, e, now: (lambda x, y: x <= y)(*_ordered(a, e, now)),
    "in": lambda a, e, now: any(_equals(a, item) for item in e),
    "not_in": lambda a, e, now: not any(_equals(a, item) for item in e),
    "starts_with": lambda a, e, now: _text(a).startswith(e),
    "ends_with": lambda a, e, now: _text(a).endswith(e),
    "matches": lambda a, e, now: _matches(a, e),
    "before": lambda a, e, now: (lambda x, y: x < y)(*_moments(a, e, now)),
    "after": lambda a, e, now: (lambda x, y: x > y)(*_moments(a, e, now)),
    "within_last": lambda a, e, now: now - e <= _moments(a, "now", now)[0] <= now,
}
UNARY = {"exists", "not_exists"}
# Compare a field's value before and after the change.
CHANGE = {"changed", "changed_from", "changed_to"}
ALL_OPERATORS = sorted([*OPERATORS, *UNARY, *CHANGE])


def _moments(actual: Any, expected: Any, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    a, b = _moment(actual, now), _moment(expected, now)
    if a is None:
        raise Mismatch(f"{actual!r} is not a date or time")
    if b is None:
        raise Mismatch(f"{expected!r} is not a date or time")
    return a, b


@dataclass(frozen=True)
class Outcome:
    matched: bool
    reason: str  # for a failure: the first condition that failed and why


class Condition:
    def evaluate(self, context: dict[str, Any], *, now: dt.datetime | None = None) -> Outcome:
        """Never raises: a missing path or a type mismatch is false, with the reason."""
        raise NotImplementedError  # pragma: no cover - abstract


@dataclass(frozen=True)
class Always(Condition):
    def evaluate(self, context: dict[str, Any], *, now: dt.datetime | None = None) -> Outcome:
        return Outcome(True, "no conditions")


@dataclass(frozen=True)
class Compare(Condition):
    path: str
    operator: str
    value: Any = None  # for "matches": the compiled pattern; "within_last": a timedelta
    shown: Any = None  # the value as written, for reasons

    def evaluate(self, context: dict[str, Any], *, now: dt.datetime | None = None) -> Outcome:
        now = now or dt.datetime.now(dt.UTC)
        label = f"{self.path} {self.operator}" + (
            "" if self.operator in UNARY or self.operator == "changed" else f" {self.shown!r}")
        if self.operator in CHANGE:
            return self._changed(context, label)
        actual = resolve_path(context, self.path)
        if self.operator == "exists":
            ok = actual is not _MISSING and actual is not None
        elif self.operator == "not_exists":
            ok = actual is _MISSING or actual is None
        elif actual is _MISSING:
            return Outcome(False, f"{label}: {self.path} is missing")
        elif actual is None:
            return Outcome(False, f"{label}: {self.path} is empty")
        else:
            try:
                ok = OPERATORS[self.operator](actual, self.value, now)
            except Mismatch as exc:
                return Outcome(False, f"{label}: {exc}")
        if ok:
            return Outcome(True, label)
        shown = "missing" if actual is _MISSING else repr(actual)
        return Outcome(False, f"{label}: was {shown}")

    def _changed(self, context: dict[str, Any], label: str) -> Outcome:
        field = _row_field(self.path, context)
        old, new = context.get("old") or {}, context.get("new") or {}
        if not old or not new:
            return Outcome(False, f"{label}: the event is not an update")
        before, after = resolve_path(old, field), resolve_path(new, field)
        if before is _MISSING and after is _MISSING:
            return Outcome(False, f"{label}: {field} is missing")
        if _equals(before, after):
            return Outcome(False, f"{label}: {field} did not change")
        if self.operator == "changed_from" and not _equals(before, self.value):
            return Outcome(False, f"{label}: changed from {before!r}")
        if self.operator == "changed_to" and not _equals(after, self.value):
            return Outcome(False, f"{label}: changed to {after!r}")
        return Outcome(True, f"{label} ({before!r} -> {after!r})")


def _row_field(path: str, context: dict[str, Any]) -> str:
    """``status``, ``job.status``, ``new.status`` and ``old.status`` all name the row's status."""
    entity = (context.get("event") or {}).get("entity")
    head, _, rest = path.partition(".")
    if rest and head in ("new", "old", entity):
        return rest
    return path


@dataclass(frozen=True)
class Group(Condition):
    operator: str  # and | or | not
    children: tuple[Condition, ...]

    def evaluate(self, context: dict[str, Any], *, now: dt.datetime | None = None) -> Outcome:
        outcomes = [child.evaluate(context, now=now) for child in self.children]
        if self.operator == "and":
            failed = next((o for o in outcomes if not o.matched), None)
            return failed or Outcome(True, " and ".join(o.reason for o in outcomes))
        if self.operator == "or":
            passed = next((o for o in outcomes if o.matched), None)
            return passed or Outcome(False, "none of: " + "; ".join(o.reason for o in outcomes))
        inner = outcomes[0]
        return Outcome(not inner.matched, f"not ({inner.reason})")


def parse_condition(raw: Any, field: str) -> Condition:
    """Parse either spelling; raise :class:`WorkflowValidationError` naming the field.

    Every event runs the conditions of every workflow of its tenant on a shared
    worker, so their size is bounded: at most WORKFLOW_MAX_CONDITIONS
    comparisons, WORKFLOW_MAX_PATTERNS of them ``matches``, in groups nested at
    most WORKFLOW_MAX_CONDITION_DEPTH deep.
    """
    return _Parser().parse(raw, field, 0)


class _Parser:
    """One parse of a workflow's conditions: counts what the limits bound."""

    def __init__(self) -> None:
        self.comparisons = 0
        self.patterns = 0

    def parse(self, raw: Any, field: str, depth: int) -> Condition:
        if raw is None or raw == {}:
            return Always()
        if not isinstance(raw, dict):
            raise WorkflowValidationError(field, "must be an object")
        if "conditions" in raw or raw.get("operator") in ("and", "or", "not"):
            return self.group(raw, field, depth + 1)
        if "field" in raw and "operator" in raw:
            self.count(field)
            compare = _parse_compare(raw, field)
            if isinstance(compare, Compare) and compare.operator == "matches":
                self.patterns += 1
                if self.patterns > WORKFLOW_MAX_PATTERNS:
                    raise WorkflowValidationError(
                        f"{field}.operator",
                        f"more than {WORKFLOW_MAX_PATTERNS} 'matches' conditions in one workflow",
                    )
            return compare
        for _ in raw:
            self.count(field)
        return _parse_shorthand(raw, field)

    def count(self, field: str) -> None:
        self.comparisons += 1
        if self.comparisons > WORKFLOW_MAX_CONDITIONS:
            raise WorkflowValidationError(
                field, f"more than {WORKFLOW_MAX_CONDITIONS} conditions in one workflow")

    def group(self, raw: dict[str, Any], field: str, depth: int) -> Condition:
        if depth > WORKFLOW_MAX_CONDITION_DEPTH:
            raise WorkflowValidationError(
                field, f"condition groups nested more than {WORKFLOW_MAX_CONDITION_DEPTH} levels deep")
        operator = raw.get("operator", "and")
        if operator not in ("and", "or", "not"):
            raise WorkflowValidationError(f"{field}.operator", f"unknown group operator {operator!r}")
        children = raw.get("conditions")
        if not isinstance(children, list) or not children:
            raise WorkflowValidationError(f"{field}.conditions", "must be a non-empty list")
        if operator == "not" and len(children) != 1:
            raise WorkflowValidationError(f"{field}.conditions", "'not' takes exactly one condition")
        return Group(
            operator,
            tuple(self.parse(child, f"{field}.conditions[{i}]", depth) for i, child in enumerate(children)),
        )


def _parse_compare(raw: dict[str, Any], field: str) -> Condition:
    path = raw["field"]
    if not isinstance(path, str) or not path:
        raise WorkflowValidationError(f"{field}.field", "must be a non-empty dot path")
    operator = raw["operator"]
    if operator not in ALL_OPERATORS:
        raise WorkflowValidationError(
            f"{field}.operator", f"unknown operator {operator!r} (known: {', '.join(ALL_OPERATORS)})"
        )
    needs_value = operator not in UNARY and operator != "changed"
    if needs_value and "value" not in raw:
        raise WorkflowValidationError(f"{field}.value", f"operator {operator!r} needs a value")
    shown = raw.get("value")
    return Compare(path, operator, _parse_value(operator, shown, f"{field}.value"), shown)


def _parse_value(operator: str, value: Any, field: str) -> Any:
    """Check (and prepare) the value an operator compares against."""
    if operator in ("in", "not_in") and not isinstance(value, list):
        raise WorkflowValidationError(field, f"{operator} needs a list")
    if operator in ("starts_with", "ends_with") and not isinstance(value, str):
        raise WorkflowValidationError(field, f"{operator} needs text")
    if operator == "matches":
        if not isinstance(value, str) or len(value) > REGEX_MAX_PATTERN:
            raise WorkflowValidationError(field, f"matches needs a pattern of at most {REGEX_MAX_PATTERN} characters")
        try:
            return regex.compile(value)
        except regex.error as exc:
            raise WorkflowValidationError(field, f"invalid regular expression: {exc}") from None
    if operator in ("before", "after") and _moment(value, dt.datetime.now(dt.UTC)) is None:
        raise WorkflowValidationError(field, f"{operator} needs an ISO date or time, or 'now'")
    if operator == "within_last":
        duration = _duration(value)
        if duration is None:
            raise WorkflowValidationError(field, "within_last needs a duration like '7d', '24h' or seconds")
        return duration
    if operator.startswith(("greater", "less")) and _number(value) is None and (
        not isinstance(value, str) or _moment(value, dt.datetime.now(dt.UTC)) is None
    ):
        raise WorkflowValidationError(field, f"{operator} needs a number or an ISO date")
    return value


def _parse_shorthand(raw: dict[str, Any], field: str) -> Condition:
    children = []
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise WorkflowValidationError(field, f"invalid condition key {key!r}")
        if key.startswith("new_"):
            path = "new." + key[4:]
        elif key.startswith("old_"):
            path = "old." + key[4:]
        else:
            path = key
        children.append(Compare(path, "equals", value, value))
    return children[0] if len(children) == 1 else Group("and", tuple(children))
