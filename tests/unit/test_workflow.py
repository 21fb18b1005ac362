"""The workflow model: the seed's job-completed workflow parses and decides as expected."""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from actors.model import dedupe
from actors.model.dedupe import DedupePolicy, skip_reason
from actors.model.workflow import evaluate, parse_workflow, stages
from config.errors import WorkflowValidationError
from config.settings import Settings
from daemon.cli.workflows import cmd_workflows
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


# --- A workflow's size is bounded: every event of its tenant runs it on a shared worker ---


def nested(levels: int) -> dict[str, Any]:
    condition: dict[str, Any] = {"field": "new.status", "operator": "equals", "value": "completed"}
    for _ in range(levels):
        condition = {"operator": "and", "conditions": [condition]}
    return condition


def refusal(document: dict[str, Any]) -> WorkflowValidationError:
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(document)
    return caught.value


def test_a_huge_workflow_is_refused_before_anything_else(document: dict[str, Any]) -> None:
    # 100,000 regular expressions: 6 MB that took the event loop 83 minutes per event.
    document["trigger_conditions"] = {"operator": "or", "conditions": [
        {"field": "new.title", "operator": "matches", "value": "(a+)+$"}] * 100_000}
    error = refusal(document)
    assert error.field == "(document)"
    assert error.message.startswith("the workflow is 6,") and "at most 262,144 are allowed" in error.message


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        pytest.param(lambda d: d.update(steps=[{**d["steps"][0], "id": f"s{i}"} for i in range(51)]),
                     "steps", "51 steps; a workflow may have at most 50", id="steps"),
        pytest.param(lambda d: d.update(trigger_conditions={"operator": "or", "conditions": [
            {"field": "new.title", "operator": "equals", "value": str(i)} for i in range(201)]}),
            "trigger_conditions.conditions[200]", "more than 200 conditions in one workflow", id="conditions"),
        pytest.param(lambda d: d.update(trigger_conditions={f"new_field{i}": i for i in range(201)}),
                     "trigger_conditions", "more than 200 conditions in one workflow", id="shorthand-conditions"),
        pytest.param(lambda d: d.update(trigger_conditions={"operator": "or", "conditions": [
            {"field": "new.title", "operator": "matches", "value": f"^{i}"} for i in range(11)]}),
            "trigger_conditions.conditions[10].operator", "more than 10 'matches' conditions in one workflow",
            id="patterns"),
        pytest.param(lambda d: d.update(trigger_conditions=nested(21)),
                     "trigger_conditions" + ".conditions[0]" * 20, "condition groups nested more than 20 levels deep",
                     id="condition-depth"),
        pytest.param(lambda d: d["steps"][0]["config"].update(message="x" * 20_481),
                     "steps[0].config.message", "the template is 20,481 characters long; at most 20,480",
                     id="template-length"),
    ],
)
def test_limits_name_the_field_at_fault(document: dict[str, Any], mutate: Any, field: str, message: str) -> None:
    mutate(document)
    error = refusal(document)
    assert (error.field, error.message) == (field, message)


def test_the_largest_allowed_workflow_parses(document: dict[str, Any]) -> None:
    document["trigger_conditions"] = nested(20)
    document["steps"][0]["config"]["message"] = "x" * 20_480
    assert parse_workflow(document).name == "Job Completed"
    document["trigger_conditions"] = nested(21)  # one more level than allowed
    assert refusal(document).message == "condition groups nested more than 20 levels deep"


def test_deep_nesting_is_a_validation_error_not_a_recursion_error(document: dict[str, Any]) -> None:
    document["trigger_conditions"] = nested(330)
    error = refusal(document)
    assert error.field.startswith("trigger_conditions.conditions[0]")
    assert error.message == "condition groups nested more than 20 levels deep"
    payload: Any = "{{ job.title }}"
    for _ in range(330):
        payload = {"nested": payload}
    document["trigger_conditions"] = {"new_status": "completed"}
    document["steps"][0]["config"] = {"actionType": "webhook", "url": "https://example.com/hook", "payload": payload}
    assert (refusal(document).field, refusal(document).message) == ("steps", "nested more than 64 levels deep")


def test_a_step_with_previous_shares_the_stage_of_the_step_before_it(document: dict[str, Any]) -> None:
    document["steps"][1]["with_previous"] = True
    document["steps"].append({"id": "later", "type": "delay", "config": {"duration": "1d"}})
    spec = parse_workflow(document)
    assert [step.with_previous for step in spec.steps] == [False, True, False]
    assert stages(spec.steps) == [0, 0, 1]
    assert stages(parse_workflow(read_json(EXAMPLE)).steps) == [0, 1]  # one after another by default


def test_crm_rule_actions_may_start_together_too() -> None:
    rule = read_json(RULE)
    rule["actions"][1]["with_previous"] = True
    assert stages(parse_workflow(rule).steps) == [0, 0]


@pytest.mark.parametrize(
    ("mutate", "field", "says"),
    [
        (lambda d: d["steps"][0].update(with_previous=True), "steps[0].with_previous", "first step"),
        (lambda d: d["steps"][1].update(with_previous="yes"), "steps[1].with_previous", "true or false"),
        (lambda d: d["steps"].insert(1, {"id": "pause", "type": "delay", "config": {"duration": "1h"}})
         or d["steps"][2].update(with_previous=True), "steps[2].with_previous", "a delay (pause)"),
        (lambda d: d["steps"].append({"id": "pause", "type": "delay", "config": {"duration": "1h"},
                                      "with_previous": True}), "steps[2].with_previous", "a delay (pause)"),
    ],
)
def test_a_group_that_cannot_start_together_is_refused(document: dict[str, Any], mutate: Any, field: str,
                                                       says: str) -> None:
    mutate(document)
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(document)
    assert caught.value.field == field and says in caught.value.message


def test_validate_says_how_many_steps_start_together(document: dict[str, Any], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    document["steps"][1]["with_previous"] = True
    path = tmp_path / "together.json"
    path.write_text(json.dumps(document))
    args = argparse.Namespace(workflows_command="validate", files=[str(path)])
    assert cmd_workflows(Settings(database_url="", redis_url=""), args) == 0
    assert capsys.readouterr().out.rstrip().endswith("; 2 steps, 2 starting together)")
