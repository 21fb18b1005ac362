"""Failures: failed runs grouped by what went wrong, retries with a preview first,
and parked steps (outcome unknown) for support to decide on.

Retries go through daemon.retries and parked-step decisions through
daemon.parked, exactly as the command line does; their Dramatiq messages are
sent over the process's broker (actors.broker), set up lazily on first use.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp_jinja2
import structlog
from aiohttp import web

from daemon import parked
from daemon.accounts import audit
from dashboard.auth import check_tenant, requires, scope, viewer
from dashboard.params import MAX_ID, choice_param, parse_id, reason_field
from dashboard.queries import failures as queries
from dashboard.resources import POOL, send_steps

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

RUN_STATUSES = ("pending", "running", "completed", "failed", "cancelled", "skipped")
MAX_REASON_CHARS = 500
# Runs listed on a group's page (all of them are retried).
MAX_LISTED = 200

# -- reading the request ----------------------------------------------------------------

def _window(request: web.Request) -> str:
    return choice_param(request, "window", tuple(queries.WINDOWS)) or queries.DEFAULT_WINDOW


def _workflow(request: web.Request) -> str | None:
    raw = request.query.get("workflow") or None
    if raw is None:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise web.HTTPBadRequest(text="workflow must be a workflow's id (a uuid)") from None


def _id(text: str, what: str) -> int:
    value = parse_id(text)
    if value is None:
        raise web.HTTPBadRequest(text=f"{what} must be a whole number from 1 to {MAX_ID}")
    return value


def _reason(form: Any) -> str:
    return reason_field(form, MAX_REASON_CHARS)


def _key(request: web.Request) -> str:
    key = request.match_info["key"]
    if len(key) != 20 or not all(char in "0123456789abcdef" for char in key):
        raise web.HTTPNotFound()
    return key


# -- pages ----------------------------------------------------------------------------

@routes.get("/failures", name="failures")
@aiohttp_jinja2.template("failures.html")
async def failures_page(request: web.Request) -> dict[str, Any]:
    tenants, window, workflow = scope(request), _window(request), _workflow(request)
    async with request.app[POOL].acquire() as conn:
        groups, cut = await queries.failure_groups(conn, tenants, window=window, workflow_id=workflow)
        steps = await parked.parked_steps(conn, tenants, workflow_id=workflow)
        workflows = await queries.workflows_with_failures(conn, tenants)
    return {"groups": groups, "cut": cut, "max_scanned": queries.MAX_SCANNED, "parked": steps,
            "workflows": workflows, "windows": queries.WINDOW_LABELS, "decided": _decided(request),
            "filters": {"window": window, "workflow": workflow, "tenant": request.query.get("tenant") or None},
            "decisions": parked.DECISION_LABELS, "may_act": viewer(request).may("support")}


def _decided(request: web.Request) -> str | None:
    """The line saying what a parked-step decision did (after its redirect), from known words only."""
    decision, step, run = (request.query.get(name, "") for name in ("decided", "step", "run"))
    status = request.query.get("status", "")
    if decision not in parked.DECISION_LABELS or not step.isdigit() or not run.isdigit() or len(step + run) > 40:
        return None
    done = {"resend": "sent again", "mark_sent": "marked as sent", "give_up": "given up"}[decision]
    tail = f"; run {run} is now {status}" if status in RUN_STATUSES else ""
    return f"Step {step} {done}{tail}."


@routes.get("/failures/group/{key}", name="failure_group")
@aiohttp_jinja2.template("failure_group.html")
async def group_page(request: web.Request) -> dict[str, Any]:
    key, window, tenants = _key(request), _window(request), scope(request)
    async with request.app[POOL].acquire() as conn:
        group = await queries.find_group(conn, tenants, key, window=window)
        if group is None:
            raise web.HTTPNotFound(text="No failed runs in this group (any more) in the chosen time window.")
        runs = await queries.failed_runs_of(conn, group.run_ids[:MAX_LISTED])
    return {"group": group, "runs": runs, "window": window, "windows": queries.WINDOW_LABELS,
            "listed": MAX_LISTED, "may_retry": viewer(request).may("support"),
            "max_retry": queries.MAX_RETRY_RUNS}


@routes.get("/failures/group/{key}/retry", name="failure_group_retry")
@requires("support")
@aiohttp_jinja2.template("retry_preview.html")
async def group_retry_preview(request: web.Request) -> dict[str, Any]:
    key, window, tenants = _key(request), _window(request), scope(request)
    async with request.app[POOL].acquire() as conn:
        group = await queries.find_group(conn, tenants, key, window=window)
        if group is None:
            raise web.HTTPNotFound(text="No failed runs in this group (any more) in the chosen time window.")
        preview = await queries.preview_retry(conn, tenants, group.run_ids)
    return {"preview": preview, "group": group, "window": window, "run_id": None,
            "back": f"/failures/group/{key}?window={window}", "truncated": group.count > queries.MAX_RETRY_RUNS,
            "max_retry": queries.MAX_RETRY_RUNS}


@routes.get("/failures/runs/{run_id}/retry", name="failure_run_retry")
@requires("support")
@aiohttp_jinja2.template("retry_preview.html")
async def run_retry_preview(request: web.Request) -> dict[str, Any]:
    run_id = _id(request.match_info["run_id"], "the run id")
    async with request.app[POOL].acquire() as conn:
        tenant = await conn.fetchval("SELECT tenant_id FROM herald.runs WHERE id = $1", run_id)
        if tenant is None:
            raise web.HTTPNotFound()
        check_tenant(request, tenant)
        preview = await queries.preview_retry(conn, viewer(request).scope, [run_id])
    return {"preview": preview, "group": None, "window": queries.DEFAULT_WINDOW, "run_id": run_id,
            "back": "/failures", "truncated": False, "max_retry": queries.MAX_RETRY_RUNS}


@routes.post("/failures/retry", name="failures_retry")
@requires("support")
async def retry(request: web.Request) -> web.StreamResponse:
    """Retry exactly the runs the preview listed: each is checked again now (still
    failed, one of the viewer's tenants); any other id is left alone."""
    form = await request.post()
    raw_ids = [value for value in form.getall("run", []) if isinstance(value, str)]
    if not raw_ids:
        raise web.HTTPBadRequest(text="No runs to retry: start from a group's or a run's retry preview.")
    if len(raw_ids) > queries.MAX_RETRY_RUNS:
        raise web.HTTPBadRequest(text=f"At most {queries.MAX_RETRY_RUNS} runs at a time.")
    run_ids = [_id(value, "run") for value in raw_ids]
    reason = _reason(form)
    force = form.get("force") == "yes"
    group = form.get("group")
    group = group if isinstance(group, str) and len(group) == 20 and group.isalnum() else None
    who = viewer(request)
    async with request.app[POOL].acquire() as conn:
        outcome = await queries.retry_runs(conn, who.scope, run_ids, who=who.actor, reason=reason, force=force)
        sent = await send_steps(request, outcome.to_send)
        tenants = sorted(outcome.tenants)
        audit_id = await _audit(conn, who.actor, outcome, reason=reason, force=force, sent=sent, group=group,
                                tenants=tenants, asked=len(set(run_ids)))
    raise web.HTTPSeeOther(f"/failures/retried/{audit_id}")


async def _audit(conn: Any, actor: str, outcome: queries.RetryOutcome, *, reason: str, force: bool, sent: bool,
                 group: str | None, tenants: list[str], asked: int) -> int:
    target = f"group {group}" if group else (f"run {outcome.retried[0]}" if len(outcome.retried) == 1 else None)
    detail = {"asked": asked, "retried": outcome.retried, "steps_reset": outcome.steps_reset,
              "steps_kept": outcome.steps_kept, "refused": {str(k): v for k, v in outcome.refused.items()},
              "not_retried": {str(k): v for k, v in outcome.not_retried.items()}, "force": force,
              "messages_sent": sent, "tenants": tenants, "group": group}
    async with conn.transaction():
        await audit(conn, actor, "failures.retry", target=target,
                    tenant_id=tenants[0] if len(tenants) == 1 else None, reason=reason, detail=detail)
        # currval is this session's own: the row just written, whoever else writes meanwhile.
        return int(await conn.fetchval("SELECT currval(pg_get_serial_sequence('herald.audit_log', 'id'))"))


@routes.get("/failures/retried/{audit_id}", name="failures_retried")
@requires("support")
@aiohttp_jinja2.template("retry_preview.html")
async def retried_page(request: web.Request) -> dict[str, Any]:
    """What a retry did; only the person who made it sees this page (the audit log keeps it for others)."""
    audit_id = _id(request.match_info["audit_id"], "the id")
    who = viewer(request)
    async with request.app[POOL].acquire() as conn:
        row = await conn.fetchrow(
            "SELECT at, reason, detail FROM herald.audit_log WHERE id = $1 AND action = 'failures.retry'"
            " AND actor = $2", audit_id, who.actor)
    if row is None:
        raise web.HTTPNotFound()
    detail = json.loads(row["detail"]) if isinstance(row["detail"], str) else dict(row["detail"])
    if not all(who.sees(tenant) for tenant in detail.get("tenants", [])):
        raise web.HTTPNotFound()
    group = detail.get("group")
    return {"result": detail, "at": row["at"], "reason": row["reason"], "preview": None, "group": None,
            "run_id": None, "window": queries.DEFAULT_WINDOW, "truncated": False,
            "max_retry": queries.MAX_RETRY_RUNS,
            "back": f"/failures/group/{group}" if group else "/failures"}


STEP_IN_SCOPE = "SELECT true FROM herald.steps WHERE id = $1 AND ($2::text[] IS NULL OR tenant_id = ANY($2))"


@routes.post("/failures/parked/{step_id}", name="failures_parked")
@requires("support")
async def decide_parked(request: web.Request) -> web.StreamResponse:
    """Resend, mark as sent or give up a parked step (daemon.parked), with a reason."""
    step_id = _id(request.match_info["step_id"], "the step id")
    who = viewer(request)
    if not await request.app[POOL].fetchval(STEP_IN_SCOPE, step_id, who.scope):
        raise web.HTTPNotFound()  # another tenant's step is no step at all, whatever the form says
    form = await request.post()
    decision = form.get("decision")
    if decision not in parked.DECISIONS:
        raise web.HTTPBadRequest(text=f"decision must be one of {', '.join(parked.DECISIONS)}")
    reason = _reason(form)
    async with request.app[POOL].acquire() as conn:
        try:
            done = await parked.decide(conn, step_id, str(decision), scope=who.scope, who=who.actor, reason=reason)
        except parked.ParkedStepNotFound:
            raise web.HTTPNotFound() from None
        except parked.ParkedError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
    await send_steps(request, done.to_send)
    raise web.HTTPSeeOther(f"/failures?decided={done.decision}&step={done.step_id}&run={done.run_id}"
                           f"&status={done.run_status}#parked")
