"""The test runner on screen: a workflow against a real record or a pasted
sample, showing the match decision and each step rendered. It runs through
daemon.dry_run.dry_run (a real record) or the workflow-test engine (a sample),
always inside a READ ONLY transaction that is rolled back, exactly as
`herald workflows test` and `herald test --database` do: nothing is sent,
queued or written.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

import aiohttp_jinja2
import asyncpg
from aiohttp import web

from actors.model.workflow import WorkflowSpec, parse_workflow
from config.errors import HeraldConfigError, WorkflowValidationError
from daemon.accounts import audit
from daemon.dry_run import (
    Change,
    DryRun,
    OtherTenantsRecord,
    StepPreview,
    dry_run,
    jsonable,
    watched_entity,
)
from daemon.triggering import check_text, watched_entities
from daemon.workflow_tests.files import TestFileError, parse_case
from daemon.workflow_tests.running import run_case
from dashboard.auth import requires, viewer
from dashboard.queries import workflows as queries
from dashboard.resources import POOL, SETTINGS
from dashboard.typed_json import FieldError, parse_json_text
from dashboard.views.workflows import pretty, refuse_deleted, workflow_of

routes = web.RouteTableDef()

MAX_RECORD_ID_CHARS = 200
MAX_CHANGES = 20
MAX_SAMPLE_BYTES = 64 * 1024


@dataclass
class TestOutcome:
    """What the test runner shows: the match decision and each step rendered."""

    __test__ = False  # not a pytest class

    mode: str
    matched: bool
    reason: str
    steps: list[dict[str, Any]]
    event: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    refused: dict[str, str] | None = None


def step_view(step: StepPreview) -> dict[str, Any]:
    """A step preview as the page lists it: its status and what it would send or write."""
    result, rendered = step.result, step.rendered
    shown: list[tuple[str, str, bool]] = []  # (label, value, is_code)

    def add(label: str, value: Any, code: bool = False) -> None:
        if value is None or value == "" or value == {}:
            return
        if not isinstance(value, str):
            value, code = pretty(jsonable(value)), True
        shown.append((label, value, code))

    if step.action in ("email", "sms", "draft_email", "draft_sms"):
        add("Recipient", result.get("recipient", rendered.get("recipient")))
        add("Subject", result.get("subject", rendered.get("subject")))
        add("Message", result.get("body", rendered.get("message")))
        add("HTML", result.get("html_body"), True)
    elif step.action == "webhook":
        add("URL", result.get("url", rendered.get("url")))
        add("Body", result.get("payload"))
    elif step.action in ("create_task", "create_note", "update_record"):
        add("Table", result.get("table"))
        add("Row" if step.action != "update_record" else "Fields", result.get("row", result.get("fields")))
        add("Filled in", result.get("filled"))
    elif result:
        add("Result", result)
    if not shown and rendered and step.status != "not run":
        add("Rendered", rendered)
    return {"position": step.position + 1, "key": step.key, "action": step.action, "status": step.status,
            "error": step.error, "until": step.until, "fields": shown,
            "draft": step.action.startswith("draft_")}


def _dry_run_outcome(result: DryRun) -> TestOutcome:
    return TestOutcome("record", result.matched, result.reason, [step_view(s) for s in result.steps],
                       result.event, result.context, result.refused)


async def _spec_of(conn: asyncpg.Connection, row: Any) -> WorkflowSpec:
    spec = parse_workflow(row["definition"])
    return replace(spec, trigger=spec.trigger.resolve(await watched_entities(conn)))


def _changes(text: str) -> list[Change]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_CHANGES:
        raise HeraldConfigError(f"at most {MAX_CHANGES} changes")
    return [Change.parse(line) for line in lines]


def _json_field(fields: dict[str, str], name: str, label: str) -> Any:
    text = fields.get(name, "").strip()
    if not text:
        return None
    if len(text.encode("utf-8", "replace")) > MAX_SAMPLE_BYTES:
        raise TestFileError(label, f"is larger than {MAX_SAMPLE_BYTES // 1024} KB")
    value, error = parse_json_text(text, label)
    if error is not None:
        raise TestFileError(label, f"{error.message} (line {error.line}, column {error.column})"
                            if error.line else error.message)
    return value


async def _sample_outcome(request: web.Request, conn: asyncpg.Connection, spec: WorkflowSpec, row: Any,
                          fields: dict[str, str]) -> TestOutcome:
    """The workflow on a pasted record, as a `herald test --database` case runs it."""
    raw: dict[str, Any] = {"tenant": row["tenant_id"]}
    record = _json_field(fields, "sample", "record")
    if record is None:
        raise TestFileError("record", "paste the record as a JSON object, e.g. {\"id\": 1, \"status\": \"completed\"}")
    raw["record"] = record
    for name, label in (("sample_changes", "changes"), ("sample_related", "related")):
        value = _json_field(fields, name, label)
        if value is not None:
            raw[label] = value
    operation = fields.get("operation", "")
    if operation in ("insert", "update", "delete"):
        raw["operation"] = operation
    elif operation:
        raise TestFileError("operation", "must be insert, update or delete")
    case = parse_case({"name": "dashboard", "event": raw}, "sample", spec, {})
    transaction = conn.transaction(readonly=True)
    await transaction.start()
    try:
        result = await run_case(spec, case, conn=conn, settings=request.app[SETTINGS])
    finally:
        await transaction.rollback()
    crashed = [m for m in result.mismatches if m.where == "case"]
    if crashed:
        raise HeraldConfigError(f"the test could not run: {crashed[0].got}")
    return TestOutcome("sample", bool(result.matched), result.reason or "",
                       [step_view(s) for s in result.steps])


@routes.get("/workflows/{id}/test", name="workflow_test")
@requires("operator")
async def test_page(request: web.Request) -> web.StreamResponse:
    return await _test_form(request, {}, None, None, 200)


@routes.post("/workflows/{id}/test")
@requires("operator")
async def run_test(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    mode = fields.get("mode", "record")
    if mode not in ("record", "sample"):
        raise web.HTTPBadRequest(text="mode must be record or sample")
    who = viewer(request)
    outcome: TestOutcome | None = None
    error: FieldError | None = None
    async with request.app[POOL].acquire() as conn:
        row = await workflow_of(request, conn)
        refuse_deleted(row)
        try:
            spec = await _spec_of(conn, row)
            if mode == "record":
                record_id = fields.get("record_id", "").strip() or fields.get("record_pick", "").strip()
                if not record_id:
                    raise TestFileError("record_id", "give the id of a record (or pick a recent one)")
                if len(record_id) > MAX_RECORD_ID_CHARS:
                    raise TestFileError("record_id", f"must be at most {MAX_RECORD_ID_CHARS} characters")
                check_text(record_id, "the record id")
                changes = _changes(fields.get("changes", "")[:8192])
                target = await watched_entity(conn, spec.trigger.entity)
                if target is None or target.table_name is None:
                    raise TestFileError("record_id", f"no watched table has entity {spec.trigger.entity!r}:"
                                                     " paste a sample record instead")
                result = await dry_run(conn, spec, row["tenant_id"], target.table_name, record_id, changes,
                                       settings=request.app[SETTINGS])
                outcome = _dry_run_outcome(result)
            else:
                outcome = await _sample_outcome(request, conn, spec, row, fields)
        except TestFileError as exc:
            error = FieldError(exc.field.removeprefix("sample.event.") or mode, exc.message)
        except OtherTenantsRecord as exc:
            error = FieldError(mode, exc.hidden)  # as if it did not exist: it is not this tenant's
        except (HeraldConfigError, WorkflowValidationError) as exc:
            error = FieldError(mode, str(exc))
        if outcome is not None:
            # Who tried what: the test itself wrote nothing (its transaction was rolled back).
            await audit(conn, who.actor, "workflow.test", target=str(row["id"]), tenant_id=row["tenant_id"],
                        detail={"mode": mode, "matched": outcome.matched, "version": row["version"],
                                "record_id": (fields.get("record_id") or fields.get("record_pick") or "")[:200]
                                if mode == "record" else None})
    return await _test_form(request, fields, outcome, error, 400 if error else 200)


async def _test_form(request: web.Request, fields: dict[str, str], outcome: TestOutcome | None,
                     error: FieldError | None, status: int) -> web.StreamResponse:
    async with request.app[POOL].acquire() as conn:
        row = await workflow_of(request, conn)
        refuse_deleted(row)
        try:
            spec = await _spec_of(conn, row)
            entity = spec.trigger.entity
        except WorkflowValidationError:
            entity = ""
        records = await queries.recent_records(conn, row["tenant_id"], entity) if entity else []
        target = await watched_entity(conn, entity) if entity else None
    return aiohttp_jinja2.render_template("workflow_test.html", request, {
        "workflow": row, "fields": fields, "outcome": outcome, "error": error, "records": records,
        "entity": entity, "table": target.table_name if target else None,
        "mode": fields.get("mode", "record"), "now": dt.datetime.now(dt.UTC),
    }, status=status)
