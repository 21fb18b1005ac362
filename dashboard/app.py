"""The dashboard: aiohttp + aiohttp-jinja2, server-rendered, assets vendored.

Requests pass the Host and input guard, then error pages, then sign-in (see
dashboard.auth: sessions, API tokens, roles, tenants, CSRF). Each page is a
module of dashboard.views with its own ``routes``.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from config.settings import Settings
from dashboard import auth
from dashboard.guard import SETTINGS, error_pages, guard, security_headers
from dashboard.log_context import request_log_context
from dashboard.resources import POOL, resources
from dashboard.views import VIEW_MODULES, account

HERE = Path(__file__).parent


def moment(value: Any) -> Markup:
    """A time for people: ``<time datetime=ISO>`` in UTC, which the page's script
    shows in the reader's own time zone (with the zone named)."""
    if value is None or value == "":
        return Markup("–")
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return Markup(escape(value))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    utc = value.astimezone(dt.UTC)
    return Markup('<time datetime="{}">{} UTC</time>').format(
        utc.isoformat(), utc.strftime("%Y-%m-%d %H:%M:%S"))


def create_app(settings: Settings) -> web.Application:
    # aiohttp-jinja2 keeps its per-request template context under a string key.
    warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_jinja2")
    app = web.Application(middlewares=[request_log_context, guard, error_pages, auth.make_middleware(POOL, SETTINGS)],
                          client_max_size=2 * 1024 * 1024)
    app[SETTINGS] = settings
    app.on_response_prepare.append(security_headers)
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        context_processors=[account.template_context, aiohttp_jinja2.request_processor],
        undefined=jinja2.StrictUndefined,
    )
    env.filters["moment"] = moment
    app.cleanup_ctx.append(resources)
    for module in VIEW_MODULES:
        app.add_routes(module.routes)
    app.router.add_static("/static", HERE / "static", name="static")
    return app
