"""Triggers: which events a workflow's trigger name covers.

Entity triggers, with the names of the systems Herald replaces:
``job_created``, ``job_updated``, ``job_deleted``, ``job_status_changed``
(any ``<entity>_<field>_changed``), ``job_completed`` (status became
completed) and the CRM form ``crm/appointment.created``.

Entity names may hold underscores (``work_order`` from ``crm.work_orders``).
Before a fixed suffix (``work_order_completed``) the entity is everything
before it; ``<entity>_<field>_changed`` is ambiguous (``work_order_status_changed``
is work/order_status or work_order/status), so such a trigger keeps all its
readings: the one whose entity Herald watches is chosen when the watched
entities are known (``parse_trigger(..., entities=...)``), the first word
otherwise, and matching follows the event's entity whichever was chosen.

Time triggers take a ``trigger_config`` and are fired by the daemon's
scheduler: ``invoice_overdue``, ``client_inactive`` and ``cron``.

Any trigger can also be fired by hand (``herald trigger``): a manual event
runs the workflows whose trigger has exactly its name.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from config.errors import WorkflowValidationError

_OPERATIONS = {"created": "INSERT", "updated": "UPDATE", "deleted": "DELETE"}
# An entity or field name, as in the crm/ form: underscores allowed (work_order).
_WORD = r"[a-z][a-z0-9_]*"
_NAME = re.compile(_WORD)
_CRM = re.compile(rf"^crm/(?P<entity>{_WORD})\.(?P<op>created|updated|deleted)$")
_OPERATION = re.compile(rf"^(?P<entity>{_WORD})_(?P<op>created|updated|deleted)$")
# <entity>_<field>_changed: where the entity ends is decided by _changed_readings.
_FIELD_CHANGED = re.compile(rf"^(?P<body>{_WORD})_changed$")
# Status shortcuts: <entity>_<status> means "status changed to <status>".
_STATUS_SHORTCUTS = ("completed", "cancelled", "scheduled")
_STATUS = re.compile(rf"^(?P<entity>{_WORD})_(?P<status>{'|'.join(_STATUS_SHORTCUTS)})$")


class Reading(NamedTuple):
    """One way to read a trigger name: the entity whose events it watches, the field that must change."""

    entity: str
    field: str | None = None

    def __str__(self) -> str:
        return f"entity {self.entity}" + (f", field {self.field}" if self.field else "")


@dataclass(frozen=True)
class Trigger:
    """A parsed trigger name: the entity it watches and what must have happened.

    ``entity`` and ``field`` are the chosen reading; ``readings`` holds every
    reading of the name (several for an ambiguous ``<entity>_<field>_changed``),
    so an event is judged by the reading of its own entity. ``resolved`` says
    the chosen entity is one Herald watches (see :func:`parse_trigger`), not a default.
    """

    name: str
    entity: str
    operation: str  # INSERT, UPDATE or DELETE
    field: str | None = None  # for "<field> changed"
    to_value: str | None = None  # for "<field> changed to <value>"
    config: dict[str, Any] | None = None  # for time triggers: their settings, defaults filled in
    readings: tuple[Reading, ...] = ()  # every reading of the name; filled with (entity, field) if not given
    resolved: bool = False

    def __post_init__(self) -> None:
        if not self.readings:
            object.__setattr__(self, "readings", (Reading(self.entity, self.field),))

    @property
    def scheduled_type(self) -> str | None:
        """The event type a time trigger's scheduler writes (None for entity triggers)."""
        return TIME_TRIGGERS[self.name][1] if self.name in TIME_TRIGGERS else None

    @property
    def entities(self) -> tuple[str, ...]:
        """Every entity the name can be read as watching, the chosen one included."""
        return tuple(reading.entity for reading in self.readings)

    def resolve(self, entities: Collection[str] | None) -> Trigger:
        """This trigger read against the watched ``entities``: the reading whose entity is
        watched wins, the longest entity first; with none watched, the first word's reading."""
        watched = [reading for reading in self.readings if entities and reading.entity in entities]
        reading = max(watched, key=lambda r: len(r.entity)) if watched else self.readings[0]
        return replace(self, entity=reading.entity, field=reading.field, resolved=bool(watched))

    def for_entity(self, entity: str) -> Trigger:
        """This trigger as it applies to events of ``entity``: the reading naming that entity
        (itself when none does). What a change is keyed on depends on it (actors/dedupe.py)."""
        reading = next((r for r in self.readings if r.entity == entity), None)
        if reading is None or reading == (self.entity, self.field):
            return self
        return replace(self, entity=reading.entity, field=reading.field)

    def describe(self) -> str:
        """What the name was read as, for people: ``entity work_order, field status``.
        An ambiguous name not resolved against the watched tables lists its other readings."""
        if self.scheduled_type is not None:
            return f"scheduled {self.scheduled_type} events"
        chosen = Reading(self.entity, self.field)
        text = str(chosen) + (f" becoming {self.to_value!r}" if self.to_value is not None else "")
        others = [str(reading) for reading in self.readings if reading != chosen]
        if others and not self.resolved:
            text += f" (or {' or '.join(others)}: whichever table Herald watches)"
        return text

    def explain(self, event: dict[str, Any]) -> str | None:
        """Why ``event`` does not fire this trigger, or None when it does."""
        if event["operation"] == "MANUAL":
            return None if event["type"] == self.name else (
                f"manual event {event['type']} is not trigger {self.name}")
        if self.scheduled_type is not None or event["operation"] == "SCHEDULED":
            if event["type"] == self.scheduled_type and event["operation"] == "SCHEDULED":
                return None
            return f"trigger {self.name} fires on {self.scheduled_type or 'changes'}, not {event['type']}"
        if event["entity"] not in self.entities:
            return f"trigger {self.name} watches {' or '.join(self.entities)} events, not {event['entity']}"
        if event["operation"] != self.operation:
            return f"trigger {self.name} needs a {self.operation}, the event is a {event['operation']}"
        read = self.for_entity(event["entity"])
        if read.field is None:
            return None
        old = event.get("old") or {}
        new = event.get("new") or {}
        if read.field not in new:
            return f"trigger {self.name}: the {read.entity} has no field {read.field!r}"
        if old.get(read.field) == new.get(read.field):
            return f"trigger {self.name}: {read.field} did not change"
        if self.to_value is not None and new.get(read.field) != self.to_value:
            return (
                f"trigger {self.name}: {read.field} changed to {new.get(read.field)!r},"
                f" not {self.to_value!r}"
            )
        return None


