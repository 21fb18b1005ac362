"""The dashboard: recent runs (page and JSON) and health, over aiohttp + aiohttp-jinja2."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import asyncpg
import jinja2
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from config.database import create_pool
from config.errors import HeraldError
from config.settings import Settings
from dashboard import queries

log = structlog.get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)

QUEUES = ("match", "enrich", "email", "sms", "webhook", "records")
RUN_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
MAX_LIMIT = 500
# A daemon that has not beaten for this long is considered down.
HEARTBEAT_STALE_S = 30.0


def _int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
    if not 1 <= value <= maximum:
        raise web.HTTPBadRequest(text=f"{name} must be between 1 and {maximum}")
    return value


def _run_filters(request: web.Request) -> dict[str, Any]:
    status = request.query.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise web.HTTPBadRequest(text=f"status must be one of {', '.join(RUN_STATUSES)}")
    return {
        "tenant": request.query.get("tenant") or None,
        "status": status,
        "limit": _int_param(request, "limit", 50, MAX_LIMIT),
    }


async def api_runs(request: web.Request) -> web.Response:
    runs = await queries.recent_runs(request.app[POOL], **_run_filters(request))
    return web.json_response({"runs": runs})


async def api_stats(request: web.Request) -> web.Response:
    stats = await queries.delivery_stats(
        request.app[POOL], tenant=request.query.get("tenant") or None,
        hours=_int_param(request, "hours", 24, 24 * 366))
    return web.json_response(stats)


@aiohttp_jinja2.template("runs.html")
async def runs_page(request: web.Request) -> dict[str, Any]:
    filters = _run_filters(request)
    return {"runs": await queries.recent_runs(request.app[POOL], **filters), "filters": filters,
            "statuses": RUN_STATUSES}


@aiohttp_jinja2.template("runs_table.html")
async def runs_table(request: web.Request) -> dict[str, Any]:
    return {"runs": await queries.recent_runs(request.app[POOL], **_run_filters(request))}


async def health(request: web.Request) -> web.Response:
    """Each check with its detail; 503 when any is failing."""
    checks: dict[str, dict[str, Any]] = {}
    pool = request.app[POOL]
    try:
        backlog = await pool.fetchrow(queries.OUTBOX_BACKLOG)
        daemons = await pool.fetch(queries.LIVE_DAEMONS)
        checks["database"] = {"ok": True}
        live = [d for d in daemons if d["age_s"] <= HEARTBEAT_STALE_S]
        checks["daemon"] = {
            "ok": bool(live),
            "instances": [{"instance": d["instance"], "seconds_since_heartbeat": round(d["age_s"], 1)}
                          for d in daemons],
        }
        checks["outbox"] = {
            "ok": True, "pending": backlog["pending"], "dispatched": backlog["dispatched"],
            "oldest_unmatched_s": round(backlog["oldest_s"] or 0, 1),
        }
    except (asyncpg.PostgresError, OSError) as exc:
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    try:
        client = request.app[REDIS]
        started = time.monotonic()
        await client.ping()
        depth = {queue: await client.llen(f"dramatiq:{queue}") for queue in QUEUES}
        checks["redis"] = {"ok": True, "ping_ms": round((time.monotonic() - started) * 1000, 2)}
        checks["queues"] = {"ok": True, "depth": depth}
    except (aioredis.RedisError, OSError) as exc:
        checks["redis"] = {"ok": False, "error": type(exc).__name__}
    healthy = all(check["ok"] for check in checks.values())
    return web.json_response({"ok": healthy, "checks": checks}, status=200 if healthy else 503)


@web.middleware
async def error_pages(request: web.Request, handler: Any) -> web.StreamResponse:
    """Domain errors become a clear 500 page; details go to the log, never secrets."""
    try:
        return await handler(request)
    except HeraldError as exc:
        log.error("request failed", path=request.path, error=str(exc))
        raise web.HTTPInternalServerError(text=f"Herald error: {type(exc).__name__}") from None


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_pages])
    app[SETTINGS] = settings
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/", runs_page, name="runs")
    app.router.add_get("/runs/table", runs_table, name="runs_table")
    app.router.add_get("/api/runs", api_runs, name="api_runs")
    app.router.add_get("/api/stats", api_stats, name="api_stats")
    app.router.add_get("/health", health, name="health")
    app.router.add_static("/static", Path(__file__).parent / "static", name="static")
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[POOL] = await create_pool(settings.database_url, min_size=1, max_size=5)
    app[REDIS] = aioredis.Redis.from_url(settings.redis_url)
    yield
    await app[REDIS].aclose()
    await app[POOL].close()
