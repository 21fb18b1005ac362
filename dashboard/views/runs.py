"""Runs: the list (page, live rows fragment and /api/runs), one run's page (and
/api/runs/{id}) with retry and cancel for support, a record's timeline, and
delivery statistics (/api/stats).

Every list and page is limited to the viewer's tenants: a run or record of a
tenant they do not see is a 404, exactly like one that does not exist.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import structlog
from aiohttp import web

from daemon.accounts import audit
from daemon.retries import RetryRefused, refusal, retry_one, why_not_retried
from daemon.workflows import CANCEL_RUNS
from dashboard.auth import check_tenant, requires, scope, viewer
from dashboard.params import choice_param, int_param, parse_id, reason_field
from dashboard.queries import runs as queries
from dashboard.resources import POOL, send_steps

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

RUN_STATUSES = ("pending", "running", "completed", "failed", "cancelled", "skipped")
UNFINISHED = ("pending", "running")
MAX_LIMIT = 200        # runs per page (and per live update)
MAX_TEXT = 200         # characters of a text filter
MAX_REASON = 1000      # characters of a retry's or cancellation's reason
MAX_IDS = 200          # runs one live update asks about
TIMELINE_EVENTS = 200  # events a record's timeline shows
TEXT_FILTERS = ("workflow", "entity", "record", "recipient", "error")
# Query parameters the list keeps when it links to the next page.
LIST_PARAMS = ("status", "tenant", *TEXT_FILTERS, "from", "to", "limit")

# What the run page says after a retry or cancel (?done=...): a fixed set, never
# text from the request.
NOTICES = {
    "retried": "The run was sent again: its undelivered steps are queued.",
    "cancelled": "The run was cancelled: no step that had not started will be carried out.",
    "not-failed": "Nothing was retried: the run is no longer failed (retried by someone else?).",
    "not-running": "Nothing was cancelled: the run had already ended.",
}


# -- reading the request ---------------------------------------------------------

def _text_param(request: web.Request, name: str) -> str | None:
    value = (request.query.get(name) or "").strip()
    if len(value) > MAX_TEXT:
        raise web.HTTPBadRequest(text=f"{name} must be at most {MAX_TEXT} characters")
    return value or None


def _id_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    value = parse_id(raw)
    if value is None:
        raise web.HTTPBadRequest(text=f"{name} must be a run id (a whole number from 1)")
    return value


def _ids_param(request: web.Request) -> list[int] | None:
    raw = request.query.get("ids")
    if raw is None:
        return None
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    ids = [parse_id(part) for part in parts]
    if len(parts) > MAX_IDS or None in ids:
        raise web.HTTPBadRequest(text=f"ids must be at most {MAX_IDS} run ids, separated by commas")
    return ids  # type: ignore[return-value]


def _date_param(request: web.Request, name: str, *, end: bool) -> dt.datetime | None:
    """An ISO date (``2026-11-30``: the whole day; ``to`` includes it) or date and
    time (UTC unless it names a zone)."""
    raw = (request.query.get(name) or "").strip()
    if not raw:
        return None
    if len(raw) > 40:
        raise web.HTTPBadRequest(text=f"{name} must be an ISO date such as 2026-11-30")
    try:
        if len(raw) == 10:
            day = dt.date.fromisoformat(raw)
            when = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
            return when + dt.timedelta(days=1) if end else when
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an ISO date such as 2026-11-30"
                                      " (or a date and time, 2026-11-30T14:00)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _run_filter(request: web.Request, *, live: bool = False) -> queries.RunFilter:
    since, until = _date_param(request, "from", end=False), _date_param(request, "to", end=True)
    if since is not None and until is not None and since >= until:
        raise web.HTTPBadRequest(text="from must be before to")
    before = _id_param(request, "before")
    after = _id_param(request, "after") if live else None
    if before is not None and after is not None:
        raise web.HTTPBadRequest(text="after cannot be combined with before")
    return queries.RunFilter(
        scope=scope(request), status=choice_param(request, "status", RUN_STATUSES),
        workflow=_text_param(request, "workflow"), entity=_text_param(request, "entity"),
        row_id=_text_param(request, "record"), recipient=_text_param(request, "recipient"),
        error=_text_param(request, "error"), since=since, until=until, before=before, after=after,
        ids=_ids_param(request) if live else None)


def _limit(request: web.Request) -> int:
    return int_param(request, "limit", 50, MAX_LIMIT)


def _filters_shown(request: web.Request) -> dict[str, str]:
    """The list's filters as given, for the form and the next page's link."""
    return {name: request.query.get(name, "") for name in LIST_PARAMS}


async def _page_of_runs(request: web.Request) -> tuple[list[dict[str, Any]], int | None]:
    """A page of runs and the id to ask ``before`` for the next one (None: last page)."""
    limit = _limit(request)
    runs = await queries.list_runs(request.app[POOL], _run_filter(request), limit=limit + 1)
    if len(runs) > limit:
        return runs[:limit], runs[limit - 1]["id"]
    return runs, None


def _run_id(request: web.Request) -> int:
    value = parse_id(request.match_info["run_id"])
    if value is None:
        raise web.HTTPNotFound(text="There is no such run.")
    return value


# -- the list ----------------------------------------------------------------------

@routes.get("/api/runs", name="api_runs")
async def api_runs(request: web.Request) -> web.Response:
    runs, next_before = await _page_of_runs(request)
    return web.json_response({"runs": runs, "next_before": next_before})


@routes.get("/api/stats", name="api_stats")
async def api_stats(request: web.Request) -> web.Response:
    stats = await queries.delivery_stats(
        request.app[POOL], scope=scope(request), hours=int_param(request, "hours", 24, 24 * 366))
    return web.json_response(stats)


@routes.get("/runs", name="runs")
@aiohttp_jinja2.template("runs.html")
async def runs_page(request: web.Request) -> dict[str, Any]:
    runs, next_before = await _page_of_runs(request)
    shown = _filters_shown(request)
    keep = {name: value for name, value in shown.items() if value}
    filtered = any(shown[name] for name in LIST_PARAMS if name != "limit")
    return {
        "runs": runs, "filters": shown, "statuses": RUN_STATUSES, "filtered": filtered,
        "older": f"/runs?{urlencode({**keep, 'before': next_before})}" if next_before else None,
        "newest": f"/runs?{urlencode(keep)}" if request.query.get("before") else None,
        "live": not request.query.get("before"),
        "query": urlencode(keep),
    }


@routes.get("/runs/rows", name="runs_rows")
@routes.get("/runs/table", name="runs_table")
@aiohttp_jinja2.template("runs_rows.html")
async def runs_rows(request: web.Request) -> dict[str, Any]:
    """Table rows for the live page: runs newer than ``after`` (the oldest ``limit``
    of them, shown newest first) with the list's filters, or the runs ``ids`` names;
    only ever of the viewer's tenants."""
    where = _run_filter(request, live=True)
    if where.ids is not None:
        # Runs already shown, asked about for their status: a run that no longer
        # matches a status filter still shows its new status.
        where = queries.RunFilter(scope=where.scope, ids=where.ids)
    return {"runs": await queries.list_runs(request.app[POOL], where, limit=_limit(request)), "fragment": True}


