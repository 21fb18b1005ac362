"""The dashboard's request log context: each request's lines carry its request id,
method, path and, once signed in, the user and tenant; nothing of one request is
left bound for the next request on the same kept-alive connection."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from dashboard.log_context import REQUEST_ID_HEADER, bind_viewer, request_log_context


async def bound_now(request: web.Request) -> web.Response:
    """What a log line written here would carry; signs "in" when asked to."""
    if "who" in request.query:
        bind_viewer(request.query["who"], request.query.get("tenant"))
    return web.json_response(structlog.contextvars.get_contextvars())


async def test_each_request_binds_its_own_ids_and_leaves_none_behind(aiohttp_client: Any) -> None:
    app = web.Application(middlewares=[request_log_context])
    app.router.add_get("/here", bound_now)
    client = await aiohttp_client(app)

    first = await client.get("/here", params={"who": "ops@example.com", "tenant": "2"},
                             headers={REQUEST_ID_HEADER: "lb-1234"})
    assert await first.json() == {"request_id": "lb-1234", "method": "GET", "path": "/here",
                                  "user": "ops@example.com", "tenant_id": "2"}
    assert first.headers[REQUEST_ID_HEADER] == "lb-1234"

    # The same connection (kept alive), a request nobody signed in to: no user, no tenant.
    second = await client.get("/here", headers={REQUEST_ID_HEADER: "not a token\u00e9!"})
    bound = await second.json()
    assert set(bound) == {"request_id", "method", "path"}
    assert bound["request_id"] == second.headers[REQUEST_ID_HEADER] != "lb-1234"
    assert len(bound["request_id"]) == 16  # made here: the caller's was no token

    missing = await client.get("/nowhere")
    assert missing.status == 404 and missing.headers[REQUEST_ID_HEADER]
