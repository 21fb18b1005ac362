"""Every condition operator: true, false, type mismatch and missing path, table-driven."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from actors.model.conditions import parse_condition
from config.errors import WorkflowValidationError

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)

CONTEXT: dict[str, Any] = {
    "event": {"entity": "job", "type": "job.updated", "operation": "UPDATE"},
    "old": {"status": "in_progress", "amount": 90, "tags": ["vip"]},
    "new": {"status": "completed", "amount": 120, "tags": ["vip", "urgent"], "notes": None},
    "job": {"title": "Replace kitchen faucet", "status": "completed", "amount": 120, "price": "99.50",
            "tags": ["vip", "urgent"], "scheduled_at": "2026-11-21T09:00:00+00:00",
            "due_date": "2026-11-30", "visit_type": "Consultation", "notes": None},
    "client": {"email": "maria@example.com"},
}


def check(field: str, operator: str, value: Any = None) -> tuple[bool, str]:
    raw: dict[str, Any] = {"field": field, "operator": operator}
    if value is not None:
        raw["value"] = value
    outcome = parse_condition(raw, "condition").evaluate(CONTEXT, now=NOW)
    return outcome.matched, outcome.reason


@pytest.mark.parametrize(
    ("field", "operator", "value", "matched", "reason"),
    [
        ("job.status", "equals", "completed", True, None),
        ("job.status", "equals", "scheduled", False, "was 'completed'"),
        ("job.amount", "equals", "120", True, None),  # a number equals its numeric string
        ("job.nope", "equals", "x", False, "job.nope is missing"),
        ("job.status", "not_equals", "scheduled", True, None),
        ("job.status", "not_equals", "completed", False, "was 'completed'"),
        ("job.title", "contains", "faucet", True, None),
        ("job.tags", "contains", "urgent", True, None),
        ("job.tags", "contains", "cold", False, "was ['vip', 'urgent']"),
        ("job.amount", "contains", "1", False, "neither text nor a list"),
        ("job.title", "not_contains", "boiler", True, None),
        ("job.title", "not_contains", "faucet", False, "was"),
        ("job.nope", "not_contains", "x", False, "missing"),
        ("client.email", "exists", None, True, None),
        ("job.notes", "exists", None, False, "was None"),
        ("job.nope", "exists", None, False, "was missing"),
        ("job.nope", "not_exists", None, True, None),
        ("job.notes", "not_exists", None, True, None),
        ("client.email", "not_exists", None, False, "was 'maria@example.com'"),
        ("job.amount", "greater_than", 100, True, None),
        ("job.amount", "greater_than", 120, False, "was 120"),
        ("job.price", "greater_than", 99, True, None),  # numeric text against a number
        ("job.title", "greater_than", 10, False, "cannot compare str 'Replace kitchen faucet' with int"),
        ("job.amount", "greater_than_or_equal", 120, True, None),
        ("job.amount", "greater_than_or_equal", 121, False, "was 120"),
        ("job.amount", "less_than", 121, True, None),
        ("job.amount", "less_than", 120, False, "was 120"),
        ("job.due_date", "less_than", "2026-12-01", True, None),  # dates order as dates
        ("job.amount", "less_than_or_equal", 120, True, None),
        ("job.amount", "less_than_or_equal", 119, False, "was 120"),
        ("job.nope", "less_than", 1, False, "missing"),
        ("job.status", "in", ["completed", "cancelled"], True, None),
        ("job.status", "in", ["new"], False, "was 'completed'"),
        ("job.status", "not_in", ["new"], True, None),
        ("job.status", "not_in", ["completed"], False, "was 'completed'"),
        ("job.title", "starts_with", "Replace", True, None),
        ("job.title", "starts_with", "Fix", False, "was"),
        ("job.amount", "starts_with", "1", False, "int 120 is not text"),
        ("job.title", "ends_with", "faucet", True, None),
        ("job.title", "ends_with", "sink", False, "was"),
        ("client.email", "matches", r"@example\.com$", True, None),
        ("client.email", "matches", r"^admin@", False, "was"),
        ("job.amount", "matches", r"\d+", False, "not text"),
        ("job.notes", "equals", "x", False, "job.notes is empty"),
        ("job.scheduled_at", "before", "2026-11-22", True, None),
        ("job.scheduled_at", "before", "2026-11-20T00:00:00Z", False, "was"),
        ("job.scheduled_at", "after", "2026-11-20", True, None),
        ("job.scheduled_at", "before", "now", True, None),
        ("job.title", "after", "2026-11-20", False, "is not a date or time"),
        ("job.scheduled_at", "within_last", "2d", True, None),
        ("job.scheduled_at", "within_last", "1h", False, "was"),
        ("job.due_date", "within_last", 86400, False, "was"),  # in the future
        ("job.status", "changed", None, True, "'in_progress' -> 'completed'"),
        ("new.amount", "changed", None, True, None),
        ("job.title", "changed", None, False, "title is missing"),
        ("job.status", "changed_to", "completed", True, None),
        ("status", "changed_to", "cancelled", False, "changed to 'completed'"),
        ("job.status", "changed_from", "in_progress", True, None),
        ("old.status", "changed_from", "new", False, "changed from 'in_progress'"),
    ],
)
def test_operator(field: str, operator: str, value: Any, matched: bool, reason: str | None) -> None:
    outcome = check(field, operator, value)
    assert outcome[0] is matched, outcome[1]
    if reason is None:
        # A match is explained by the condition itself, with no failure detail after it.
        assert outcome[1].startswith(f"{field} {operator}") and ": was" not in outcome[1], outcome[1]
    else:
        assert reason and reason in outcome[1], outcome[1]


def test_changed_on_an_insert_is_false_with_a_reason() -> None:
    created = dict(CONTEXT, old={}, event={"entity": "job"})
    outcome = parse_condition({"field": "status", "operator": "changed"}, "c").evaluate(created, now=NOW)
    assert not outcome.matched and "not an update" in outcome.reason


def test_catastrophic_pattern_is_cut_off_not_hung() -> None:
    context = {"text": "a" * 5_000 + "b"}
    outcome = parse_condition({"field": "text", "operator": "matches", "value": "(a+)+$"}, "c").evaluate(context)
    assert not outcome.matched and "took longer" in outcome.reason


def test_camel_case_paths_find_snake_case_columns() -> None:
    assert check("job.visitType", "equals", "Consultation")[0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"operator": "and", "conditions": [
            {"field": "job.status", "operator": "equals", "value": "completed"},
            {"operator": "or", "conditions": [
                {"field": "job.amount", "operator": "greater_than", "value": 500},
                {"field": "job.tags", "operator": "contains", "value": "vip"}]}]}, True),
        ({"operator": "and", "conditions": [
            {"field": "job.status", "operator": "equals", "value": "completed"},
            {"field": "job.amount", "operator": "greater_than", "value": 500}]}, False),
        ({"operator": "not", "conditions": [{"field": "job.status", "operator": "equals", "value": "new"}]}, True),
        ({"operator": "or", "conditions": [{"field": "job.nope", "operator": "exists"},
                                           {"field": "job.title", "operator": "contains", "value": "x"}]}, False),
        ({"new_status": "completed", "old_status": "in_progress"}, True),
        ({"new_status": "completed", "old_status": "new"}, False),
    ],
)
def test_groups_nest(raw: dict[str, Any], expected: bool) -> None:
    assert parse_condition(raw, "c").evaluate(CONTEXT, now=NOW).matched is expected


def test_a_failing_group_names_the_first_failing_condition() -> None:
    raw = {"operator": "and", "conditions": [
        {"field": "job.status", "operator": "equals", "value": "completed"},
        {"field": "job.amount", "operator": "greater_than", "value": 500},
        {"field": "job.nope", "operator": "exists"}]}
    assert parse_condition(raw, "c").evaluate(CONTEXT, now=NOW).reason == "job.amount greater_than 500: was 120"


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"field": "a", "operator": "resembles", "value": 1}, "c.operator", "unknown operator 'resembles'"),
        ({"field": "a", "operator": "equals"}, "c.value", "needs a value"),
        ({"field": "", "operator": "exists"}, "c.field", "non-empty"),
        ({"field": "a", "operator": "in", "value": "x"}, "c.value", "needs a list"),
        ({"field": "a", "operator": "matches", "value": "(unclosed"}, "c.value", "invalid regular expression"),
        ({"field": "a", "operator": "matches", "value": "a" * 300}, "c.value", "at most 256"),
        ({"field": "a", "operator": "before", "value": "soon"}, "c.value", "ISO date"),
        ({"field": "a", "operator": "within_last", "value": "a while"}, "c.value", "duration"),
        ({"field": "a", "operator": "greater_than", "value": "lots"}, "c.value", "number or an ISO date"),
        ({"field": "a", "operator": "starts_with", "value": 5}, "c.value", "needs text"),
        ({"operator": "and", "conditions": []}, "c.conditions", "non-empty list"),
        ({"operator": "not", "conditions": [{"a": 1}, {"b": 2}]}, "c.conditions", "exactly one"),
        ({"operator": "and", "conditions": [{"field": "a", "operator": "equals", "value": 1},
                                            {"field": "b", "operator": "nope", "value": 1}]},
         "c.conditions[1].operator", "unknown operator"),
        ("completed", "c", "must be an object"),
    ],
)
def test_invalid_conditions_name_the_field(raw: Any, field: str, words: str) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        parse_condition(raw, "c")
    assert caught.value.field == field and words in caught.value.message


def test_condition_groups_are_bounded_in_depth_and_count() -> None:
    condition: dict[str, Any] = {"field": "job.status", "operator": "equals", "value": "completed"}
    for _ in range(330):
        condition = {"operator": "not", "conditions": [condition]}
    with pytest.raises(WorkflowValidationError) as caught:
        parse_condition(condition, "c")
    assert caught.value.message == "condition groups nested more than 20 levels deep"
    assert caught.value.field == "c" + ".conditions[0]" * 20
    many = {"operator": "and", "conditions": [{"field": "job.status", "operator": "exists"}] * 201}
    with pytest.raises(WorkflowValidationError) as caught:
        parse_condition(many, "c")
    assert (caught.value.field, caught.value.message) == ("c.conditions[200]", "more than 200 conditions in one workflow")
    many["conditions"] = many["conditions"][:200]
    assert parse_condition(many, "c").evaluate(CONTEXT, now=NOW).matched
