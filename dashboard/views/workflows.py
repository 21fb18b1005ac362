"""Workflows: the list (and /api/workflows), one workflow with its versions,
enabling and disabling, editing and uploading definitions, and the messages the
capture provider stored (the test runner is dashboard.views.workflow_tests).

Saving goes through daemon.workflows.save_workflow (validation with the field at
fault, versions numbered by the database, who saved it).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import aiohttp_jinja2
import asyncpg
from aiohttp import web

from actors.model.workflow import WorkflowSpec, parse_workflow
from config.errors import HeraldConfigError, WorkflowValidationError
from daemon.accounts import audit
from daemon.triggering import check_text, watched_entities
from daemon.workflows import (
    save_workflow,
    set_active,
    template_warnings,
    unwatched_warnings,
    workflow_definition,
    workflow_history,
)
from dashboard.auth import check_tenant, requires, scope, viewer
from dashboard.params import int_param
from dashboard.queries import workflows as queries
from dashboard.queries.tenants import known_tenants
from dashboard.resources import POOL
from dashboard.typed_json import FieldError, located, parse_json_text

routes = web.RouteTableDef()

# A definition, typed or uploaded, is at most this big (the model bounds it further).
MAX_DEFINITION_BYTES = 256 * 1024
MAX_TENANT_CHARS = 200
CAPTURED_PAGE = 50
CAPTURED_MAX = 200


async def _definition_text(request: web.Request) -> tuple[dict[str, Any], str, FieldError | None]:
    """The submitted form, the definition's text (an uploaded file wins over the
    textarea), and what is wrong with its size or encoding."""
    form = await request.post()
    text = form.get("definition")
    text = text if isinstance(text, str) else ""
    upload = form.get("file")
    error = None
    if isinstance(upload, web.FileField):
        data = upload.file.read(MAX_DEFINITION_BYTES + 1)
        if data:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                text, error = "", FieldError("file", "must be UTF-8 text (a JSON workflow document)")
            if len(data) > MAX_DEFINITION_BYTES:
                text = text[:MAX_DEFINITION_BYTES]
                error = FieldError("file", f"is larger than {MAX_DEFINITION_BYTES // 1024} KB")
    if error is None and len(text.encode("utf-8", "replace")) > MAX_DEFINITION_BYTES:
        error = FieldError("definition", f"is larger than {MAX_DEFINITION_BYTES // 1024} KB")
        text = text[:MAX_DEFINITION_BYTES]
    if error is None and not text.strip():
        error = FieldError("definition", "is empty: paste the workflow's JSON, or choose a file")
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return fields, text, error


# -- one workflow ----------------------------------------------------------------


async def workflow_of(request: web.Request, conn: asyncpg.Connection) -> Any:
    """The workflow the URL names: 400 for what is no workflow id, 404 for one that
    does not exist or is another tenant's."""
    workflow_id = queries.parse_id(request.match_info["id"])
    if workflow_id is None:
        raise web.HTTPBadRequest(text="That is not a workflow id (a uuid, as the workflows list links to).")
    row = await queries.workflow_row(conn, workflow_id)
    if row is None:
        raise web.HTTPNotFound()
    check_tenant(request, row["tenant_id"])
    return row


def refuse_deleted(row: Any) -> None:
    if row["deleted_at"] is not None:
        raise web.HTTPConflict(text=f"Workflow {row['name']!r} was deleted: upload its document again"
                                    " to bring it back.")


async def current_warnings(conn: asyncpg.Connection, definition: Any) -> list[str]:
    """What may be wrong with a stored definition though it is valid: as a save warns."""
    try:
        spec = parse_workflow(definition)
        entities = await watched_entities(conn)
        spec = replace(spec, trigger=spec.trigger.resolve(entities))
        warnings = [] if spec.trigger.resolved else unwatched_warnings(spec, entities)
        return warnings + await template_warnings(conn, spec, definition)
    except (WorkflowValidationError, HeraldConfigError) as exc:
        return [str(exc)]


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# -- list -----------------------------------------------------------------------


