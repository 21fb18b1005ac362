"""The workflow model: the seed's job-completed workflow parses and decides as expected."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from actors import dedupe
from actors.dedupe import DedupePolicy, skip_reason
from actors.workflow import evaluate, parse_workflow
from config.errors import WorkflowValidationError
from tests.conftest import REPO, read_json

EXAMPLE = REPO / "config" / "examples" / "job-completed.workflow.json"


def job_event(operation: str = "UPDATE", old: Any = None, new: Any = None) -> dict[str, Any]:
    return {"id": 7, "entity": "job", "type": "job.updated", "operation": operation,
            "row_id": "1", "tenant_id": "1", "old": old, "new": new}


@pytest.fixture
def document() -> dict[str, Any]:
    return read_json(EXAMPLE)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", ["job-completed.workflow.json", "consultation-scheduled.rule.json"])
def test_herald_ships_the_seed_examples_unchanged(name: str) -> None:
    shared = REPO.parent / "shared" / "examples" / name
    if not shared.exists():
        pytest.skip("shared/examples is not beside this checkout")
    assert (REPO / "config" / "examples" / name).read_bytes() == shared.read_bytes()


def test_example_parses_to_email_then_sms(document: dict[str, Any]) -> None:
    spec = parse_workflow(document)
    assert spec.name == "Job Completed"
    assert spec.trigger.entity == "job" and spec.trigger.field == "status"
    assert [(step.key, step.action) for step in spec.steps] == [("step-1", "email"), ("step-2", "sms")]


@pytest.mark.parametrize(
    ("old", "new", "matched", "reason"),
    [
        ({"status": "in_progress"}, {"status": "completed"}, True, "new.status equals 'completed'"),
        ({"status": "new"}, {"status": "scheduled"}, False, "was 'scheduled'"),
        ({"status": "completed", "title": "a"}, {"status": "completed", "title": "b"}, False,
         "status did not change"),
    ],
)
def test_status_change_decides_with_a_reason(
    document: dict[str, Any], old: Any, new: Any, matched: bool, reason: str
) -> None:
    verdict = evaluate(parse_workflow(document), job_event(old=old, new=new))
    assert verdict.matched is matched
    assert reason in verdict.reason


def test_other_entities_and_operations_do_not_match(document: dict[str, Any]) -> None:
    spec = parse_workflow(document)
    created = evaluate(spec, job_event("INSERT", None, {"status": "completed"}))
    assert not created.matched and "needs a UPDATE" in created.reason
    invoice = job_event(old={"status": "sent"}, new={"status": "completed"}) | {"entity": "invoice"}
    assert "not invoice" in evaluate(spec, invoice).reason


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(trigger_type="job_exploded"), "trigger_type"),
        (lambda d: d["steps"][1]["config"].update(actionType="fax"), "steps[1].config.actionType"),
        (lambda d: d["steps"][0]["config"].pop("subject"), "steps[0].config.subject"),
        (lambda d: d.update(steps=[]), "steps"),
        (lambda d: d.pop("name"), "name"),
        (lambda d: d.update(trigger_conditions={"operator": "and", "conditions": [
            {"field": "new.status", "operator": "resembles", "value": "x"}]}),
         "trigger_conditions.conditions[0].operator"),
        (lambda d: d["steps"].append(copy.deepcopy(d["steps"][0])), "steps[2].id"),
    ],
)
def test_invalid_workflows_name_the_field(document: dict[str, Any], mutate: Any, field: str) -> None:
    mutate(document)
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(document)
    assert caught.value.field == field


RULE = REPO / "config" / "examples" / "consultation-scheduled.rule.json"


def test_crm_rule_parses_with_single_brace_templates() -> None:
    spec = parse_workflow(read_json(RULE))
    assert spec.trigger.entity == "appointment" and spec.trigger.operation == "INSERT"
    assert [step.action for step in spec.steps] == ["create_note", "draft_email"]
    assert spec.steps[0].config["patientId"] == "{{appointment.patientId}}"
    created = {"id": 3, "entity": "appointment", "type": "appointment.created", "operation": "INSERT",
               "old": None, "new": {"status": "scheduled", "visit_type": "Consultation"}}
    assert evaluate(spec, created).matched
    created["new"]["visit_type"] = "Follow-up"
    assert "appointment.visitType equals 'Consultation'" in evaluate(spec, created).reason


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"type": "delay", "config": {}}, "steps[1].config"),
        ({"type": "delay", "config": {"duration": "soon"}}, "steps[1].config.duration"),
        ({"type": "delay", "config": {"duration": "1d", "cancel_on": ["job_exploded"]}},
         "steps[1].config.cancel_on"),
        ({"type": "action", "config": {"actionType": "webhook", "url": "ftp://x"}}, "steps[1].config.url"),
        ({"type": "action", "config": {"actionType": "update_record", "fields": {}}},
         "steps[1].config.fields"),
        ({"type": "action", "config": {"actionType": "create_task"}}, "steps[1].config"),
        ({"type": "wait", "config": {}}, "steps[1].type"),
    ],
)
def test_invalid_steps_name_the_field(document: dict[str, Any], step: dict[str, Any], field: str) -> None:
    document["steps"][1] = step
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(document)
    assert caught.value.field == field


def test_retry_settings_are_validated(document: dict[str, Any]) -> None:
    document["retry"] = {"max_retries": -1}
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(document)
    assert caught.value.field == "retry.max_retries"
    document["retry"] = {"max_retries": 5, "base_delay_s": 1}
    assert parse_workflow(document).name == "Job Completed"


def test_dedupe_keys_follow_the_transition(document: dict[str, Any]) -> None:
    spec = parse_workflow(document)
    first = dedupe.keys(spec.trigger, job_event(old={"status": "in_progress"}, new={"status": "completed"}))
    again = dedupe.keys(spec.trigger, job_event(old={"status": "in_progress"}, new={"status": "completed"}))
    other = dedupe.keys(spec.trigger, job_event(old={"status": "on_hold"}, new={"status": "completed"}))
    assert first == again
    assert first[0] != other[0] and first[1] == other[1]  # another transition, the same resulting state
    manual = job_event(new={"status": "completed"}) | {"operation": "MANUAL"}
    assert dedupe.keys(spec.trigger, manual) == (None, None)


def test_dedupe_policy_skips_within_the_window_only() -> None:
    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    policy = DedupePolicy.from_config({"window_s": 30, "once_per": "1h"})
    recent = [("k", "s", now - dt.timedelta(seconds=10))]
    assert "duplicate" in (skip_reason(policy, "k", "s", recent, now) or "")
    old = [("k", "s", now - dt.timedelta(minutes=20))]
    assert "once_per" in (skip_reason(policy, "k", "s", old, now) or "")
    assert skip_reason(DedupePolicy(), "k", "s", old, now) is None
    with pytest.raises(WorkflowValidationError) as caught:
        DedupePolicy.from_config({"once_per": "0s"})
    assert caught.value.field == "dedupe.once_per"
