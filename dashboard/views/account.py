"""Signing in and out, and choosing the tenant to look at."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from daemon.accounts import (
    AccountError,
    LoginRefused,
    audit,
    authenticate,
    count_users,
    reset_password,
)
from dashboard.auth import (
    SESSION_COOKIE,
    choose_tenant,
    csrf_ok,
    end_session,
    public,
    secure_cookies,
    set_session_cookie,
    start_session,
    viewer,
)
from dashboard.queries.tenants import known_tenants
from dashboard.resources import POOL, SETTINGS

routes = web.RouteTableDef()

# Before there is a session, the login form's CSRF token is a random cookie the
# form repeats (double submit): another site can neither read nor set it.
LOGIN_COOKIE = "herald_login"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this dashboard, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@routes.get("/login", name="login")
@public
async def login_page(request: web.Request) -> web.StreamResponse:
    return await _login_form(request, error=None, email="")


async def _login_form(request: web.Request, *, error: str | None, email: str, status: int = 200) -> web.StreamResponse:
    async with request.app[POOL].acquire() as conn:
        no_users = await count_users(conn) == 0
    token = secrets.token_urlsafe(24)
    response = aiohttp_jinja2.render_template("login.html", request, {
        "error": error, "email": email, "login_token": token, "no_users": no_users,
        "next": safe_next(request.query.get("next")), "viewer": None}, status=status)
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/login", httponly=True, samesite="Strict",
                        secure=secure_cookies(request))
    return response


@routes.post("/login")
@public
async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    email = str(form.get("email", ""))[:320]
    if not csrf_ok(request.cookies.get(LOGIN_COOKIE), str(form.get("csrf_token", ""))):
        return await _login_form(request, error="The login form expired: try again.", email=email, status=403)
    settings = request.app[SETTINGS]
    client = request.remote or "unknown"
    async with request.app[POOL].acquire() as conn:
        try:
            user = await authenticate(conn, email, str(form.get("password", "")), client=client)
        except LoginRefused as refused:
            await audit(conn, email.strip().lower() or "(no address)", "login.refused", detail={"client": client})
            return await _login_form(request, error=refused.message, email=email, status=401)
        # A new session at every login; the one the browser had (if any) ends.
        await end_session(conn, request.cookies.get(SESSION_COOKIE))
        token = await start_session(conn, user, settings)
        await audit(conn, user.email, "login", detail={"client": client})
    response = web.HTTPSeeOther(safe_next(str(form.get("next", "")) or request.query.get("next")))
    set_session_cookie(request, response, token, settings)
    response.del_cookie(LOGIN_COOKIE, path="/login")
    raise response


@routes.post("/logout", name="logout")
async def logout(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL].acquire() as conn:
        await end_session(conn, request.cookies.get(SESSION_COOKIE))
        await audit(conn, viewer(request).actor, "logout")
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


@routes.post("/tenant", name="choose_tenant")
async def tenant(request: web.Request) -> web.StreamResponse:
    """Look at one tenant, or (``tenant`` empty) at every tenant one sees."""
    form = await request.post()
    chosen = str(form.get("tenant", "")) or None
    who = viewer(request)
    if chosen is not None and who.allowed is not None and chosen not in who.allowed:
        raise web.HTTPNotFound()
    async with request.app[POOL].acquire() as conn:
        await choose_tenant(conn, request.cookies[SESSION_COOKIE], chosen)
    raise web.HTTPSeeOther(safe_next(str(form.get("next", ""))))


async def template_context(request: web.Request) -> dict[str, Any]:
    """What every page's layout shows: who is signed in, their tenants, the CSRF token."""
    from dashboard.auth import VIEWER

    who = request.get(VIEWER)
    if who is None:
        return {"viewer": None, "csrf_token": "", "tenant_choices": []}
    choices: list[str] = list(who.allowed or ())
    if who.allowed is None:
        async with request.app[POOL].acquire() as conn:
            choices = await known_tenants(conn)
    return {"viewer": who, "csrf_token": who.csrf or "", "tenant_choices": choices}


@routes.get("/account", name="account")
@aiohttp_jinja2.template("account.html")
async def account_page(request: web.Request) -> dict[str, Any]:
    return {"done": request.query.get("done") == "password", "error": None}


@routes.post("/account/password", name="change_password")
async def change_password(request: web.Request) -> web.StreamResponse:
    """A user changes their own password: the current one first; every other session ends."""
    form = await request.post()
    who = viewer(request)
    if who.user is None:
        raise web.HTTPNotFound()
    async with request.app[POOL].acquire() as conn:
        try:
            await authenticate(conn, who.user.email, str(form.get("current", "")), client=request.remote or "unknown")
            await reset_password(conn, who.user.email, str(form.get("password", "")), by=who.actor)
        except (LoginRefused, AccountError) as exc:
            message = exc.message if isinstance(exc, LoginRefused) else str(exc)
            return aiohttp_jinja2.render_template("account.html", request, {"done": False, "error": message},
                                                  status=400)
        # reset_password ended every session, this one too: start a fresh one.
        token = await start_session(conn, who.user, request.app[SETTINGS])
    response = web.HTTPSeeOther("/account?done=password")
    set_session_cookie(request, response, token, request.app[SETTINGS])
    raise response
