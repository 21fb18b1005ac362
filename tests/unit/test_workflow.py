"""The workflow model: the seed's job-completed workflow parses and decides as expected."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from actors.workflow import evaluate, parse_workflow
from config.errors import WorkflowValidationError
from tests.conftest import REPO, read_json

EXAMPLE = REPO / "config" / "demo" / "job-completed.workflow.json"
SHARED_EXAMPLE = REPO.parent / "shared" / "examples" / "job-completed.workflow.json"


def job_event(operation: str = "UPDATE", old: Any = None, new: Any = None) -> dict[str, Any]:
    return {"id": 7, "entity": "job", "type": "job.updated", "operation": operation,
            "row_id": "1", "tenant_id": "1", "old": old, "new": new}


@pytest.fixture
def document() -> dict[str, Any]:
    return read_json(EXAMPLE)  # type: ignore[no-any-return]


def test_demo_ships_the_seed_example_unchanged() -> None:
    if not SHARED_EXAMPLE.exists():
        pytest.skip("shared/examples is not beside this checkout")
    assert EXAMPLE.read_bytes() == SHARED_EXAMPLE.read_bytes()


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