def parse_trigger(
    name: Any, field: str = "trigger", config: Any = None, entities: Collection[str] | None = None
) -> Trigger:
    """Parse a trigger name (and its ``trigger_config``, for triggers that take one);
    raise :class:`WorkflowValidationError` if either is invalid.

    ``entities`` are the entities Herald watches, when known (the database's
    ``herald.watched_tables``): they decide how an ambiguous
    ``<entity>_<field>_changed`` name is read (see :meth:`Trigger.resolve`).
    """
    if not isinstance(name, str) or not name:
        raise WorkflowValidationError(field, "must be a non-empty string")
    if name in TIME_TRIGGERS:
        return Trigger(name, TIME_TRIGGERS[name][0], "SCHEDULED",
                       config=_time_config(name, config))
    if config is not None:
        raise WorkflowValidationError("trigger_config", f"trigger {name!r} takes no configuration")
    trigger = _entity_trigger(name)
    if trigger is None:
        raise WorkflowValidationError(
            field,
            f"unknown trigger {name!r}; expected <entity>_created|updated|deleted, "
            "<entity>_<field>_changed, <entity>_completed|cancelled|scheduled "
            "or crm/<entity>.created|updated|deleted",
        )
    return trigger.resolve(entities)


def _entity_trigger(name: str) -> Trigger | None:
    """The trigger ``name`` reads as, its first reading chosen; None for no known form."""
    for pattern in (_CRM, _OPERATION):
        match = pattern.match(name)
        if match:
            return Trigger(name, match["entity"], _OPERATIONS[match["op"]])
    match = _FIELD_CHANGED.match(name)
    readings = _changed_readings(match["body"]) if match else ()
    if readings:
        return Trigger(name, readings[0].entity, "UPDATE", readings[0].field, readings=readings)
    match = _STATUS.match(name)
    if match:
        return Trigger(name, match["entity"], "UPDATE", field="status", to_value=match["status"])
    return None


def _changed_readings(body: str) -> tuple[Reading, ...]:
    """Every (entity, field) split of ``<entity>_<field>`` at an underscore, the shortest entity first:
    work_order_status -> (work, order_status), (work_order, status)."""
    return tuple(
        Reading(body[:at], body[at + 1:]) for at, char in enumerate(body)
        if char == "_" and _NAME.fullmatch(body[:at]) and _NAME.fullmatch(body[at + 1:])
    )