@routes.get("/api/workflows", name="api_workflows")
async def api_workflows(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_workflows(conn, scope(request))
    return web.json_response({"workflows": [queries.jsonable_row(row) for row in rows]})


@routes.get("/workflows", name="workflows")
@aiohttp_jinja2.template("workflows.html")
async def workflows_page(request: web.Request) -> dict[str, Any]:
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_workflows(conn, scope(request))
    return {"workflows": rows, "tenant": request.query.get("tenant") or None}


# -- captured messages (registered before /workflows/{id}) -------------------------


@routes.get("/workflows/captured", name="captured")
@aiohttp_jinja2.template("captured.html")
async def captured_page(request: web.Request) -> dict[str, Any]:
    limit = int_param(request, "limit", CAPTURED_PAGE, CAPTURED_MAX)
    before = int_param(request, "before", 0, 2**62) or None
    async with request.app[POOL].acquire() as conn:
        messages = await queries.captured_messages(conn, scope(request), limit, before)
    more = messages[-1]["id"] if len(messages) == limit else None
    return {"messages": messages, "limit": limit, "more": more, "tenant": request.query.get("tenant") or None}


# -- upload -------------------------------------------------------------------------


async def _tenant_choices(request: web.Request) -> list[str]:
    who = viewer(request)
    if who.allowed is not None:
        return list(who.allowed)
    async with request.app[POOL].acquire() as conn:
        return await known_tenants(conn)


@routes.get("/workflows/new", name="workflow_new")
@requires("operator")
async def new_page(request: web.Request) -> web.StreamResponse:
    who = viewer(request)
    return await _edit_form(request, None, text="", tenant=who.tenant or "", errors=[], status=200)


@routes.post("/workflows/new")
@requires("operator")
async def upload(request: web.Request) -> web.StreamResponse:
    who = viewer(request)
    fields, text, error = await _definition_text(request)
    tenant = fields.get("tenant", "").strip()
    if not tenant:
        return await _edit_form(request, None, text=text, tenant=tenant, status=400,
                                errors=[FieldError("tenant", "choose the tenant the workflow is for")])
    if len(tenant) > MAX_TENANT_CHARS:
        raise web.HTTPBadRequest(text=f"tenant must be at most {MAX_TENANT_CHARS} characters")
    if who.allowed is not None and tenant not in who.allowed:
        raise web.HTTPForbidden(text="You may save workflows only for your own tenants.")
    return await _save(request, None, tenant, text, error, force=fields.get("force") == "1")


# -- one workflow's pages ------------------------------------------------------------


@routes.get("/workflows/{id}", name="workflow")
@aiohttp_jinja2.template("workflow.html")
async def workflow_page(request: web.Request) -> dict[str, Any]:
    version_asked = int_param(request, "version", 0, 2**31 - 1) or None
    async with request.app[POOL].acquire() as conn:
        row = await workflow_of(request, conn)
        history = await workflow_history(conn, row["id"])
        try:
            shown = await workflow_definition(conn, row, version_asked)
        except HeraldConfigError:
            raise web.HTTPNotFound(text=f"This workflow has no version {version_asked}"
                                        f" (versions 1 to {row['version']}).") from None
        warnings = [] if version_asked not in (None, row["version"]) else await current_warnings(
            conn, row["definition"])
    saved = int_param(request, "saved", 0, 2**31 - 1) or None
    return {"workflow": row, "history": history, "definition": pretty(shown["definition"]),
            "version": version_asked or row["version"], "saved_at": shown["saved_at"],
            "saved_by": shown["saved_by"], "warnings": warnings, "saved": saved,
            "was": request.query.get("was", ""), "who": viewer(request)}


async def _set_active(request: web.Request, active: bool) -> web.StreamResponse:
    who = viewer(request)
    action = "workflow.enable" if active else "workflow.disable"
    async with request.app[POOL].acquire() as conn:
        row = await workflow_of(request, conn)
        refuse_deleted(row)
        try:
            async with conn.transaction():
                changed = await set_active(conn, row, active)
                if changed:
                    await audit(conn, who.actor, action, target=str(row["id"]), tenant_id=row["tenant_id"],
                                detail={"name": row["name"], "version": row["version"]})
        except HeraldConfigError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
    raise web.HTTPSeeOther(f"/workflows/{row['id']}")


@routes.post("/workflows/{id}/enable", name="workflow_enable")
@requires("operator")
async def enable(request: web.Request) -> web.StreamResponse:
    return await _set_active(request, True)


@routes.post("/workflows/{id}/disable", name="workflow_disable")
@requires("operator")
async def disable(request: web.Request) -> web.StreamResponse:
    return await _set_active(request, False)


@routes.get("/workflows/{id}/edit", name="workflow_edit")
@requires("operator")
async def edit_page(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL].acquire() as conn:
        row = await workflow_of(request, conn)
    refuse_deleted(row)
    return await _edit_form(request, row, text=pretty(row["definition"]), tenant=row["tenant_id"],
                            errors=[], status=200)


@routes.post("/workflows/{id}/edit")
@requires("operator")
async def edit(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL].acquire() as conn:
        row = await workflow_of(request, conn)
    refuse_deleted(row)
    fields, text, error = await _definition_text(request)
    return await _save(request, row, row["tenant_id"], text, error, force=fields.get("force") == "1")


async def _edit_form(request: web.Request, row: Any, *, text: str, tenant: str, errors: list[FieldError],
                     status: int, force: bool = False) -> web.StreamResponse:
    return aiohttp_jinja2.render_template("workflow_edit.html", request, {
        "workflow": row, "text": text, "tenant": tenant, "errors": errors, "force": force,
        "tenants": await _tenant_choices(request) if row is None else [],
        "max_kb": MAX_DEFINITION_BYTES // 1024,
        "error_line": next((e.line for e in errors if e.line is not None), None),
    }, status=status)


class _OtherWorkflow(Exception):
    """The edited document would have saved another workflow: rolled back."""


def _same_workflow(row: Any, spec: WorkflowSpec) -> FieldError | None:
    """An edit saves the workflow being edited: its document keeps the id (or, having
    none, the name) that makes it that workflow."""
    if row["source_id"] is not None and spec.source_id != row["source_id"]:
        return FieldError("id", f"must stay {row['source_id']!r}: it is what makes this document this"
                                " workflow (to make another workflow, upload it as a new one)")
    if row["source_id"] is None and spec.source_id is not None:
        return FieldError("id", "this workflow has no id: adding one would make another workflow"
                                " (upload it as a new one)")
    if row["source_id"] is None and spec.name != row["name"]:
        return FieldError("name", f"must stay {row['name']!r}: a workflow without an id is known by its name"
                                  " (give the document an id and upload it as a new one to rename it)")
    return None


async def _save(request: web.Request, row: Any, tenant: str, text: str, error: FieldError | None, *,
                force: bool) -> web.StreamResponse:
    """Validate and save the definition; the form again (400) with the field at
    fault and the text as typed, or on to the workflow's page."""
    who = viewer(request)

    def refused(found: FieldError) -> Any:
        return _edit_form(request, row, text=text, tenant=tenant, errors=[found], status=400, force=force)

    if error is not None:
        return await refused(error)
    document, error = parse_json_text(text, "definition")
    if error is not None:
        return await refused(error)
    try:
        check_text(tenant, "the tenant")
        spec = parse_workflow(document)
    except WorkflowValidationError as exc:
        return await refused(located(text, exc.field, exc.message))
    except HeraldConfigError as exc:
        return await refused(FieldError("(document)", str(exc)))
    except RecursionError:
        return await refused(FieldError("(document)", "nested too deeply"))
    if row is not None and (mismatch := _same_workflow(row, spec)) is not None:
        return await refused(located(text, mismatch.field, mismatch.message))
    async with request.app[POOL].acquire() as conn:
        try:
            async with conn.transaction():
                saved = await save_workflow(conn, tenant, document, force=force, saved_by=who.actor)
                if row is not None and saved.workflow_id != str(row["id"]):
                    raise _OtherWorkflow
                await audit(conn, who.actor, "workflow.save", target=saved.workflow_id, tenant_id=tenant,
                            detail={"name": saved.spec.name, "version": saved.version,
                                    "previous_version": saved.previous_version, "changed": saved.changed,
                                    "forced": force, "new": saved.previous_version is None})
        except WorkflowValidationError as exc:
            return await refused(located(text, exc.field, exc.message))
        except HeraldConfigError as exc:
            return await refused(FieldError("(document)", str(exc)))
        except RecursionError:
            return await refused(FieldError("(document)", "nested too deeply"))
        except _OtherWorkflow:
            return await refused(located(text, "name", "this document would save another workflow of the"
                                                       " tenant; upload it as a new one instead"))
    was = "" if saved.previous_version is None else str(saved.previous_version)
    raise web.HTTPSeeOther(f"/workflows/{saved.workflow_id}?saved={saved.version}&was={was}")
