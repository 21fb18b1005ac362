"""Trigger names, time-trigger configuration, and why an event does or does not fire."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from actors.model.triggers import parse_trigger
from config.errors import WorkflowValidationError
from config.settings import Settings
from daemon.cli.workflows import cmd_workflows


def event(operation: str, type_: str, entity: str = "job", old: Any = None, new: Any = None) -> dict[str, Any]:
    return {"operation": operation, "type": type_, "entity": entity, "old": old, "new": new}


@pytest.mark.parametrize(
    ("name", "entity", "operation", "field", "to_value"),
    [
        ("job_created", "job", "INSERT", None, None),
        ("job_deleted", "job", "DELETE", None, None),
        ("job_status_changed", "job", "UPDATE", "status", None),
        ("job_completed", "job", "UPDATE", "status", "completed"),
        ("crm/appointment.created", "appointment", "INSERT", None, None),
        ("crm/patient.updated", "patient", "UPDATE", None, None),
        ("invoice_overdue", "invoice", "SCHEDULED", None, None),
        # Entities with underscores: before a fixed suffix, the entity is everything before it.
        ("work_order_completed", "work_order", "UPDATE", "status", "completed"),
        ("work_order_updated", "work_order", "UPDATE", None, None),
        ("line_item_created", "line_item", "INSERT", None, None),
        ("service_request_deleted", "service_request", "DELETE", None, None),
        ("service_request_cancelled", "service_request", "UPDATE", "status", "cancelled"),
        ("crm/work_order.created", "work_order", "INSERT", None, None),
        # Ambiguous without the watched entities: the first word is the entity.
        ("job_scheduled_date_changed", "job", "UPDATE", "scheduled_date", None),
        ("work_order_status_changed", "work", "UPDATE", "order_status", None),
    ],
)
def test_names_parse(name: str, entity: str, operation: str, field: str | None, to_value: str | None) -> None:
    trigger = parse_trigger(name)
    assert (trigger.entity, trigger.operation, trigger.field, trigger.to_value) == (entity, operation, field, to_value)


def test_entity_triggers_explain_themselves() -> None:
    completed = parse_trigger("job_completed")
    assert completed.explain(event("UPDATE", "job.updated", old={"status": "new"}, new={"status": "completed"})) is None
    assert "not 'completed'" in (completed.explain(
        event("UPDATE", "job.updated", old={"status": "new"}, new={"status": "on_hold"})) or "")
    assert "watches job events" in (
        parse_trigger("job_created").explain(event("INSERT", "x", entity="invoice")) or "")


def test_manual_events_fire_the_trigger_of_that_name_only() -> None:
    manual = event("MANUAL", "job_completed", new={"id": 1})
    assert parse_trigger("job_completed").explain(manual) is None
    assert "is not trigger job_created" in (parse_trigger("job_created").explain(manual) or "")


def test_time_triggers_fire_on_their_scheduled_events_only() -> None:
    overdue = parse_trigger("invoice_overdue")
    assert overdue.explain(event("SCHEDULED", "invoice.overdue", entity="invoice")) is None
    assert "fires on invoice.overdue" in (overdue.explain(event("UPDATE", "invoice.updated", entity="invoice")) or "")
    assert "not client.inactive" in (
        parse_trigger("job_created").explain(event("SCHEDULED", "client.inactive", entity="client")) or "")


def test_time_trigger_defaults_and_overrides() -> None:
    assert parse_trigger("invoice_overdue").config == {
        "table": "invoices", "due_column": "due_date", "status_column": "status",
        "settled_statuses": ["paid", "void"], "days": 0}
    assert parse_trigger("client_inactive", "t", {"days": 90}).config["days"] == 90  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "config", "field"),
    [
        ("client_inactive", None, "trigger_config.days"),
        ("client_inactive", {"days": 0}, "trigger_config.days"),
        ("invoice_overdue", {"days": -1}, "trigger_config.days"),
        ("invoice_overdue", {"table": "invoices; drop table x"}, "trigger_config.table"),
        ("invoice_overdue", {"colour": "red"}, "trigger_config.colour"),
        ("cron", {}, "trigger_config.schedule"),
        ("cron", {"schedule": "every monday"}, "trigger_config.schedule"),
        ("cron", {"schedule": "0 9 * * 1", "timezone": "Mars/Olympus"}, "trigger_config.timezone"),
        ("job_created", {"days": 1}, "trigger_config"),
        ("job_exploded", None, "trigger"),
        ("work_order_exploded", None, "trigger"),
        ("job_changed", None, "trigger"),  # no field
        ("_status_changed", None, "trigger"),
        ("Work_order_created", None, "trigger"),
        ("work-order_created", None, "trigger"),
        ("2work_order_completed", None, "trigger"),
        ("crm/work order.created", None, "trigger"),
    ],
)
def test_bad_configuration_names_the_field(name: str, config: Any, field: str) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        parse_trigger(name, "trigger", config)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("name", "config", "field"),
    [
        # Valid cron syntax, but no such day: the scheduler could never compute an instant.
        ("cron", {"schedule": "0 0 31 2 *"}, "trigger_config.schedule"),
        ("cron", {"schedule": "0 0 30 2 *"}, "trigger_config.schedule"),
        ("cron", {"schedule": "15 10 31 4 *", "timezone": "Europe/Paris"}, "trigger_config.schedule"),
        # Numbers beyond what an interval holds, or what anyone means.
        ("invoice_overdue", {"days": 1_000_000_000_000}, "trigger_config.days"),
        ("invoice_overdue", {"days": 36501}, "trigger_config.days"),
        ("client_inactive", {"days": 10**9}, "trigger_config.days"),
        # Herald's own tables and the system catalogs are nobody's business data.
        ("invoice_overdue", {"table": "herald.messages"}, "trigger_config.table"),
        ("invoice_overdue", {"table": "pg_catalog.pg_authid"}, "trigger_config.table"),
        ("client_inactive", {"days": 30, "table": "herald.workflows"}, "trigger_config.table"),
        ("client_inactive", {"days": 30, "activity_table": "herald.events"}, "trigger_config.activity_table"),
    ],
)
def test_time_triggers_that_could_never_work_are_rejected(name: str, config: Any, field: str) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        parse_trigger(name, "trigger", config)
    assert caught.value.field == field


def test_time_trigger_limits_keep_what_can_happen() -> None:
    # Rare but possible: a leap day; day of month OR day of week (every Monday in February).
    for schedule in ("0 0 29 2 *", "0 0 31 2 1"):
        assert parse_trigger("cron", "trigger", {"schedule": schedule}).config is not None
    assert parse_trigger("invoice_overdue", "trigger", {"days": 36500}).config is not None
    assert parse_trigger("client_inactive", "trigger", {
        "days": 1, "table": "public.clients", "activity_table": "crm.jobs"}).config is not None
    for days in (36501, 2**31):
        with pytest.raises(WorkflowValidationError, match="between 0 and 36500"):
            parse_trigger("invoice_overdue", "trigger", {"days": days})


def test_unknown_names_keep_their_message() -> None:
    with pytest.raises(WorkflowValidationError, match=r"unknown trigger 'work_order_exploded'; expected"
                       r" <entity>_created\|updated\|deleted, <entity>_<field>_changed"):
        parse_trigger("work_order_exploded")


def test_a_field_change_with_several_underscores_keeps_every_reading() -> None:
    trigger = parse_trigger("work_order_status_changed")
    assert trigger.readings == (("work", "order_status"), ("work_order", "status"))
    assert trigger.entities == ("work", "work_order") and not trigger.resolved
    assert trigger.describe() == (
        "entity work, field order_status (or entity work_order, field status: whichever table Herald watches)")
    assert parse_trigger("job_status_changed").readings == (("job", "status"),)


@pytest.mark.parametrize(
    ("entities", "entity", "field", "resolved"),
    [
        ({"work_order", "client"}, "work_order", "status", True),
        ({"work"}, "work", "order_status", True),
        ({"work", "work_order"}, "work_order", "status", True),  # the longest watched entity wins
        ({"client"}, "work", "order_status", False),  # none watched: the first word
        (set(), "work", "order_status", False),
    ],
)
def test_the_watched_entities_decide_an_ambiguous_name(
    entities: set[str], entity: str, field: str, resolved: bool
) -> None:
    trigger = parse_trigger("work_order_status_changed", entities=entities)
    assert (trigger.entity, trigger.field, trigger.resolved) == (entity, field, resolved)
    assert trigger.operation == "UPDATE" and len(trigger.readings) == 2


def test_a_resolved_name_describes_its_one_reading() -> None:
    assert parse_trigger("work_order_status_changed", entities=["work_order"]).describe() == (
        "entity work_order, field status")
    assert parse_trigger("job_scheduled_date_changed", entities=["job"]).describe() == (
        "entity job, field scheduled_date")
    assert parse_trigger("work_order_completed").describe() == "entity work_order, field status becoming 'completed'"
    assert parse_trigger("line_item_created").describe() == "entity line_item"
    assert parse_trigger("invoice_overdue").describe() == "scheduled invoice.overdue events"


def test_matching_follows_the_event_entity_whichever_reading_was_chosen() -> None:
    unresolved = parse_trigger("work_order_status_changed")  # read as work / order_status
    resolved = parse_trigger("work_order_status_changed", entities={"work_order"})
    status = event("UPDATE", "work_order.updated", "work_order", old={"status": "new"}, new={"status": "done"})
    notes = event("UPDATE", "work_order.updated", "work_order",
                  old={"status": "new", "notes": "a"}, new={"status": "new", "notes": "b"})
    for trigger in (unresolved, resolved):
        assert trigger.explain(status) is None
        assert trigger.explain(notes) == "trigger work_order_status_changed: status did not change"
        assert trigger.for_entity("work_order").field == "status"
        assert "watches work or work_order events, not job" in (trigger.explain(
            event("UPDATE", "job.updated", old={"status": "a"}, new={"status": "b"})) or "")
    # An event of entity work reads the name as work / order_status.
    work = event("UPDATE", "work.updated", "work", old={"order_status": "a"}, new={"order_status": "b"})
    assert unresolved.explain(work) is None and resolved.for_entity("work").field == "order_status"
    assert "the work has no field 'order_status'" in (unresolved.explain(
        event("UPDATE", "work.updated", "work", old={"status": "a"}, new={"status": "b"})) or "")


def test_status_shortcuts_of_underscored_entities_match_their_events() -> None:
    completed = parse_trigger("work_order_completed")
    done = event("UPDATE", "work_order.updated", "work_order", old={"status": "new"}, new={"status": "completed"})
    assert completed.explain(done) is None
    assert "watches work_order events, not work" in (completed.explain({**done, "entity": "work"}) or "")
    assert "needs a UPDATE" in (completed.explain({**done, "operation": "INSERT"}) or "")


def test_validate_says_what_the_trigger_was_read_as(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sms = {"type": "action", "config": {"actionType": "sms", "recipient": "+15550101001", "message": "hi"}}
    paths = []
    for trigger in ("work_order_status_changed", "line_item_created"):
        path = tmp_path / f"{trigger}.json"
        path.write_text(json.dumps({"name": "orders", "trigger_type": trigger, "steps": [sms, sms]}))
        paths.append(str(path))
    args = argparse.Namespace(workflows_command="validate", files=paths)
    assert cmd_workflows(Settings(database_url="", redis_url=""), args) == 0  # no database needed
    assert capsys.readouterr().out.splitlines() == [
        f"{paths[0]}: valid (orders: work_order_status_changed -> entity work, field order_status"
        " (or entity work_order, field status: whichever table Herald watches); 2 steps)",
        f"{paths[1]}: valid (orders: line_item_created -> entity line_item; 2 steps)",
    ]
