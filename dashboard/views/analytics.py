"""Analytics: runs per workflow and UTC day (outcomes, success rate, p50/p95
duration, retries), messages per channel and provider, with server-drawn charts;
the page and /api/analytics."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from dashboard.auth import scope, viewer
from dashboard.charts import Series, line_chart, stacked_bars
from dashboard.params import int_param
from dashboard.queries import analytics as queries
from dashboard.resources import POOL

routes = web.RouteTableDef()

STATUS_COLOURS = (("completed", "#15803d"), ("failed", "#b91c1c"), ("skipped", "#6b7280"),
                  ("cancelled", "#a16207"), ("unfinished", "#2456c9"))


async def _analytics(request: web.Request) -> dict[str, Any]:
    days = int_param(request, "days", 7, queries.MAX_DAYS)
    return await queries.analytics(request.app[POOL], scope=scope(request), days=days)


def charts(found: dict[str, Any]) -> dict[str, Any]:
    per_day = found["per_day"]
    labels = [day["day"][5:] for day in per_day]  # MM-DD
    runs = stacked_bars(
        labels, [Series(status, [day[status] for day in per_day], colour) for status, colour in STATUS_COLOURS],
        title=f"Runs per UTC day by outcome, last {found['days']} days",
        aria_label=f"Runs per day by outcome over the last {found['days']} UTC days:"
                   f" {found['totals']['runs']:,} runs in all",
        y_label="runs", x_label="day (UTC)")
    p95 = line_chart(
        labels, [Series("p95", [day["p95_ms"] for day in per_day], "#c2410c"),
                 Series("p50", [day["p50_ms"] for day in per_day], "#2456c9")],
        title=f"Run duration per UTC day (p50 and p95, ms), last {found['days']} days",
        aria_label=f"Run duration per day over the last {found['days']} UTC days: p95 overall"
                   f" {found['totals']['p95_ms'] if found['totals']['p95_ms'] is not None else 'none'} ms",
        y_label="ms", x_label="day (UTC)")
    return {"runs": runs, "duration": p95}


@routes.get("/api/analytics", name="api_analytics")
async def api_analytics(request: web.Request) -> web.Response:
    return web.json_response(await _analytics(request))


@routes.get("/analytics", name="analytics")
@aiohttp_jinja2.template("analytics.html")
async def analytics_page(request: web.Request) -> dict[str, Any]:
    found = await _analytics(request)
    who = viewer(request)
    return {"a": found, "charts": charts(found), "day_choices": (1, 7, 14, 30, 90),
            "tenant": request.query.get("tenant") or "",
            "many_tenants": who.scope is None or len(who.scope) > 1}
