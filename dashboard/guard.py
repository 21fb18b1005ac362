"""What every request passes first: the Host check (DNS rebinding), query
parameters free of control characters, security headers on every response,
and error pages: HTML for people, JSON for /api/*.

The dashboard answers only to the host names it is reached by: its own address,
the loopback names (127.0.0.1, localhost, ::1) on its own port, and
HERALD_DASHBOARD_ALLOWED_HOSTS. Any other ``Host`` header is refused, so a web
page the operator visits cannot read the dashboard by pointing a name of its
own at 127.0.0.1.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import structlog
from aiohttp import hdrs, web

from config.errors import HeraldError
from config.settings import Settings

log = structlog.get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
# Who is asking (a dashboard.auth.Viewer), once sign-in has been checked.
VIEWER = web.RequestKey("viewer", object)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# Addresses to listen on, not names anyone reaches the dashboard by.
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::", "*")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                                " connect-src 'self'; object-src 'none'; base-uri 'none';"
                                " form-action 'self'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Server": "Herald",  # aiohttp's default names its own version and Python's
}


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


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, errors and static files included; pages are never cached."""
    response.headers.update(SECURITY_HEADERS)
    if request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "public, max-age=3600"


def wants_json(request: web.Request) -> bool:
    """/api/* and /health answer in JSON, and so does anyone asking for it."""
    return (request.path.startswith("/api/") or request.path == "/health"
            or "application/json" in request.headers.get("Accept", "").split(";")[0])


ERROR_TITLES = {400: "That request is not valid", 401: "Sign in first", 403: "Not allowed",
                404: "Not found", 405: "Not allowed", 409: "Already changed", 413: "Too large", 500: "Something went wrong"}


def error_response(request: web.Request, status: int, message: str) -> web.StreamResponse:
    if wants_json(request):
        return web.json_response({"error": message, "status": status}, status=status)
    import aiohttp_jinja2

    title = ERROR_TITLES.get(status, "Error")
    who = request.get(VIEWER)  # signed in: the page keeps its header
    return aiohttp_jinja2.render_template("error.html", request, {
        "status": status, "title": title, "message": message, "viewer": who, "request": request,
        "csrf_token": getattr(who, "csrf", None) or "", "tenant_choices": list(getattr(who, "allowed", None) or ())},
        status=status)


@web.middleware
async def error_pages(request: web.Request, handler: Any) -> web.StreamResponse:
    """Errors become a page a person can read (HTML) or a JSON body for the API;
    domain errors a 500 whose details go to the log, never secrets."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.empty_body:
            raise
        text = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        response = error_response(request, exc.status, text or exc.reason)
        for name in ("Allow", "WWW-Authenticate", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except HeraldError as exc:
        log.error("request failed", path=request.path, error=str(exc))
        return error_response(request, 500, f"Herald error: {type(exc).__name__}. The dashboard's log has the details.")
