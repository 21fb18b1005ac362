"""The dashboard: recent runs (page and JSON) and health, over aiohttp + aiohttp-jinja2.

It answers only to the host names it is reached by: its own address, the
loopback names (127.0.0.1, localhost, ::1) on its own port, and
HERALD_DASHBOARD_ALLOWED_HOSTS. Any other ``Host`` header is refused, so a
web page the operator visits cannot read the dashboard by pointing a name of
its own at 127.0.0.1 (DNS rebinding). Every response carries headers that
keep browsers from framing it, sniffing types or running inline script.
"""

from __future__ import annotations

import asyncio
import time
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import asyncpg
import jinja2
import redis.asyncio as aioredis
import structlog
from aiohttp import hdrs, web

from config.database import DATABASE_ERRORS, create_pool
from config.errors import HeraldError
from config.settings import Settings
from dashboard import queries

log = structlog.get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)

QUEUES = ("match", "enrich", "email", "sms", "webhook", "records")
RUN_STATUSES = ("pending", "running", "completed", "failed", "cancelled", "skipped")
MAX_LIMIT = 500
HEALTH_CHECKS = ("database", "redis", "daemon", "workers", "outbox", "queues", "dead_letters",
                 "stuck_steps")
# /health answers within about this long even when a server hangs.
HEALTH_TIMEOUT_S = 2.0

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# Addresses to listen on, not names anyone reaches the dashboard by.
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::", "*")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self';"
                                " connect-src 'self'; object-src 'none'; base-uri 'none';"
                                " form-action 'self'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Server": "Herald",  # aiohttp's default names its own version and Python's
}


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


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"name:port"``, ``"name"``, ``"[::1]:8080"`` -> (lower-case host, port or None);
    None when it is no host[:port] at all."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = value.partition(":")
        port_text = port_text_ if colon else None
        if ":" in port_text_:
            return None
    if not host:
        return None
    if port_text is None:
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def _own_ports(request: web.Request, settings: Settings) -> set[int]:
    """The configured port and the one this request came in on (a test server's, or --port)."""
    ports = {settings.dashboard_port}
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[1], int):
        ports.add(sockname[1])
    return ports


def host_allowed(request: web.Request, settings: Settings) -> bool:
    """Whether the request's Host header names this dashboard (see the module's docstring)."""
    values = request.headers.getall(hdrs.HOST, [])
    if len(values) != 1:
        return False
    parsed = split_host(values[0])
    if parsed is None:
        return False
    host, port = parsed
    own = {name for name in (*LOOPBACK_NAMES, settings.dashboard_host.lower().strip("[]"))
           if name not in WILDCARD_ADDRESSES}
    if host in own and (80 if port is None else port) in _own_ports(request, settings):
        return True
    for entry in settings.dashboard_allowed_hosts:
        allowed = split_host(entry)
        if allowed is not None and allowed[0].rstrip(".") == host.rstrip(".") and (
                allowed[1] is None or allowed[1] == port):
            return True
    return False


def _control_characters(text: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Cs") or char in "\u2028\u2029" for char in text)


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse requests for another host name, and query parameters PostgreSQL (or a log
    line) should never see: NUL and other control characters."""
    if not host_allowed(request, request.app[SETTINGS]):
        log.warning("request for another host refused", path=request.path)
        raise web.HTTPBadRequest(text="Herald: this host name is not served here"
                                      " (see HERALD_DASHBOARD_ALLOWED_HOSTS)")
    for name, value in request.query.items():
        if _control_characters(name) or _control_characters(value):
            shown = name if name.isascii() and name.isidentifier() and len(name) <= 32 else "a query parameter"
            raise web.HTTPBadRequest(text=f"{shown} must not contain control characters")
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, errors and static files included."""
    response.headers.update(SECURITY_HEADERS)


@web.middleware
async def error_pages(request: web.Request, handler: Any) -> web.StreamResponse:
    """Domain errors become a clear 500 page; details go to the log, never secrets."""
    try:
        return await handler(request)
    except HeraldError as exc:
        log.error("request failed", path=request.path, error=str(exc))
        raise web.HTTPInternalServerError(text=f"Herald error: {type(exc).__name__}") from None


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[guard, error_pages])
    app[SETTINGS] = settings
    app.on_response_prepare.append(_security_headers)
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
