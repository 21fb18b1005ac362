"""Manual triggers: fire an event with a given payload (`herald trigger`, the dashboard).

The event runs the tenant's workflows whose trigger has exactly this name
(or only the one ``workflow_id`` names), with the payload as the entity's row
(the event's ``new``; ``old`` is empty, so a condition on ``new_status`` reads
the payload's ``status``). When the
entity's table is watched, its relations are loaded as for a real change
(a name like ``work_order_status_changed`` is read against the watched entities).

Input is checked before anything is written: PostgreSQL refuses a NUL
character in text and jsonb, and an unpaired surrogate is no Unicode it can
store, so either is refused here with the place it was found, as is a
``workflow_id`` that is not one of the tenant's workflows. Once fired,
:func:`wait_for_outcome` says what matching made of it.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from actors.model.triggers import TIME_TRIGGERS, parse_trigger
from config.errors import HeraldConfigError, WorkflowValidationError

TABLE_OF_ENTITY = "SELECT table_name FROM herald.watched_tables WHERE entity = $1"

WATCHED_ENTITIES = "SELECT entity FROM herald.watched_tables ORDER BY entity"

INSERT_EVENT = """
INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, new, workflow_id)
VALUES ($1, $2, $3, $4, 'MANUAL', $5, $6, $7)
RETURNING id
"""


def text_problem(text: str) -> str | None:
    """Why PostgreSQL could not store ``text`` as it is, or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
    for char in text:
        if "\ud800" <= char <= "\udfff":
            return f"contains an unpaired surrogate (\\u{ord(char):04x}), which is not valid Unicode"
    return None


def check_text(text: str, what: str) -> str:
    """``text`` if PostgreSQL can store it; else HeraldConfigError naming ``what``."""
    problem = text_problem(text)
    if problem:
        raise HeraldConfigError(f"{what} {problem}")
    return text


