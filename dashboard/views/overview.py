"""The overview: health checks at a glance."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from dashboard.views.health import checks

routes = web.RouteTableDef()


@routes.get("/", name="overview")
@aiohttp_jinja2.template("overview.html")
async def overview(request: web.Request) -> dict[str, Any]:
    return {"checks": await checks(request)}
