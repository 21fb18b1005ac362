"""Who is asking: sessions, API tokens, roles, tenants and CSRF.

Every route is for signed-in users unless marked :func:`public`, and needs the
role :func:`requires` gives it (viewer when not given). A page request without
a session is sent to /login; an /api/* request may instead carry
``Authorization: Bearer <token>`` for one tenant. Every POST made with a
session carries the session's CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``), or it is refused.

The session cookie is HttpOnly, SameSite=Strict and Secure (except on loopback
names over plain HTTP, which browsers treat as secure anyway), holds a random
token of which the database keeps only the sha256, is replaced at every login,
and ends after HERALD_SESSION_HOURS or HERALD_SESSION_IDLE_MINUTES unused.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import asyncpg
from aiohttp import web

from config.settings import Settings
from daemon.accounts import User, role_rank, token_for, token_hash, user_by_id
from dashboard.guard import VIEWER, wants_json
from dashboard.log_context import bind_viewer

SESSION_COOKIE = "herald_session"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Viewer:
    """The signed-in user (or API token) behind a request, and what they see."""

    actor: str  # for the audit log: the user's e-mail, or "token:<name>"
    role: str
    # Tenants they may see; None: every tenant (an admin).
    allowed: tuple[str, ...] | None
    # The tenant they chose to look at; None: all they may see.
    tenant: str | None
    csrf: str | None = None
    user: User | None = None

    @property
    def scope(self) -> list[str] | None:
        """Tenant ids for SQL (``$n::text[] IS NULL OR tenant_id = ANY($n)``); None: all tenants."""
        if self.tenant is not None:
            return [self.tenant]
        return None if self.allowed is None else list(self.allowed)

    def sees(self, tenant_id: str | None) -> bool:
        scope = self.scope
        return scope is None or tenant_id in scope

    def may(self, role: str) -> bool:
        return role_rank(self.role) >= role_rank(role)


def requires(role: str) -> Callable[[Handler], Handler]:
    """The least role a route's handler needs (403 for anyone below it)."""
    role_rank(role)

    def mark(handler: Handler) -> Handler:
        handler.herald_role = role  # type: ignore[attr-defined]
        return handler

    return mark


def public(handler: Handler) -> Handler:
    """A route anyone may reach: the login page, static files, /health."""
    handler.herald_public = True  # type: ignore[attr-defined]
    return handler


def route_role(handler: Any) -> str | None:
    """The role a route needs; None for a public route."""
    if getattr(handler, "herald_public", False):
        return None
    return getattr(handler, "herald_role", "viewer")


def viewer(request: web.Request) -> Viewer:
    return request[VIEWER]  # type: ignore[return-value]


def require(request: web.Request, role: str) -> Viewer:
    """The request's viewer, or 403 when their role is below ``role``."""
    who = viewer(request)
    if not who.may(role):
        raise forbidden(f"This needs the {role} role; you are a {who.role}.")
    return who


def check_tenant(request: web.Request, tenant_id: str | None) -> None:
    """404 for anything of a tenant the viewer does not see: not even whether it exists leaks."""
    if not viewer(request).sees(tenant_id):
        raise web.HTTPNotFound()


def forbidden(message: str) -> web.HTTPException:
    return web.HTTPForbidden(text=message)


def scope(request: web.Request) -> list[str] | None:
    """The tenants a list shows: the viewer's scope, narrowed to ``?tenant=`` when
    given (404 for a tenant they do not see)."""
    asked = request.query.get("tenant") or None
    if asked is None:
        return viewer(request).scope
    check_tenant(request, asked)
    return [asked]


# Sessions -------------------------------------------------------------------

async def start_session(conn: asyncpg.Connection, user: User, settings: Settings) -> str:
    """A new session for ``user``; the cookie's token is returned, only its hash stored."""
    token = secrets.token_urlsafe(32)
    tenant = user.tenants[0] if not user.is_admin and len(user.tenants) == 1 else None
    await conn.execute(
        "INSERT INTO herald.sessions (token_hash, user_id, csrf_token, tenant_id, expires_at)"
        " VALUES ($1, $2, $3, $4, clock_timestamp() + $5::interval)",
        token_hash(token), user.id, secrets.token_urlsafe(32), tenant,
        dt.timedelta(hours=settings.session_hours))
    await conn.execute("DELETE FROM herald.sessions WHERE expires_at < clock_timestamp()")
    return token


