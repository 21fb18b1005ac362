"""Workflow conditions: parsed once when a workflow is loaded, evaluated per event.

Two spellings are accepted, both from the systems Herald replaces:

* the shorthand map ``{"new_status": "completed"}``: every key must equal its
  value; ``new_<field>`` and ``old_<field>`` read the changed row before and
  after, any other key is a dot path;
* the group form ``{"operator": "and", "conditions": [{"field": ...,
  "operator": "equals", "value": ...}]}``, nestable.

Evaluation never raises: a missing path or a type mismatch is simply false,
with the reason recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.errors import WorkflowValidationError

_MISSING = object()


def resolve_path(context: dict[str, Any], path: str) -> Any:
    """Follow a dot path through nested mappings; ``_MISSING`` when absent."""
    value: Any = context
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, dict) and _snake(part) in value:
            value = value[_snake(part)]
        else:
            return _MISSING
    return value


def _snake(name: str) -> str:
    out = []
    for char in name:
        if char.isupper():
            out.append("_")
            out.append(char.lower())
        else:
            out.append(char)
    return "".join(out)


def _equals(actual: Any, expected: Any) -> bool:
    return actual == expected or (
        isinstance(actual, (int, float)) and isinstance(expected, str) and str(actual) == expected
    )


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": _equals,
    "not_equals": lambda actual, expected: not _equals(actual, expected),
    "in": lambda actual, expected: isinstance(expected, list) and actual in expected,
    "not_in": lambda actual, expected: isinstance(expected, list) and actual not in expected,
}
UNARY = {"exists", "not_exists"}


@dataclass(frozen=True)
class Outcome:
    matched: bool
    reason: str  # for a failure: the first condition that failed and why


class Condition:
    def evaluate(self, context: dict[str, Any]) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Always(Condition):
    def evaluate(self, context: dict[str, Any]) -> Outcome:
        return Outcome(True, "no conditions")


@dataclass(frozen=True)
class Compare(Condition):
    path: str
    operator: str
    value: Any = None

    def evaluate(self, context: dict[str, Any]) -> Outcome:
        actual = resolve_path(context, self.path)
        label = f"{self.path} {self.operator}" + (
            "" if self.operator in UNARY else f" {self.value!r}"
        )
        if self.operator == "exists":
            ok = actual is not _MISSING and actual is not None
        elif self.operator == "not_exists":
            ok = actual is _MISSING or actual is None
        elif actual is _MISSING:
            return Outcome(False, f"{label}: {self.path} is missing")
        else:
            try:
                ok = OPERATORS[self.operator](actual, self.value)
            except TypeError:
                return Outcome(False, f"{label}: cannot compare {type(actual).__name__}")
        if ok:
            return Outcome(True, label)
        shown = "missing" if actual is _MISSING else repr(actual)
        return Outcome(False, f"{label}: was {shown}")


@dataclass(frozen=True)
class Group(Condition):
    operator: str  # and | or | not
    children: tuple[Condition, ...]

    def evaluate(self, context: dict[str, Any]) -> Outcome:
        outcomes = [child.evaluate(context) for child in self.children]
        if self.operator == "and":
            failed = next((o for o in outcomes if not o.matched), None)
            return failed or Outcome(True, " and ".join(o.reason for o in outcomes))
        if self.operator == "or":
            passed = next((o for o in outcomes if o.matched), None)
            return passed or Outcome(False, "none of: " + "; ".join(o.reason for o in outcomes))
        inner = outcomes[0]
        return Outcome(not inner.matched, f"not ({inner.reason})")


def parse_condition(raw: Any, field: str) -> Condition:
    """Parse either spelling; raise :class:`WorkflowValidationError` naming the field."""
    if raw is None or raw == {}:
        return Always()
    if not isinstance(raw, dict):
        raise WorkflowValidationError(field, "must be an object")
    if "conditions" in raw or raw.get("operator") in ("and", "or", "not"):
        return _parse_group(raw, field)
    if "field" in raw and "operator" in raw:
        return _parse_compare(raw, field)
    return _parse_shorthand(raw, field)


def _parse_group(raw: dict[str, Any], field: str) -> Condition:
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
        tuple(parse_condition(child, f"{field}.conditions[{i}]") for i, child in enumerate(children)),
    )


def _parse_compare(raw: dict[str, Any], field: str) -> Condition:
    path = raw["field"]
    if not isinstance(path, str) or not path:
        raise WorkflowValidationError(f"{field}.field", "must be a non-empty dot path")
    operator = raw["operator"]
    if operator not in OPERATORS and operator not in UNARY:
        known = ", ".join(sorted([*OPERATORS, *UNARY]))
        raise WorkflowValidationError(
            f"{field}.operator", f"unknown operator {operator!r} (known: {known})"
        )
    if operator not in UNARY and "value" not in raw:
        raise WorkflowValidationError(f"{field}.value", f"operator {operator!r} needs a value")
    return Compare(path, operator, raw.get("value"))


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
        children.append(Compare(path, "equals", value))
    return children[0] if len(children) == 1 else Group("and", tuple(children))