def check_storable(value: Any, what: str) -> None:
    """Refuse a JSON value PostgreSQL's jsonb cannot hold: a NUL character or an unpaired
    surrogate in any key or string, or a number that is not finite. The message names
    ``what`` and the path inside it (``$.client.note``). Iterative, so depth costs no stack."""
    pending: list[tuple[Any, str]] = [(value, "$")]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                raise HeraldConfigError(f"{what}: the text at {path} {problem}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise HeraldConfigError(f"{what}: the number at {path} is not finite ({item})")
        elif isinstance(item, dict):
            for key, child in item.items():
                key_text = str(key)
                problem = text_problem(key_text)
                if problem:
                    raise HeraldConfigError(f"{what}: a key in {path} {problem}")
                pending.append((child, f"{path}.{key_text}" if len(path) < 200 else path))
        elif isinstance(item, (list, tuple)):
            pending.extend((child, f"{path}[{i}]" if len(path) < 200 else path) for i, child in enumerate(item))


async def watched_entities(conn: asyncpg.Connection) -> list[str]:
    """The entities Herald watches, sorted: they decide how a trigger name like
    ``work_order_status_changed`` is read (see :func:`actors.model.triggers.parse_trigger`)."""
    return [row["entity"] for row in await conn.fetch(WATCHED_ENTITIES)]


def check_workflow_id(workflow_id: str, what: str = "--workflow") -> str:
    """A workflow's uuid (as ``herald workflows list`` shows it), normalised."""
    try:
        return str(uuid.UUID(workflow_id))
    except ValueError:
        raise HeraldConfigError(f"{what} must be a workflow id, a UUID as `herald workflows list`"
                                f" shows (got {workflow_id[:60]!r})") from None


async def fire_event(
    conn: asyncpg.Connection, *, tenant_id: str, trigger_type: str, payload: dict[str, Any],
    workflow_id: str | None = None,
) -> int:
    """Write a MANUAL event to the outbox (and NOTIFY at commit); return its id.

    ``workflow_id``: run only this workflow of the tenant, named by its document's
    ``id``, its name or its uuid. Raises HeraldConfigError for an unknown trigger
    name, a payload PostgreSQL cannot store, or a workflow the tenant has not (or
    has disabled).
    """
    from daemon.workflows import describe, find_workflow

    check_text(tenant_id, "the tenant")
    check_text(trigger_type, "the trigger")
    check_storable(payload, "the payload")
    try:
        if trigger_type in TIME_TRIGGERS:
            entity = TIME_TRIGGERS[trigger_type][0]
        else:
            entity = parse_trigger(trigger_type, "trigger", entities=await watched_entities(conn)).entity
    except WorkflowValidationError as exc:
        raise HeraldConfigError(exc.message) from None
    target = None
    if workflow_id is not None:
        workflow = await find_workflow(conn, tenant_id, workflow_id, "--workflow")
        if not workflow["is_active"]:
            raise HeraldConfigError(f"--workflow {workflow_id[:80]!r}: workflow {describe(workflow)} of tenant"
                                    f" {tenant_id} is disabled (herald workflows enable)")
        target = workflow["id"]
    table = await conn.fetchval(TABLE_OF_ENTITY, entity) or "manual"
    row_id = payload.get("id")
    async with conn.transaction():
        event_id = await conn.fetchval(
            INSERT_EVENT, tenant_id, entity, table, None if row_id is None else str(row_id),
            trigger_type, payload, target)
        await conn.execute("SELECT pg_notify('herald_events', $1)", str(event_id))
    return int(event_id)


# -- what became of a fired event ------------------------------------------------

EVENT_STATE = "SELECT state, match_report FROM herald.events WHERE id = $1"

EVENT_RUNS = "SELECT id, workflow_id, status, error FROM herald.runs WHERE event_id = $1"


@dataclass(frozen=True)
class WorkflowVerdict:
    """One workflow of the event's tenant: whether the event ran it (its run), or why not."""

    workflow: str
    workflow_id: str
    matched: bool
    reason: str
    run_id: int | None = None
    run_status: str | None = None
    run_error: str | None = None


@dataclass(frozen=True)
class EventOutcome:
    """Where an event is: waiting to be matched (pending, dispatched), matched, or
    failed (``error``), with each workflow's verdict once matched."""

    event_id: int
    state: str
    verdicts: list[WorkflowVerdict] = field(default_factory=list)
    error: str | None = None

    @property
    def waiting(self) -> bool:
        return self.state in ("pending", "dispatched")


async def event_outcome(conn: asyncpg.Connection, event_id: int) -> EventOutcome:
    """What matching made of an event so far (see ``herald.events.match_report``)."""
    row = await conn.fetchrow(EVENT_STATE, event_id)
    if row is None:
        raise HeraldConfigError(f"event {event_id} does not exist")
    report = row["match_report"] or {}
    if row["state"] != "matched":
        return EventOutcome(event_id, row["state"], error=report.get("error"))
    runs = {str(run["workflow_id"]): run for run in await conn.fetch(EVENT_RUNS, event_id)}
    verdicts = []
    for item in report.get("workflows", []):
        run = runs.get(item["workflow_id"]) if item.get("matched") else None
        verdicts.append(WorkflowVerdict(
            item.get("workflow", "?"), item["workflow_id"], bool(item.get("matched")), item.get("reason", ""),
            None if run is None else run["id"], None if run is None else run["status"],
            None if run is None else run["error"]))
    return EventOutcome(event_id, row["state"], verdicts)


async def wait_for_outcome(
    conn: asyncpg.Connection, event_id: int, *, timeout_s: float, poll_s: float = 0.1,
) -> EventOutcome:
    """The event's outcome once a worker has matched it, or as it is after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = await event_outcome(conn, event_id)
        if not outcome.waiting or time.monotonic() >= deadline:
            return outcome
        await asyncio.sleep(poll_s)
