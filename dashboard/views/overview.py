"""The overview: Herald's health in words, queue depths, throughput over the
last hour, failures of the last day, and which providers deliver.

Process health (database, Redis, daemons, workers, outbox, queues, stuck steps)
is shared by every tenant and says so; throughput and failures are the
viewer's tenants' only. Providers are named, never their keys or passwords.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from config.settings import Settings
from daemon.health import wal_capture_detail
from dashboard.auth import scope
from dashboard.charts import Series, line_chart
from dashboard.queries import overview as queries
from dashboard.resources import POOL, SETTINGS
from dashboard.views.health import checks

routes = web.RouteTableDef()

CHECK_TITLES = {
    "database": "Database", "redis": "Redis", "daemon": "Daemon", "workers": "Workers",
    "outbox": "Outbox", "wal_capture": "WAL capture", "queues": "Queues", "dead_letters": "Dead letters", "stuck_steps": "Stuck steps",
}


def duration(seconds: float | None) -> str:
    """3 s, 4 min 5 s, 2 h 3 min, 3 d 4 h: an age a person reads at a glance."""
    if seconds is None:
        return "–"
    whole = int(round(seconds))
    if whole < 60:
        return f"{seconds:.1f} s" if seconds < 10 and not float(seconds).is_integer() else f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def _processes(check: dict[str, Any], kind: str) -> str:
    if "live" not in check:
        return check.get("error", "unknown")
    text = f"{_plural(check['live'], kind)} live"
    if check["stale"]:
        text += f", {check['stale']} not heard from for over {duration(check['liveness_s'])}"
    return text


def describe(name: str, check: dict[str, Any]) -> str:
    """A health check's numbers as a sentence."""
    if "error" in check and name not in ("daemon", "workers"):
        return f"not checked: {check['error']}"
    if name == "database":
        return f"answered in {check['elapsed_ms']:g} ms"
    if name == "redis":
        return f"answered in {check['round_trip_ms']:g} ms"
    if name == "daemon":
        return _processes(check, "daemon")
    if name == "workers":
        return _processes(check, "worker")
    if name == "outbox":
        if not check["unmatched"]:
            return "every event matched"
        return (f"{_plural(check['unmatched'], 'event')} waiting to be matched"
                f" ({check['pending']} pending, {check['dispatched']} dispatched);"
                f" oldest unmatched event {duration(check['oldest_unmatched_s'])}")
    if name == "wal_capture":
        return wal_capture_detail(check)
    if name == "queues":
        waiting = sum(depth["ready"] for depth in check["depth"].values())
        text = f"{_plural(waiting, 'message')} waiting"
        if check["over_max"]:
            text += f"; over {check['max_ready']:,} in {', '.join(check['over_max'])}"
        return text
    if name == "dead_letters":
        if not check["total"]:
            return "no dead letters"
        return f"{_plural(check['total'], 'dead letter')} in " + ", ".join(check["by_queue"])
    if name == "stuck_steps":
        if not check["total"]:
            return "no stuck steps"
        return (f"{_plural(check['unknown_last_24h'], 'step')} of unknown outcome in the last 24 h,"
                f" {check['sending_stalled']} stalled while sending")
    return ""


def providers(settings: Settings) -> list[dict[str, str]]:
    """Which provider delivers each channel, and whether its credentials are set:
    names and yes/no only, never a key, password, token or URL."""
    email_ready = {
        "capture": "captures messages, sends nothing",
        "smtp": "credentials set" if settings.smtp_password else "no password set",
        "mailgun": "API key set" if settings.mailgun_api_key else "no API key set",
    }
    sms_ready = {
        "capture": "captures messages, sends nothing",
        "telnyx": "API key set" if settings.telnyx_api_key else "no API key set",
        "twilio": "auth token set" if settings.twilio_auth_token else "no auth token set",
    }
    allow = (_plural(len(settings.webhook_allowlist), "allowed host") if settings.webhook_allowlist
             else "any public host")
    webhook = "signed" if settings.webhook_signing_secret else "unsigned"
    webhook += f"; {allow}; private addresses {'allowed' if settings.webhook_allow_private else 'refused'}"
    return [
        {"channel": "email", "provider": settings.email_provider,
         "detail": email_ready.get(settings.email_provider, "")},
        {"channel": "sms", "provider": settings.sms_provider,
         "detail": sms_ready.get(settings.sms_provider, "")},
        {"channel": "webhook", "provider": "HTTP", "detail": webhook},
    ]


def throughput_chart(minutes: list[dict[str, Any]]) -> Any:
    labels = [dt.datetime.fromisoformat(row["minute"]).strftime("%H:%M") for row in minutes]
    series = [Series(name, [row[key] for row in minutes])
              for key, name in (("events", "events"), ("runs", "runs"), ("messages", "messages"))]
    totals = ", ".join(f"{sum(row[key] for row in minutes):,} {key}" for key in ("events", "runs", "messages"))
    return line_chart(labels, series, title="Events, runs and messages per minute, last hour (UTC)",
                      aria_label=f"Throughput per minute over the last hour: {totals}",
                      y_label="per minute", x_label="minute (UTC)")


async def _tenant_numbers(request: web.Request) -> dict[str, Any]:
    tenants = scope(request)
    pool = request.app[POOL]
    minutes = await queries.throughput(pool, scope=tenants)
    return {"throughput": minutes, "failures": await queries.failures(pool, scope=tenants)}


@routes.get("/", name="overview")
@aiohttp_jinja2.template("overview.html")
async def overview(request: web.Request) -> dict[str, Any]:
    found = await checks(request)
    numbers = await _tenant_numbers(request)
    minutes = numbers["throughput"]
    return {
        "checks": [{"name": name, "title": CHECK_TITLES.get(name, name), "ok": check["ok"],
                    "text": describe(name, check)} for name, check in found.items()],
        "queues": found["queues"].get("depth"),
        "throughput": minutes,
        "totals": {key: sum(row[key] for row in minutes) for key in ("events", "runs", "messages")},
        "chart": throughput_chart(minutes),
        "failures": numbers["failures"],
        "providers": providers(request.app[SETTINGS]),
        "tenant": request.query.get("tenant") or None,
    }


@routes.get("/api/overview", name="api_overview")
async def api_overview(request: web.Request) -> web.Response:
    """The viewer's throughput per minute over the last hour and failures of the
    last 24 hours (process health is /health)."""
    numbers = await _tenant_numbers(request)
    return web.json_response({"tenants": scope(request), **numbers})
