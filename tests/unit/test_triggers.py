"""Trigger names, time-trigger configuration, and why an event does or does not fire."""

from __future__ import annotations

from typing import Any

import pytest

from actors.triggers import parse_trigger
from config.errors import WorkflowValidationError


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