# name -> (entity, event type the scheduler writes)
TIME_TRIGGERS = {
    "invoice_overdue": ("invoice", "invoice.overdue"),
    "client_inactive": ("client", "client.inactive"),
    "cron": ("schedule", "schedule.cron"),
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "invoice_overdue": {"table": "invoices", "due_column": "due_date", "status_column": "status",
                        "settled_statuses": ["paid", "void"], "days": 0},
    "client_inactive": {"table": "clients", "activity_table": "jobs", "activity_foreign_key": "client_id",
                        "activity_column": "created_at", "created_column": "created_at"},
    "cron": {"timezone": "UTC"},
}
_REQUIRED = {"client_inactive": ("days",), "cron": ("schedule",)}
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")
# A hundred years of grace or inactivity is already more than anyone means;
# beyond it lie numbers a PostgreSQL interval cannot hold.
MAX_DAYS = 36500
# A cron schedule must have an instant within this many years: "31 February"
# never comes. Leap days come every 4 years (8 around 2100).
CRON_HORIZON_YEARS = 10
# Herald's own tables and the system catalogs are nobody's business data: a
# time trigger reads only tables Herald watches (checked against the database
# when the workflow is imported, and again by the scheduler).
PRIVATE_SCHEMAS = ("herald", "information_schema")


def _time_config(name: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise WorkflowValidationError("trigger_config", "must be an object")
    config = {**_DEFAULTS[name], **raw}
    unknown = set(raw) - set(_DEFAULTS[name]) - set(_REQUIRED.get(name, ())) - {"days"}
    if unknown:
        raise WorkflowValidationError(f"trigger_config.{sorted(unknown)[0]}", f"not a setting of {name}")
    for key in _REQUIRED.get(name, ()):
        if key not in raw:
            raise WorkflowValidationError(f"trigger_config.{key}", f"{name} needs {key}")
    if "days" in config:
        days = config["days"]
        minimum = 1 if name == "client_inactive" else 0
        if not isinstance(days, int) or isinstance(days, bool) or not minimum <= days <= MAX_DAYS:
            raise WorkflowValidationError(
                "trigger_config.days", f"must be a whole number between {minimum} and {MAX_DAYS}")
    for key, value in config.items():
        if key.endswith(("table", "column", "foreign_key")) and not (
            isinstance(value, str) and _IDENTIFIER.match(value)
        ):
            raise WorkflowValidationError(f"trigger_config.{key}", "must be a table or column name")
        if key.endswith("table") and is_private_table(value):
            raise WorkflowValidationError(
                f"trigger_config.{key}", f"{value} is one of Herald's own or the system's tables; "
                "a time trigger reads only tables Herald watches")
    if name == "invoice_overdue" and not (
        isinstance(config["settled_statuses"], list) and all(isinstance(v, str) for v in config["settled_statuses"])
    ):
        raise WorkflowValidationError("trigger_config.settled_statuses", "must be a list of statuses")
    if name == "cron":
        _check_cron(config)
    return config


def _check_cron(config: dict[str, Any]) -> None:
    schedule = config["schedule"]
    if not isinstance(schedule, str) or not croniter.is_valid(schedule):
        raise WorkflowValidationError("trigger_config.schedule", f"{schedule!r} is not a cron expression")
    try:
        zone = ZoneInfo(str(config["timezone"]))
    except (ZoneInfoNotFoundError, ValueError):
        raise WorkflowValidationError("trigger_config.timezone", f"unknown time zone {config['timezone']!r}") from None
    # Valid syntax is not enough: "0 0 31 2 *" parses, but no instant ever comes,
    # and the scheduler would have nothing to compute.
    try:
        croniter(schedule, dt.datetime.now(zone), max_years_between_matches=CRON_HORIZON_YEARS).get_next(dt.datetime)
    except (CroniterError, ValueError, OverflowError):
        raise WorkflowValidationError(
            "trigger_config.schedule",
            f"{schedule!r} never fires (no instant within {CRON_HORIZON_YEARS} years)") from None


def is_private_table(table: str) -> bool:
    """Whether ``table`` (as written, maybe schema-qualified) is in Herald's or the system's schemas."""
    schema, dot, _ = table.partition(".")
    return bool(dot) and (schema in PRIVATE_SCHEMAS or schema.startswith("pg_"))
