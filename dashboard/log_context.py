"""Every log line written while the dashboard answers a request names the request.

A request id (the caller's ``X-Request-ID`` when it is a short token, such as
a load balancer's, otherwise a new one) and the method and path are bound for
the request, and the signed-in user and the tenant they look at once sign-in
has found them (:mod:`dashboard.auth`). aiohttp answers the requests of a
kept-alive connection one after another in one task, so the bindings are
cleared when each request ends: the next request on the connection starts
with none. The response carries the id back in ``X-Request-ID``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp import web

from config import log_context

REQUEST_ID_HEADER = "X-Request-ID"
# What a request id from outside may look like; anything else is replaced, not logged.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_of(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]


@web.middleware
async def request_log_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bind the request's id, method and path for its log lines; clear them after."""
    request_id = request_id_of(request)
    log_context.clear()
    log_context.bind(request_id=request_id, method=request.method, path=request.path)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        log_context.clear()


def bind_viewer(actor: str, tenant: str | None) -> None:
    """Once sign-in knows who asks: the user (or API token) and the tenant they look at."""
    log_context.bind(user=actor, tenant_id=tenant)
