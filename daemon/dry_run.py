"""Running a workflow's steps without effect: the engine of `herald test` and
`herald workflows test`.

Each step runs through its action's own ``execute`` as a worker would run it
(the same parameter handling, template renderer and limits, recipient checks
and records logic), with :class:`actors.actions.StepRun` in *preview* mode:
email, SMS and webhook steps return the message they would hand to a provider
without ever reaching one; drafts are rendered and not stored; create_task,
create_note and update_record compute the row (reading the target table's
columns when a database connection is given) and write nothing; a delay says
when it would end. As on a worker, a step that fails ends the run: the steps
after it are not run.

:func:`dry_run` does the same for a real record: it loads the row and its
relations as enrich does, builds the event a change would make, and matches
and previews the workflow, all inside a READ ONLY transaction that is rolled
back, so nothing is sent, written or left behind.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from actors.actions import ACTIONS, Done, StepRun, Wait
from actors.enriching import build_contexts, first_blocked_step
from actors.model.naming import AmbiguousName, column_for
from actors.model.templates import as_records
from actors.model.workflow import WorkflowSpec, evaluate, stages
from actors.tables import table_shape
from config.database import quote_ident, quote_qualified
from config.errors import HeraldConfigError, StepError
from config.settings import Settings
from daemon.capture import resolve_table

# Step states in a preview.
OK = "ok"  # done: the message it would send, the row it would write
WAITING = "waiting"  # a delay that would wait until ``until``
FAILED = "failed"  # the step would fail (``error`` says why); the run would end here
NOT_RUN = "not run"  # an earlier step failed, so this one would never run


@dataclass
class StepPreview:
    """What one step would do."""

    position: int
    key: str
    action: str
    status: str
    rendered: dict[str, Any] = field(default_factory=dict)  # every template it rendered, by parameter
    result: dict[str, Any] = field(default_factory=dict)  # the message or row it would send or write
    error: str | None = None
    until: dt.datetime | None = None  # a delay: when it would end

    def as_json(self) -> dict[str, Any]:
        return jsonable({"position": self.position + 1, "key": self.key, "action": self.action,
                          "status": self.status, "rendered": self.rendered, "result": self.result,
                          "error": self.error, "until": self.until})


@dataclass(frozen=True)
class Target:
    """What Herald knows of the event's table (``herald watch``); empty without a database."""

    table_name: str | None = None
    entity: str | None = None
    id_column: str | None = "id"
    tenant_column: str | None = None
    relations: dict[str, Any] = field(default_factory=dict)
    action_targets: dict[str, Any] = field(default_factory=dict)
    updatable_columns: tuple[str, ...] = ()
    fills: dict[str, Any] = field(default_factory=dict)


WATCHED_COLUMNS = ("table_name, entity, id_column, tenant_column, relations, action_targets,"
                   " updatable_columns, fills")
WATCHED_BY_TABLE = f"SELECT {WATCHED_COLUMNS} FROM herald.watched_tables WHERE table_name = $1"
WATCHED_BY_ENTITY = f"SELECT {WATCHED_COLUMNS} FROM herald.watched_tables WHERE entity = $1"


def _target(row: Mapping[str, Any] | None) -> Target | None:
    if row is None:
        return None
    return Target(row["table_name"], row["entity"], row["id_column"], row["tenant_column"],
                  dict(row["relations"] or {}), dict(row["action_targets"] or {}),
                  tuple(row["updatable_columns"] or ()), dict(row["fills"] or {}))


async def watched_entity(conn: asyncpg.Connection, entity: str) -> Target | None:
    """The watched table whose events are ``entity``'s, or None."""
    return _target(await conn.fetchrow(WATCHED_BY_ENTITY, entity))


