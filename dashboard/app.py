"""The dashboard: recent runs (page and JSON) and health, over aiohttp + aiohttp-jinja2."""

from __future__ import annotations

import asyncio
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

from config.database import DATABASE_ERRORS, create_pool
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
HEALTH_CHECKS = ("database", "redis", "daemon", "workers", "outbox", "queues", "dead_letters",
                 "stuck_steps")
# /health answers within about this long even when a server hangs.
HEALTH_TIMEOUT_S = 2.0


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


def _database_down(error: str) -> dict[str, dict[str, Any]]:
    unknown = {"ok": False, "error": "database unavailable"}
    return {"database": {"ok": False, "error": error},
            **{name: dict(unknown) for name in ("daemon", "workers", "outbox", "stuck_steps")}}


async def _database_checks(pool: asyncpg.Pool, settings: Settings) -> dict[str, dict[str, Any]]:
    """database, daemon, workers, outbox and stuck_steps: one connection, a query each."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S), pool.acquire() as conn:
            beats = await queries.heartbeats(conn, liveness_s=settings.liveness_s)
            outbox = await queries.outbox_backlog(conn)
            stuck = await queries.stuck_steps(
                conn, liveness_s=settings.liveness_s, lease_s=settings.lease_s)
    except (*DATABASE_ERRORS, TimeoutError) as exc:
        # The type only: driver messages can name hosts, and never belong on a public page.
        log.warning("health: database check failed", error=type(exc).__name__)
        return _database_down(type(exc).__name__)
    oldest = outbox["oldest_s"]
    daemons, workers = beats["daemon"], beats["worker"]
    return {
        "database": {"ok": True, "elapsed_ms": round((time.monotonic() - started) * 1000, 2)},
        "daemon": {"ok": daemons["live"] > 0, "live": daemons["live"], "stale": daemons["stale"],
                   "liveness_s": settings.liveness_s, "instances": daemons["processes"]},
        "workers": {"ok": workers["live"] > 0, "live": workers["live"], "stale": workers["stale"],
                    "liveness_s": settings.liveness_s, "processes": workers["processes"]},
        "outbox": {
            "ok": outbox["unmatched"] <= settings.health_backlog
                  and (oldest is None or oldest <= settings.health_outbox_lag_s),
            "unmatched": outbox["unmatched"], "pending": outbox["pending"],
            "dispatched": outbox["dispatched"],
            "oldest_unmatched_s": None if oldest is None else round(oldest, 1),
            "max_unmatched": settings.health_backlog, "max_lag_s": settings.health_outbox_lag_s,
        },
        "stuck_steps": {"ok": stuck["total"] <= settings.health_stuck_steps,
                        "max": settings.health_stuck_steps, **stuck},
    }


async def _redis_checks(client: aioredis.Redis, settings: Settings) -> dict[str, dict[str, Any]]:
    """redis, queues and dead_letters from one pipelined round trip."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            depths = await queries.queue_depths(client, QUEUES)
    except (aioredis.RedisError, OSError, TimeoutError) as exc:
        log.warning("health: redis check failed", error=type(exc).__name__)
        unknown = {"ok": False, "error": "redis unavailable"}
        return {"redis": {"ok": False, "error": type(exc).__name__},
                "queues": dict(unknown), "dead_letters": dict(unknown)}
    queues = depths["queues"]
    over = [queue for queue, depth in queues.items() if depth["ready"] > settings.health_queue_depth]
    dead = {queue: depth["dead"] for queue, depth in queues.items() if depth["dead"]}
    return {
        "redis": {"ok": True, "round_trip_ms": depths["round_trip_ms"]},
        "queues": {"ok": not over, "over_max": over, "max_ready": settings.health_queue_depth,
                   "depth": queues},
        "dead_letters": {"ok": sum(dead.values()) <= settings.health_dead_letters,
                         "total": sum(dead.values()), "max": settings.health_dead_letters,
                         "by_queue": dead},
    }


async def health(request: web.Request) -> web.Response:
    """Every check with its numbers; 503 naming the failing ones when any fails.

    The database and Redis are read concurrently, each within HEALTH_TIMEOUT_S,
    and one being down fails its checks without stopping the others.
    """
    settings = request.app[SETTINGS]
    from_db, from_redis = await asyncio.gather(
        _database_checks(request.app[POOL], settings), _redis_checks(request.app[REDIS], settings))
    found = {**from_db, **from_redis}
    checks = {name: found[name] for name in HEALTH_CHECKS}
    failing = [name for name, check in checks.items() if not check["ok"]]
    return web.json_response({"ok": not failing, "failing": failing, "checks": checks},
                             status=503 if failing else 200)


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
    app[REDIS] = aioredis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s,
                                         socket_connect_timeout=settings.redis_timeout_s)
    yield
    await app[REDIS].aclose()
    await app[POOL].close()
