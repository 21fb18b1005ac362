"""Who may do what on the dashboard: every route × every role × own and other
tenant, with and without a session, with and without the CSRF token.

ROUTES lists every route the dashboard serves with the least role it needs and
how to fill its path for a tenant's things; a route added without a line here
fails the first test, so none escapes the matrix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from config.settings import Settings
from daemon.accounts import create_token
from daemon.demo import load_demo
from dashboard.app import create_app
from dashboard.auth import route_role
from tests.dashboard_support import failed_run, make_user, parked_run, sign_in

TENANTS = ("1", "2")
ROLES = ("viewer", "support", "operator", "admin")


@dataclass
class Things:
    """One tenant's things that have a page: ids for the routes' paths."""

    run: int
    step: int  # a step parked as unknown
    event: int
    workflow: str
    group: str  # the failures page's key of this tenant's group
    audit: int  # an audit entry of a retry of this tenant's run
    entity: str = "job"
    row_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Params = Callable[[Things], dict[str, Any]]
NONE: Params = lambda things: {}  # noqa: E731

# (method, path) -> (least role, the path's parameters for one tenant's things;
# None: the route has no tenant's thing in its path).
ROUTES: dict[tuple[str, str], tuple[str | None, Params | None]] = {
    ("GET", "/login"): (None, None),
    ("POST", "/login"): (None, None),
    ("GET", "/health"): (None, None),
    # No session: HERALD_METRICS_TOKEN, or loopback only (tests/integration/test_metrics_endpoint.py).
    ("GET", "/metrics"): (None, None),
    ("POST", "/logout"): ("viewer", None),
    ("POST", "/tenant"): ("viewer", None),
    ("GET", "/account"): ("viewer", None),
    ("POST", "/account/password"): ("viewer", None),
    ("GET", "/"): ("viewer", None),
    ("GET", "/api/overview"): ("viewer", None),
    ("GET", "/runs"): ("viewer", None),
    ("GET", "/runs/table"): ("viewer", None),
    ("GET", "/runs/rows"): ("viewer", None),
    ("GET", "/api/runs"): ("viewer", None),
    ("GET", "/api/stats"): ("viewer", None),
    ("GET", "/runs/{run_id}"): ("viewer", lambda t: {"run_id": t.run}),
    ("GET", "/api/runs/{run_id}"): ("viewer", lambda t: {"run_id": t.run}),
    ("POST", "/runs/{run_id}/retry"): ("support", lambda t: {"run_id": t.run}),
    ("POST", "/runs/{run_id}/cancel"): ("support", lambda t: {"run_id": t.run}),
    ("GET", "/records/{entity}/{row_id}"): ("viewer", lambda t: {"entity": t.entity, "row_id": t.row_id}),
    ("GET", "/events"): ("viewer", None),
    ("GET", "/api/events"): ("viewer", None),
    ("GET", "/events/{id}"): ("viewer", lambda t: {"id": t.event}),
    ("GET", "/api/events/{id}"): ("viewer", lambda t: {"id": t.event}),
    ("GET", "/failures"): ("viewer", None),
    ("GET", "/failures/group/{key}"): ("viewer", lambda t: {"key": t.group}),
    ("GET", "/failures/group/{key}/retry"): ("support", lambda t: {"key": t.group}),
    ("GET", "/failures/runs/{run_id}/retry"): ("support", lambda t: {"run_id": t.run}),
    ("POST", "/failures/retry"): ("support", None),
    ("GET", "/failures/retried/{audit_id}"): ("support", lambda t: {"audit_id": t.audit}),
    ("POST", "/failures/parked/{step_id}"): ("support", lambda t: {"step_id": t.step}),
    ("GET", "/workflows"): ("viewer", None),
    ("GET", "/api/workflows"): ("viewer", None),
    ("GET", "/workflows/captured"): ("viewer", None),
    ("GET", "/workflows/new"): ("operator", None),
    ("POST", "/workflows/new"): ("operator", None),
    ("GET", "/workflows/{id}"): ("viewer", lambda t: {"id": t.workflow}),
    ("POST", "/workflows/{id}/enable"): ("operator", lambda t: {"id": t.workflow}),
    ("POST", "/workflows/{id}/disable"): ("operator", lambda t: {"id": t.workflow}),
    ("GET", "/workflows/{id}/edit"): ("operator", lambda t: {"id": t.workflow}),
    ("POST", "/workflows/{id}/edit"): ("operator", lambda t: {"id": t.workflow}),
    ("GET", "/workflows/{id}/test"): ("operator", lambda t: {"id": t.workflow}),
    ("POST", "/workflows/{id}/test"): ("operator", lambda t: {"id": t.workflow}),
    ("GET", "/analytics"): ("viewer", None),
    ("GET", "/api/analytics"): ("viewer", None),
    ("GET", "/users"): ("admin", None),
    ("POST", "/users"): ("admin", None),
    ("POST", "/users/{user_id}"): ("admin", lambda t: {"user_id": t.extra["user"]}),
    ("POST", "/tokens/{token_id}/revoke"): ("admin", lambda t: {"token_id": t.extra["token"]}),
    ("GET", "/audit"): ("admin", None),
}

# Pages of one person's own doing: reached by whoever did it, a 404 for anyone else.
OWN_ONLY = {("GET", "/failures/retried/{audit_id}")}
# Writes whose allowed call would end the very session the matrix uses.
ENDS_THE_SESSION = {("POST", "/logout")}


def served_routes(app: web.Application) -> dict[tuple[str, str], Any]:
    return {(route.method, route.resource.canonical): route.handler for route in app.router.routes()
            if route.method != "HEAD" and not isinstance(route.resource, web.StaticResource)}


def test_every_route_is_in_the_matrix_with_the_role_it_declares(settings: Settings) -> None:
    served = served_routes(create_app(settings))
    assert set(served) == set(ROUTES), {"not in ROUTES": set(served) - set(ROUTES),
                                        "no longer served": set(ROUTES) - set(served)}
    declared = {key: route_role(handler) for key, handler in served.items()}
    assert declared == {key: role for key, (role, _) in ROUTES.items()}


def fill(path: str, params: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(params[m.group(1)]), path)


async def things_of(conn: asyncpg.Connection, client: TestClient, tenant: str) -> Things:
    run = await failed_run(conn, tenant, "step 2 (step-2, sms): client.phone is undefined")
    _, step, _ = await parked_run(conn, tenant)
    event = await conn.fetchrow("SELECT id, entity, row_id FROM herald.events e WHERE tenant_id = $1"
                                " AND EXISTS (SELECT 1 FROM herald.runs r WHERE r.event_id = e.id)"
                                " ORDER BY id LIMIT 1", tenant)
    workflow = await conn.fetchval("SELECT id::text FROM herald.workflows WHERE tenant_id = $1", tenant)
    page = await (await client.get("/failures", params={"window": "all", "tenant": tenant})).text()
    groups = re.findall(r'<tr data-group="([0-9a-f]+)"', page)
    assert groups, f"no failure group on tenant {tenant}'s page"
    audit = await conn.fetchval(
        "INSERT INTO herald.audit_log (actor, tenant_id, action, target) VALUES"
        " ('someone-else@example.com', $1, 'failures.retry', 'runs') RETURNING id", tenant)
    user = await conn.fetchval(
        "INSERT INTO herald.users (email, role, tenants, password_hash) VALUES ($1, 'viewer', $2, 'x')"
        " RETURNING id", f"other-{tenant}@example.com", [tenant])
    token, _ = await create_token(conn, tenant, f"reports of {tenant}", by="tests")
    return Things(run=run, step=step, event=event["id"], workflow=workflow, group=groups[0], audit=audit,
                  entity=event["entity"], row_id=event["row_id"], extra={"user": user, "token": token.id})


@pytest.fixture
async def world(settings: Settings, aiohttp_server: Any, aiohttp_client: Any,
                conn: asyncpg.Connection) -> dict[str, Any]:
    """Tenants 1 and 2 with a failed run, a parked step, events, a workflow, a failure
    group; a client signed in for each role (every role but admin sees tenant 1 only)."""
    await load_demo(conn)
    server = await aiohttp_server(create_app(settings))
    clients: dict[str, TestClient] = {}
    csrf: dict[str, str] = {}
    for role in ROLES:
        email = f"{role}@example.com"
        await make_user(conn, email, role, () if role == "admin" else ("1",))
        clients[role] = await aiohttp_client(server)
        csrf[role] = await sign_in(clients[role], email)
    things = {tenant: await things_of(conn, clients["admin"], tenant) for tenant in TENANTS}
    anonymous = await aiohttp_client(server)
    return {"clients": clients, "csrf": csrf, "things": things, "anonymous": anonymous}


async def call(client: TestClient, method: str, url: str, csrf: str | None) -> tuple[int, str]:
    data = {"csrf_token": csrf} if csrf is not None else {}
    response = await client.request(method, url, data=data if method == "POST" else None, allow_redirects=False)
    return response.status, await response.text()


def urls(key: tuple[str, str], things: dict[str, Things]) -> dict[str, str]:
    """The route's URL for each tenant's things (the same URL twice when it takes none)."""
    _, params = ROUTES[key]
    return {tenant: fill(key[1], params(things[tenant]) if params else {}) for tenant in TENANTS}


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_reaches_what_it_may_and_is_refused_the_rest(world: dict[str, Any], role: str) -> None:
    """For a user of tenant 1 (an admin: every tenant): a route above their role is a
    403, any other answers without a server error; another tenant's thing is a 404."""
    client, csrf, things = world["clients"][role], world["csrf"][role], world["things"]
    rank = ROLES.index(role)
    problems = []
    for key, (needs, params) in ROUTES.items():
        if needs is None or key in ENDS_THE_SESSION:
            continue
        method = key[0]
        own, other = urls(key, things)["1"], urls(key, things)["2"]
        status, text = await call(client, method, own, csrf)
        if ROLES.index(needs) > rank:
            if status != 403:
                problems.append(f"{role} {method} {own}: {status}, expected 403")
            continue
        allowed = (200, 303) if method == "GET" else (200, 303, 400, 409)
        if key in OWN_ONLY:
            allowed = (404,)
        if status not in allowed:
            problems.append(f"{role} {method} {own}: {status}, expected one of {allowed}: {text[:200]}")
        if params is not None and role != "admin":
            status, text = await call(client, method, other, csrf)
            if status != 404:
                problems.append(f"{role} {method} {other} (tenant 2's): {status}, expected 404")
            elif "tenant 2" in text or "maria" in text:
                problems.append(f"{role} {method} {other}: the 404 tells what it refused")
    assert not problems, "\n".join(problems)


