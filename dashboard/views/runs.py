"""Runs: the list (page, live fragment and /api/runs) and delivery statistics."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from dashboard.auth import scope
from dashboard.params import choice_param, int_param
from dashboard.queries import runs as queries
from dashboard.resources import POOL

routes = web.RouteTableDef()

RUN_STATUSES = ("pending", "running", "completed", "failed", "cancelled", "skipped")
MAX_LIMIT = 500


def _run_filters(request: web.Request) -> dict[str, Any]:
    return {
        "scope": scope(request),
        "status": choice_param(request, "status", RUN_STATUSES),
        "limit": int_param(request, "limit", 50, MAX_LIMIT),
    }


@routes.get("/api/runs", name="api_runs")
async def api_runs(request: web.Request) -> web.Response:
    runs = await queries.recent_runs(request.app[POOL], **_run_filters(request))
    return web.json_response({"runs": runs})


@routes.get("/api/stats", name="api_stats")
async def api_stats(request: web.Request) -> web.Response:
    stats = await queries.delivery_stats(
        request.app[POOL], scope=scope(request), hours=int_param(request, "hours", 24, 24 * 366))
    return web.json_response(stats)


@routes.get("/runs", name="runs")
@aiohttp_jinja2.template("runs.html")
async def runs_page(request: web.Request) -> dict[str, Any]:
    filters = _run_filters(request)
    return {"runs": await queries.recent_runs(request.app[POOL], **filters),
            "filters": {**filters, "tenant": request.query.get("tenant") or None}, "statuses": RUN_STATUSES}


@routes.get("/runs/table", name="runs_table")
@aiohttp_jinja2.template("runs_table.html")
async def runs_table(request: web.Request) -> dict[str, Any]:
    return {"runs": await queries.recent_runs(request.app[POOL], **_run_filters(request))}