def jsonable_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context as a run stores it: through JSON (dates as text), as the workers read it back."""
    return json.loads(json.dumps(context, default=str))  # type: ignore[no-any-return]


async def preview_steps(
    spec: WorkflowSpec, context: Mapping[str, Any], event: Mapping[str, Any], target: Target, *,
    settings: Settings | None = None, conn: asyncpg.Connection | None = None,
    clock: dt.datetime | None = None, blocked: tuple[int, str] | None = None,
) -> list[StepPreview]:
    """Run every step of ``spec`` in preview mode against ``context``, in order.

    ``conn``: a connection whose tables records actions read (inside the
    caller's transaction; each step runs in a savepoint). ``clock``: the time
    the steps run at (delays are measured from it). ``blocked``: (position,
    reason) of a step enrich would fail before any step runs (a relation of
    another tenant): that step fails, the others do not run.
    """
    settings = settings or Settings(database_url="", redis_url="")
    records = as_records(jsonable_context(context))
    previews: list[StepPreview] = []
    failed_stage: int | None = None  # a failed step's: the steps of later stages do not run
    for position, (spec_step, stage) in enumerate(zip(spec.steps, stages(spec.steps))):
        preview = StepPreview(position, spec_step.key, spec_step.action, NOT_RUN)
        previews.append(preview)
        if blocked is not None:
            if position == blocked[0]:
                preview.status, preview.error = FAILED, blocked[1]
            continue
        if failed_stage is not None and stage > failed_stage:
            continue
        step = _step_row(spec_step, position, stage, event, target)
        run = StepRun(step, records, settings, None, None, conn,  # type: ignore[arg-type]
                      preview=True, clock=clock)
        try:
            outcome = await _execute(ACTIONS[spec_step.action], run, conn)
        except (StepError, HeraldConfigError) as exc:
            preview.status, preview.error = FAILED, str(exc)
            failed_stage = stage
        else:
            if isinstance(outcome, Wait):
                preview.status, preview.until = WAITING, outcome.until
            else:
                assert isinstance(outcome, Done)
                preview.status, preview.result = OK, dict(outcome.response)
        preview.rendered = dict(run.rendered)
    return previews


async def _execute(action: Any, run: StepRun, conn: asyncpg.Connection | None) -> Any:
    if conn is None:
        return await action.execute(run)
    async with conn.transaction():  # a savepoint, as on a worker: a failed step leaves nothing behind
        return await action.execute(run)


def _step_row(spec_step: Any, position: int, stage: int, event: Mapping[str, Any],
              target: Target) -> dict[str, Any]:
    """What a worker's claim returns for a step (actors/steps.py CLAIM_STEPS), for a preview."""
    return {
        "id": None, "run_id": None, "tenant_id": event.get("tenant_id"), "position": position,
        "stage": stage, "grouped": None,
        "step_key": spec_step.key, "action": spec_step.action, "config": spec_step.config, "attempts": 1,
        "wake_at": None, "workflow_id": "preview", "event_id": event.get("id"), "retry": None,
        "rate_limit": None, "tenant_rate_limit": None,
        "table_name": target.table_name or event.get("table_name"), "row_id": event.get("row_id"),
        "entity": event.get("entity"), "id_column": target.id_column, "tenant_column": target.tenant_column,
        "action_targets": target.action_targets, "updatable_columns": list(target.updatable_columns),
        "fills": target.fills,
    }


# -- a dry run against a real record -------------------------------------------


@dataclass
class DryRun:
    """What a workflow would do for a change of a real record; nothing was sent or written."""

    workflow: str  # its name
    event: dict[str, Any]  # the event the change would make
    matched: bool
    reason: str
    context: dict[str, Any]  # what the steps render from (the row, old, new, event, relations)
    refused: dict[str, str]  # relations left out of the context, and why
    steps: list[StepPreview]  # empty when the workflow did not match

    @property
    def ok(self) -> bool:
        """It matched and no step would fail."""
        return self.matched and not any(step.status == FAILED for step in self.steps)

    def as_json(self) -> dict[str, Any]:
        return jsonable({"workflow": self.workflow, "event": self.event, "matched": self.matched,
                          "reason": self.reason, "context": self.context, "refused": self.refused,
                          "steps": [step.as_json() for step in self.steps]})


@dataclass(frozen=True)
class Change:
    """``--change COLUMN=OLD:NEW``: the column's value before and after."""

    column: str
    old: Any
    new: Any

    @classmethod
    def parse(cls, spec: str) -> Change:
        """``status=in_progress:completed``; a value with a colon is written as a JSON string
        (``scheduled_at="2024-05-01T09:00":"2024-05-02T09:00"``); ``null`` is NULL."""
        column, sep, rest = spec.partition("=")
        if not sep or not column.strip():
            raise HeraldConfigError(f"--change {spec!r} must look like COLUMN=OLD:NEW, e.g. status=scheduled:completed")
        old, rest = _take_value(rest, spec)
        if not rest.startswith(":"):
            raise HeraldConfigError(f"--change {spec!r} must look like COLUMN=OLD:NEW, e.g. status=scheduled:completed")
        new, rest = _take_value(rest[1:], spec, last=True)
        return cls(column.strip(), old, new)


def _take_value(text: str, spec: str, last: bool = False) -> tuple[Any, str]:
    """One value from the start of ``text``: a JSON string, or text up to the next colon."""
    if text.startswith('"'):
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            raise HeraldConfigError(f"--change {spec!r}: unterminated quoted value") from None
        rest = text[end:]
        if last and rest:
            raise HeraldConfigError(f"--change {spec!r}: unexpected {rest!r} after the new value")
        return value, rest
    if last:
        return _Text(text), ""
    value, sep, rest = text.partition(":")
    return _Text(value), sep + rest


class _Text(str):
    """A value as typed on the command line, to be read like the column's current value."""


def _typed(value: Any, like: Any) -> Any:
    """A typed ``--change`` value as the row's JSON holds the column: ``5`` for a number
    column, ``true`` for a boolean, ``null`` for NULL; text otherwise."""
    if not isinstance(value, _Text):
        return value
    text = str(value)
    if text == "null":
        return None
    if not isinstance(like, str):
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        if isinstance(parsed, (bool, int, float)) or parsed is None:
            return parsed
    return text


EVENT_ROW = "SELECT herald.event_row(to_jsonb(t)) FROM {table} t WHERE {column} = $1::text::{type}"


async def dry_run(
    conn: asyncpg.Connection, spec: WorkflowSpec, tenant: str, table: str, row_id: str,
    changes: Sequence[Change] = (), *, settings: Settings | None = None,
) -> DryRun:
    """What ``spec`` would do for a change of row ``row_id`` of ``table`` (a watched table)
    in ``tenant``: an update from each change's old value to its new one, or, without
    changes, the row's insert. Nothing is sent or written: everything runs in a READ
    ONLY transaction (a savepoint if ``conn`` is in one already) that is rolled back.

    Raises HeraldConfigError for a table Herald does not watch, a row that does not
    exist or belongs to another tenant, or a change naming no column.
    """
    if conn.is_in_transaction():
        transaction = conn.transaction()
    else:
        transaction = conn.transaction(readonly=True)
    await transaction.start()
    try:
        return await _dry_run(conn, spec, tenant, table, row_id, changes, settings)
    finally:
        await transaction.rollback()


async def _dry_run(
    conn: asyncpg.Connection, spec: WorkflowSpec, tenant: str, table: str, row_id: str,
    changes: Sequence[Change], settings: Settings | None,
) -> DryRun:
    table_name = await resolve_table(conn, table, "--record table")
    target = _target(await conn.fetchrow(WATCHED_BY_TABLE, table_name))
    if target is None:
        raise HeraldConfigError(f"Herald does not watch {table_name}; run `herald watch {table}` first")
    shape = await table_shape(conn, table_name)
    id_column = shape.column(target.id_column or "id", "the record id")
    try:
        row = await conn.fetchval(EVENT_ROW.format(table=quote_qualified(table_name), column=quote_ident(id_column.name),
                                                   type=id_column.type), row_id)
    except (asyncpg.DataError, asyncpg.UndefinedFunctionError) as exc:
        raise HeraldConfigError(f"--record {table}:{row_id}: not an id of {table_name} ({exc})") from None
    if row is None:
        raise HeraldConfigError(f"{table_name} has no row {id_column.name} = {row_id!r}")
    if target.tenant_column:
        owner = row.get(target.tenant_column)
        owner = None if owner is None else str(owner)
        if owner != tenant:
            raise OtherTenantsRecord(f"{table_name} {row_id} belongs to tenant {owner}, not {tenant}",
                                     hidden=f"{table_name} has no row {id_column.name} = {row_id!r}")
    elif tenant != "default":
        raise HeraldConfigError(f"{table_name} has no tenant column: its events belong to tenant 'default'")

    now = dt.datetime.now(dt.UTC)
    old: dict[str, Any] | None = None
    new = dict(row)
    if changes:
        old = dict(row)
        for change in changes:
            try:
                column = column_for(change.column, row)
            except AmbiguousName as exc:
                raise HeraldConfigError(f"--change {change.column}: {exc}") from None
            if column is None:
                raise HeraldConfigError(f"--change {change.column}: {table_name} has no such column"
                                        f" (columns: {', '.join(row)})")
            before, after = _typed(change.old, row[column]), _typed(change.new, row[column])
            if before == after:
                raise HeraldConfigError(f"--change {change.column}: the old and new values are the same;"
                                        " an update that changes nothing makes no event")
            old[column], new[column] = before, after
    operation = "UPDATE" if changes else "INSERT"
    entity = target.entity or ""
    event = {
        "id": None, "tenant_id": tenant, "entity": entity, "table_name": table_name,
        "row_id": None if new.get(id_column.name) is None else str(new[id_column.name]),
        "operation": operation, "type": f"{entity}.{'updated' if changes else 'created'}",
        "old": old, "new": new, "created_at": now, "workflow_id": None, "origin_run_id": None,
    }
    verdict = evaluate(spec, event)
    # The context as enrich builds it: the same relation loading and tenant checks.
    run = {**event, "id": 0, "event_id": None, "event_tenant": tenant}
    built = (await build_contexts(conn, [run]))[0]
    context = jsonable_context(built.context)
    steps: list[StepPreview] = []
    if verdict.matched:
        steps = await preview_steps(spec, context, event, target, settings=settings, conn=conn, clock=now,
                                    blocked=first_blocked_step(spec.steps, built.refused))
    return DryRun(spec.name, jsonable(event), verdict.matched, verdict.reason, context, dict(built.refused), steps)


# -- stored workflows ----------------------------------------------------------

class OtherTenantsRecord(HeraldConfigError):
    """The record asked for is another tenant's. ``hidden`` says the same as for a
    record that does not exist: what a tenant's user is told (the dashboard),
    where the CLI, run by someone with the database, names the owner."""

    def __init__(self, message: str, *, hidden: str) -> None:
        super().__init__(message)
        self.hidden = hidden


async def stored_workflow(conn: asyncpg.Connection, reference: str, tenant: str) -> Any:
    """The current definition of the tenant's stored workflow ``reference`` names (its
    document id, its name or its uuid: :func:`daemon.workflows.find_workflow`)."""
    from daemon.workflows import find_workflow, workflow_definition

    workflow = await find_workflow(conn, tenant, reference, "WORKFLOW")
    return (await workflow_definition(conn, workflow))["definition"]


# -- output --------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: times in ISO form, durations as workflows write them."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return human_duration(value)
    return value


def human_duration(delta: dt.timedelta) -> str:
    """``3d``, ``1d 2h``, ``90s`` → the way workflows write durations."""
    seconds = int(round(delta.total_seconds()))
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return sign + (" ".join(parts) or "0s")


def describe_step(step: StepPreview, *, since: dt.datetime | None = None, indent: str = "  ") -> list[str]:
    """A step preview as lines for people: what it would send or write, or why it would fail."""
    head = f"step {step.position + 1} {step.key} ({step.action}): "
    if step.status == NOT_RUN:
        return [head + "not run (an earlier step would fail)"]
    if step.status == FAILED:
        return [head + f"would fail: {step.error}"]
    if step.status == WAITING:
        assert step.until is not None
        after = f" ({human_duration(step.until - since)} after the event)" if since else ""
        return [head + f"would wait until {step.until.isoformat()}{after}"]
    result = step.result
    lines: list[str] = []
    if step.action in ("email", "sms", "draft_email", "draft_sms"):
        verb = "would draft (not send)" if step.action.startswith("draft_") else "would send"
        lines.append(head + verb)
        fields = {"recipient": result.get("recipient"),
                  "subject": result.get("subject", step.rendered.get("subject")),
                  "body": result.get("body", step.rendered.get("message")),
                  "html": result.get("html_body")}
        lines += _field_lines({k: v for k, v in fields.items() if v is not None}, indent)
    elif step.action == "webhook":
        lines.append(head + "would POST")
        lines += _field_lines({"url": result.get("url"), "payload": result.get("payload")}, indent)
    elif step.action in ("create_task", "create_note"):
        where = result.get("table") or "its table (not known without a database)"
        lines.append(head + f"would insert into {where}")
        lines += _field_lines({"row": result.get("row")}, indent)
        if result.get("filled"):
            lines += _field_lines({"filled": result["filled"]}, indent)
    elif step.action == "update_record":
        lines.append(head + f"would update the event's row of {result.get('table')}")
        lines += _field_lines({"fields": result.get("fields")}, indent)
        if result.get("filled"):
            lines += _field_lines({"filled": result["filled"]}, indent)
    elif step.action in ("delay", "delay_seconds"):
        lines.append(head + "would not wait (the time has passed)")
    else:
        lines.append(head + "done")
        lines += _field_lines(result, indent)
    return lines


def _field_lines(fields: Mapping[str, Any], indent: str) -> list[str]:
    lines = []
    for name, value in fields.items():
        if isinstance(value, str) and "\n" in value:
            lines.append(f"{indent}{name}: |")
            lines += [f"{indent}  {line}" for line in value.split("\n")]
        elif isinstance(value, str):
            lines.append(f"{indent}{name}: {value}")
        else:
            lines.append(f"{indent}{name}: {json.dumps(jsonable(value), default=str, sort_keys=True)}")
    return lines


def format_dry_run(result: DryRun, source: str) -> str:
    """The dry run as `herald workflows test` prints it."""
    event = result.event
    lines = [f"workflow: {result.workflow} ({source})"]
    what = f"{event['entity']} {event['row_id']} of tenant {event['tenant_id']}: {event['operation'].lower()}"
    changed = [f"{k}: {json.dumps((event['old'] or {}).get(k), default=str)} -> {json.dumps(v, default=str)}"
               for k, v in (event["new"] or {}).items() if event["old"] is not None and event["old"].get(k) != v]
    lines.append(f"event: {what} ({event['type']})" + (f"; {', '.join(changed)}" if changed else ""))
    lines.append(f"match: {'matched' if result.matched else 'did not match'}: {result.reason}")
    lines.append("context:")
    for name, value in result.context.items():
        if name in ("old", "new"):
            continue
        lines.append(f"  {name}: {json.dumps(value, default=str, sort_keys=True)}")
    for name, reason in result.refused.items():
        lines.append(f"  {name}: not loaded: {reason}")
    if result.matched:
        since = dt.datetime.fromisoformat(event["created_at"])
        for step in result.steps:
            lines += describe_step(step, since=since, indent="    ")
    else:
        lines.append("steps: none would run")
    lines.append("nothing was sent or written (dry run)")
    return "\n".join(lines)