async def test_a_post_without_the_csrf_token_is_refused_everywhere(world: dict[str, Any],
                                                                   conn: asyncpg.Connection) -> None:
    before = await conn.fetchval("SELECT count(*) FROM herald.audit_log")
    admin, things = world["clients"]["admin"], world["things"]
    for key, (needs, _) in ROUTES.items():
        if key[0] != "POST" or needs is None:
            continue
        for url in set(urls(key, things).values()):
            status, _ = await call(admin, "POST", url, None)
            assert status == 403, (url, status)
            status, _ = await call(admin, "POST", url, "not-the-token")
            assert status == 403, (url, status)
    assert await conn.fetchval("SELECT count(*) FROM herald.audit_log") == before  # nothing was done
    assert (await admin.get("/account")).status == 200  # and the session still works


async def test_without_a_session_pages_send_to_sign_in_and_the_api_says_401(world: dict[str, Any]) -> None:
    anonymous, things = world["anonymous"], world["things"]
    for key, (needs, _) in ROUTES.items():
        if needs is None:
            continue
        url = urls(key, things)["1"]
        status, _ = await call(anonymous, key[0], url, None)
        expected = 303 if key[0] == "GET" and not url.startswith("/api/") else 401
        assert status == expected, (key, url, status)


async def test_an_api_token_reads_its_tenants_api_and_nothing_else(
    world: dict[str, Any], conn: asyncpg.Connection
) -> None:
    _, secret = await create_token(conn, "1", "matrix", by="tests")
    anonymous, things = world["anonymous"], world["things"]
    headers = {"Authorization": f"Bearer {secret}"}
    for key, (needs, params) in ROUTES.items():
        if needs is None:
            continue
        own, other = urls(key, things)["1"], urls(key, things)["2"]
        response = await anonymous.request(key[0], own, headers=headers, allow_redirects=False)
        if own.startswith("/api/") and key[0] == "GET":
            assert response.status == 200, (own, response.status)
            if params is not None:
                refused = await anonymous.get(other, headers=headers, allow_redirects=False)
                assert refused.status == 404, (other, refused.status)
        else:
            assert response.status in (303, 401), (key, response.status)  # a token is no session