async def end_session(conn: asyncpg.Connection, token: str | None) -> None:
    if token:
        await conn.execute("DELETE FROM herald.sessions WHERE token_hash = $1", token_hash(token))


async def session_viewer(conn: asyncpg.Connection, token: str, settings: Settings) -> Viewer | None:
    """The viewer of a live session, its last use recorded; None when it has ended."""
    row = await conn.fetchrow(
        "UPDATE herald.sessions SET last_seen_at = clock_timestamp()"
        " WHERE token_hash = $1 AND expires_at > clock_timestamp()"
        "   AND last_seen_at > clock_timestamp() - $2::interval"
        " RETURNING user_id, csrf_token, tenant_id",
        token_hash(token), dt.timedelta(minutes=settings.session_idle_minutes))
    if row is None:
        return None
    user = await user_by_id(conn, row["user_id"])
    if user is None or user.disabled:
        return None
    allowed = None if user.is_admin else user.tenants
    tenant = row["tenant_id"]
    if tenant is not None and allowed is not None and tenant not in allowed:
        tenant = None
    return Viewer(actor=user.email, role=user.role, allowed=allowed, tenant=tenant,
                  csrf=row["csrf_token"], user=user)


async def choose_tenant(conn: asyncpg.Connection, token: str, tenant: str | None) -> None:
    await conn.execute("UPDATE herald.sessions SET tenant_id = $2 WHERE token_hash = $1", token_hash(token), tenant)


def set_session_cookie(request: web.Request, response: web.StreamResponse, token: str,
                       settings: Settings) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=int(settings.session_hours * 3600), path="/",
                        httponly=True, samesite="Strict", secure=secure_cookies(request))


def secure_cookies(request: web.Request) -> bool:
    """Secure cookies, except over plain HTTP to a loopback name, where browsers
    count the origin as secure anyway and other HTTP clients would drop them."""
    if request.secure:
        return True
    host = (request.host or "").rsplit(":", 1)[0].strip("[]").lower()
    return host not in ("127.0.0.1", "localhost", "::1")


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def _login_redirect(request: web.Request) -> web.HTTPException:
    if wants_json(request) or request.method != "GET":
        return web.HTTPUnauthorized(text="Sign in first (or send an API token: Authorization: Bearer ...)")
    return web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def make_middleware(pool_key: web.AppKey[asyncpg.Pool], settings_key: web.AppKey[Settings]) -> Any:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        role = None if request.match_info.http_exception is not None or isinstance(
            route.resource, web.StaticResource) else route_role(route.handler)
        if role is None:
            return await handler(request)
        pool, settings = request.app[pool_key], request.app[settings_key]
        who: Viewer | None = None
        bearer = bearer_token(request) if request.path.startswith("/api/") else None
        async with pool.acquire() as conn:
            if bearer is not None:
                token = await token_for(conn, bearer)
                if token is None:
                    raise web.HTTPUnauthorized(text="That API token is unknown or revoked.")
                who = Viewer(actor=f"token:{token.name}", role="viewer", allowed=(token.tenant_id,),
                             tenant=token.tenant_id)
            elif cookie := request.cookies.get(SESSION_COOKIE):
                who = await session_viewer(conn, cookie, settings)
        if who is None:
            raise _login_redirect(request)
        request[VIEWER] = who
        bind_viewer(who.actor, who.tenant)  # on the request's log lines from here on
        if request.method not in ("GET", "HEAD", "OPTIONS") and bearer is None:
            given = request.headers.get("X-CSRF-Token")
            if given is None and request.content_type in ("application/x-www-form-urlencoded",
                                                          "multipart/form-data"):
                given = (await request.post()).get("csrf_token")
            if not csrf_ok(who.csrf, given if isinstance(given, str) else None):
                raise web.HTTPForbidden(text="This form has expired or did not come from Herald's own page:"
                                             " reload the page and try again.")
        require(request, role)
        return await handler(request)

    return authenticate