# -- one run -----------------------------------------------------------------------

async def _run_or_404(request: web.Request, run_id: int) -> dict[str, Any]:
    run = await queries.run_detail(request.app[POOL], run_id, scope=viewer(request).scope)
    if run is None:
        raise web.HTTPNotFound(text="There is no such run (or it is not one of your tenants').")
    return run


async def _retry_refusal(request: web.Request, run: dict[str, Any]) -> str | None:
    """Why retrying this failed run without force would be refused, or None."""
    if run["status"] != "failed":
        return None
    async with request.app[POOL].acquire() as conn:
        row = await queries.retry_check_row(conn, run["id"])
    if row is None:
        return None
    return _for_people(refusal(row, as_run=False, force=False))


def _for_people(text: str | None) -> str | None:
    """daemon.retries speaks to the CLI ("--force"); the page's button says "retry anyway"."""
    if text is None:
        return None
    return text.replace("--force", '"Retry anyway"').replace(" (--as-run)", "")


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)


def _field_text(row: Any, key: str) -> str:
    if not isinstance(row, dict) or key not in row:
        return "–"
    value = row[key]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _for_page(run: dict[str, Any]) -> dict[str, Any]:
    """The run's JSON values as text to show (pretty-printed, escaped by the template)."""
    event = run["event"]
    run["shown"] = {
        "old": {key: _field_text(event["old"], key) for key in event["changed"]},
        "new": {key: _field_text(event["new"], key) for key in event["changed"]},
        "old_text": _json_text(event["old"]), "new_text": _json_text(event["new"]),
        "match_text": _json_text(run["match_reason"]), "context_text": _json_text(run["context"]),
    }
    for step in run["steps"]:
        step["rendered_text"] = _json_text(step["rendered"])
        step["response_text"] = _json_text(step["provider_response"])
        step["config_text"] = _json_text(step["config"])
    return run


async def _run_page(request: web.Request, run_id: int, **extra: Any) -> dict[str, Any]:
    run = _for_page(await _run_or_404(request, run_id))
    return {
        "run": run,
        "refusal": extra.get("refusal") or await _retry_refusal(request, run),
        "notice": NOTICES.get(request.query.get("done", "")),
        "reason": extra.get("reason", ""),
        "unfinished": run["status"] in UNFINISHED,
    }


