"""Users, API tokens and the audit log: for admins.

Admins add users with a first password they pass on themselves, change roles
and tenants, disable, enable and reset passwords; every change ends the user's
sessions and is audited. API tokens are listed and revoked here; a new token is
made with `herald tokens add`, which shows it once (a page never shows one).
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from daemon import accounts
from dashboard.auth import requires, viewer
from dashboard.params import int_param, parse_id
from dashboard.resources import POOL

routes = web.RouteTableDef()

DONE = {"added": "User added.", "role": "Role changed; their sessions ended.",
        "tenants": "Tenants changed; their sessions ended.", "disabled": "User disabled; their sessions ended.",
        "enabled": "User enabled.", "password": "Password reset; their sessions ended.",
        "revoked": "Token revoked."}

AUDIT = """
SELECT id, at, actor, tenant_id, action, target, reason, detail FROM herald.audit_log
WHERE ($1::bigint IS NULL OR id < $1)
ORDER BY id DESC LIMIT $2
"""


@routes.get("/users", name="users")
@requires("admin")
@aiohttp_jinja2.template("users.html")
async def users_page(request: web.Request) -> dict[str, Any]:
    return await _context(request)


async def _context(request: web.Request) -> dict[str, Any]:
    async with request.app[POOL].acquire() as conn:
        users = await accounts.list_users(conn)
        tokens = await accounts.list_tokens(conn)
    return {"users": users, "tokens": tokens, "roles": accounts.ROLES, "role_help": accounts.ROLE_HELP,
            "done": DONE.get(request.query.get("done", "")), "error": None, "form": {}}


async def _users_page_with_error(request: web.Request, error: str, form: dict[str, str]) -> web.Response:
    context = await _context(request)
    context.update(error=error, form=form)
    return aiohttp_jinja2.render_template("users.html", request, context, status=400)


def _tenants(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.replace("\n", ",").split(",") if part.strip())


@routes.post("/users", name="add_user")
@requires("admin")
async def add_user(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    fields = {name: str(form.get(name, ""))[:2000] for name in ("email", "name", "role", "tenants")}
    async with request.app[POOL].acquire() as conn:
        try:
            await accounts.add_user(conn, fields["email"], role=fields["role"], password=str(form.get("password", "")),
                                    tenants=_tenants(fields["tenants"]), name=fields["name"] or None,
                                    by=viewer(request).actor)
        except accounts.AccountError as exc:
            return await _users_page_with_error(request, str(exc), fields)
    raise web.HTTPSeeOther("/users?done=added")


@routes.post("/users/{user_id:\\d+}", name="change_user")
@requires("admin")
async def change_user(request: web.Request) -> web.StreamResponse:
    """One change per form: role, tenants, disable, enable or password."""
    form = await request.post()
    change = str(form.get("change", ""))
    who = viewer(request).actor
    async with request.app[POOL].acquire() as conn:
        user = await accounts.user_by_id(conn, int_param_path(request, "user_id"))
        if user is None:
            raise web.HTTPNotFound()
        try:
            if change == "role":
                await accounts.set_role(conn, user.email, str(form.get("role", "")), by=who)
            elif change == "tenants":
                await accounts.set_tenants(conn, user.email, _tenants(str(form.get("tenants", ""))), by=who)
            elif change in ("disabled", "enabled"):
                await accounts.set_disabled(conn, user.email, change == "disabled", by=who)
            elif change == "password":
                await accounts.reset_password(conn, user.email, str(form.get("password", "")), by=who)
            else:
                raise web.HTTPBadRequest(text="change must be role, tenants, disabled, enabled or password")
        except accounts.AccountError as exc:
            return await _users_page_with_error(request, f"{user.email}: {exc}", {})
    raise web.HTTPSeeOther(f"/users?done={change}")


@routes.post("/tokens/{token_id:\\d+}/revoke", name="revoke_token")
@requires("admin")
async def revoke_token(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL].acquire() as conn:
        try:
            await accounts.revoke_token(conn, int_param_path(request, "token_id"), by=viewer(request).actor)
        except accounts.AccountError:
            raise web.HTTPNotFound() from None
    raise web.HTTPSeeOther("/users?done=revoked")


@routes.get("/audit", name="audit")
@requires("admin")
@aiohttp_jinja2.template("audit.html")
async def audit_page(request: web.Request) -> dict[str, Any]:
    before = request.query.get("before")
    before_id = int_param(request, "before", 0, 2**63 - 1) if before else None
    rows = await request.app[POOL].fetch(AUDIT, before_id, 100)
    return {"entries": rows, "next_before": rows[-1]["id"] if len(rows) == 100 else None}


def int_param_path(request: web.Request, name: str) -> int:
    value = parse_id(request.match_info[name])
    if value is None:
        raise web.HTTPNotFound()
    return value