@routes.get(r"/runs/{run_id:\d+}", name="run")
@aiohttp_jinja2.template("run.html")
async def run_page(request: web.Request) -> dict[str, Any]:
    return await _run_page(request, _run_id(request))


@routes.get(r"/api/runs/{run_id}", name="api_run")
async def api_run(request: web.Request) -> web.Response:
    raw = request.match_info["run_id"]
    if not raw.isascii() or not raw.isdigit():
        raise web.HTTPBadRequest(text="run id must be a whole number")
    run = await _run_or_404(request, _run_id(request))
    return web.json_response({**run, "retry_refusal": await _retry_refusal(request, run)})


async def _reason(request: web.Request) -> str:
    return reason_field(await request.post(), MAX_REASON)


async def _owned_run(request: web.Request, run_id: int) -> Any:
    """The run's tenant and status; 404 when it does not exist or is not the viewer's."""
    async with request.app[POOL].acquire() as conn:
        row = await queries.run_tenant(conn, run_id)
    if row is None:
        raise web.HTTPNotFound(text="There is no such run.")
    check_tenant(request, row["tenant_id"])
    return row


@routes.post(r"/runs/{run_id:\d+}/retry", name="run_retry")
@requires("support")
async def run_retry(request: web.Request) -> web.StreamResponse:
    """Send a failed run again (daemon.retries.retry_one, with the workflow's current
    version); a retry that would fail the same way is refused unless ``force``."""
    run_id = _run_id(request)
    owned = await _owned_run(request, run_id)
    reason = await _reason(request)
    form = await request.post()
    force = form.get("force") == "1"
    who = viewer(request)
    to_send: list[tuple[str, int]] = []
    async with request.app[POOL].acquire() as conn:
        try:
            retried = await retry_one(conn, run_id, requested_by=who.actor, reason=reason,
                                      send_step=lambda queue, step: to_send.append((queue, step)),
                                      tenant_id=owned["tenant_id"], force=force)
        except RetryRefused as exc:
            context = await _run_page(request, run_id, refusal=_for_people(str(exc)), reason=reason)
            return aiohttp_jinja2.render_template("run.html", request, context, status=409)
        if retried is None:
            log.info("retry of a run that is not failed", run_id=run_id,
                     why=await why_not_retried(conn, run_id, owned["tenant_id"]))
            raise web.HTTPSeeOther(f"/runs/{run_id}?done=not-failed")
        await audit(conn, who.actor, "run.retry", target=f"run {run_id}", tenant_id=owned["tenant_id"],
                    reason=reason, detail={"force": force, "steps_reset": retried.steps_reset,
                                           "steps_kept": retried.steps_kept, "version": retried.version})
    await send_steps(request, to_send)
    raise web.HTTPSeeOther(f"/runs/{run_id}?done=retried")


@routes.post(r"/runs/{run_id:\d+}/cancel", name="run_cancel")
@requires("support")
async def run_cancel(request: web.Request) -> web.StreamResponse:
    """Cancel a pending or running run: its pending and waiting steps are cancelled;
    a step being sent at this moment finishes (a message is never cut off half-way),
    and nothing after it starts (the actors only advance running runs)."""
    run_id = _run_id(request)
    owned = await _owned_run(request, run_id)
    reason = await _reason(request)
    who = viewer(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        done = await conn.execute(CANCEL_RUNS, [run_id], f"cancelled by {who.actor}: {reason}")
        if done != "UPDATE 1":
            raise web.HTTPSeeOther(f"/runs/{run_id}?done=not-running")
        await audit(conn, who.actor, "run.cancel", target=f"run {run_id}", tenant_id=owned["tenant_id"],
                    reason=reason, detail={"was": owned["status"]})
    raise web.HTTPSeeOther(f"/runs/{run_id}?done=cancelled")


# -- a record's timeline -----------------------------------------------------------

@routes.get("/records/{entity}/{row_id:.+}", name="record")
@aiohttp_jinja2.template("record.html")
async def record_page(request: web.Request) -> dict[str, Any]:
    entity, row_id = request.match_info["entity"], request.match_info["row_id"]
    if len(entity) > MAX_TEXT or len(row_id) > MAX_TEXT:
        raise web.HTTPNotFound(text="There is no such record.")
    events = await queries.record_timeline(request.app[POOL], entity, row_id,
                                           scope=viewer(request).scope, limit=TIMELINE_EVENTS)
    if not events:
        raise web.HTTPNotFound(text="Herald has no event of that record (or it is not one of your tenants').")
    return {"entity": entity, "row_id": row_id, "events": events, "limit": TIMELINE_EVENTS}
