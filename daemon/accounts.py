"""Dashboard users, their passwords and roles, API tokens and the audit log.

Shared by `herald users` / `herald tokens` and the dashboard. Passwords are
hashed with argon2id (argon2-cffi); session and API tokens are random and
only their sha256 is stored. Nothing here logs or returns a secret except the
one-time token :func:`create_token` hands back to be shown once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from config.errors import HeraldConfigError

ROLES = ("viewer", "support", "operator", "admin")
ROLE_HELP = {
    "viewer": "reads runs, events, failures, workflows and analytics",
    "support": "also retries runs and resolves parked steps",
    "operator": "also edits, enables and tests workflows",
    "admin": "also manages users and sees every tenant",
}
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # hashing a megabyte-long "password" is work an attacker picks
# Failed logins: this many for one address, or for one client, within the window,
# and further attempts are refused until the oldest ages out.
LOGIN_WINDOW = dt.timedelta(minutes=15)
MAX_FAILURES_PER_EMAIL = 5
MAX_FAILURES_PER_CLIENT = 30
TOKEN_PREFIX = "hrld_"

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
_hasher = PasswordHasher()
# Verified against when the address is unknown, so an unknown address takes as
# long to refuse as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(HeraldConfigError):
    """A user or token command cannot be done as asked; the message says why."""


class LoginRefused(Exception):
    """A login failed. ``message`` is what the person is told: never whether the
    address exists."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class User:
    id: int
    email: str
    name: str | None
    role: str
    tenants: tuple[str, ...]
    disabled: bool
    last_login_at: dt.datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may(self, role: str) -> bool:
        """Whether this user's role is ``role`` or above it."""
        return role_rank(self.role) >= role_rank(role)


def role_rank(role: str) -> int:
    return ROLES.index(role)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def normalise_email(email: str) -> str:
    value = email.strip().lower()
    if not _EMAIL.match(value):
        raise AccountError(f"{email[:80]!r} is not an e-mail address")
    return value


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")
    return password


def check_tenants(tenants: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    cleaned = tuple(dict.fromkeys(t.strip() for t in tenants if t.strip()))
    for tenant in cleaned:
        if len(tenant) > 200 or not tenant.isprintable():
            raise AccountError(f"{tenant[:40]!r} is not a tenant id")
    return cleaned


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def new_password() -> str:
    """A random password of 20 characters, for `herald users add` without --password."""
    return secrets.token_urlsafe(15)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: Any) -> User:
    return User(id=row["id"], email=row["email"], name=row["name"], role=row["role"],
                tenants=tuple(row["tenants"]), disabled=row["disabled_at"] is not None,
                last_login_at=row["last_login_at"])


USER_COLUMNS = "id, email, name, role, tenants, disabled_at, last_login_at"


async def audit(
    conn: asyncpg.Connection, actor: str, action: str, *, target: str | None = None,
    tenant_id: str | None = None, reason: str | None = None, detail: dict[str, Any] | None = None,
) -> None:
    """One line of the audit log. ``detail`` must hold no secret."""
    await conn.execute(
        "INSERT INTO herald.audit_log (actor, tenant_id, action, target, reason, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)",
        actor, tenant_id, action, target, reason, json.dumps(detail or {}, default=str))


async def count_users(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM herald.users WHERE disabled_at IS NULL"))


async def add_user(
    conn: asyncpg.Connection, email: str, *, role: str, password: str, tenants: tuple[str, ...] = (),
    name: str | None = None, by: str,
) -> User:
    email, role, tenants = normalise_email(email), check_role(role), check_tenants(tenants)
    if role != "admin" and not tenants:
        raise AccountError(f"a {role} sees only their tenants: give at least one with --tenant")
    hashed = hash_password(password)
    async with conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO herald.users (email, name, role, tenants, password_hash) VALUES ($1, $2, $3, $4, $5)"
            f" ON CONFLICT (email) DO NOTHING RETURNING {USER_COLUMNS}",
            email, name, role, list(tenants), hashed)
        if row is None:
            raise AccountError(f"there is already a user {email}")
        await audit(conn, by, "user.add", target=email, detail={"role": role, "tenants": list(tenants)})
    return _user(row)


async def find_user(conn: asyncpg.Connection, email: str) -> User:
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM herald.users WHERE email = $1",
                              normalise_email(email))
    if row is None:
        raise AccountError(f"no user {email.strip().lower()}")
    return _user(row)


async def user_by_id(conn: asyncpg.Connection, user_id: int) -> User | None:
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM herald.users WHERE id = $1", user_id)
    return None if row is None else _user(row)


async def list_users(conn: asyncpg.Connection) -> list[User]:
    return [_user(row) for row in await conn.fetch(f"SELECT {USER_COLUMNS} FROM herald.users ORDER BY email")]


async def _change(conn: asyncpg.Connection, email: str, sql: str, *values: Any, by: str, action: str,
                  detail: dict[str, Any] | None = None, end_sessions: bool = False) -> User:
    user = await find_user(conn, email)
    async with conn.transaction():
        await conn.execute(f"UPDATE herald.users SET {sql}, updated_at = clock_timestamp() WHERE id = $1",
                           user.id, *values)
        if end_sessions:
            await conn.execute("DELETE FROM herald.sessions WHERE user_id = $1", user.id)
        await audit(conn, by, action, target=user.email, detail=detail)
    return await find_user(conn, email)


async def set_role(conn: asyncpg.Connection, email: str, role: str, *, by: str) -> User:
    role = check_role(role)
    user = await find_user(conn, email)
    if role != "admin" and not user.tenants:
        raise AccountError(f"{user.email} sees no tenant yet: give them one first"
                           f" (herald users set-tenants {user.email} TENANT)")
    await _refuse_last_admin(conn, user, "change the role of")
    return await _change(conn, email, "role = $2", role, by=by, action="user.set_role",
                         detail={"from": user.role, "to": role}, end_sessions=True)


async def set_tenants(conn: asyncpg.Connection, email: str, tenants: tuple[str, ...], *, by: str) -> User:
    tenants = check_tenants(tenants)
    user = await find_user(conn, email)
    if not tenants and user.role != "admin":
        raise AccountError(f"a {user.role} sees only their tenants: give at least one")
    return await _change(conn, email, "tenants = $2", list(tenants), by=by, action="user.set_tenants",
                         detail={"from": list(user.tenants), "to": list(tenants)}, end_sessions=True)


async def set_disabled(conn: asyncpg.Connection, email: str, disabled: bool, *, by: str) -> User:
    user = await find_user(conn, email)
    if disabled:
        await _refuse_last_admin(conn, user, "disable")
        return await _change(conn, email, "disabled_at = coalesce(disabled_at, clock_timestamp())",
                             by=by, action="user.disable", end_sessions=True)
    return await _change(conn, email, "disabled_at = NULL", by=by, action="user.enable")


async def reset_password(conn: asyncpg.Connection, email: str, password: str, *, by: str) -> User:
    hashed = hash_password(password)
    return await _change(conn, email, "password_hash = $2", hashed, by=by, action="user.reset_password",
                         end_sessions=True)


async def _refuse_last_admin(conn: asyncpg.Connection, user: User, what: str) -> None:
    if user.role != "admin" or user.disabled:
        return
    others = await conn.fetchval(
        "SELECT count(*) FROM herald.users WHERE role = 'admin' AND disabled_at IS NULL AND id <> $1", user.id)
    if not others:
        raise AccountError(f"cannot {what} {user.email}: they are the last admin (add another admin first)")


async def authenticate(conn: asyncpg.Connection, email: str, password: str, *, client: str) -> User:
    """The user whose address and password these are, or LoginRefused.

    Too many failures for the address or from the client within LOGIN_WINDOW
    refuse every attempt, right or wrong, until the window passes.
    """
    email = email.strip().lower()[:320]
    counts = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE email = $1) AS by_email, count(*) FILTER (WHERE client = $2) AS by_client"
        " FROM herald.login_failures WHERE failed_at > clock_timestamp() - $3::interval"
        " AND (email = $1 OR client = $2)", email, client, LOGIN_WINDOW)
    if counts["by_email"] >= MAX_FAILURES_PER_EMAIL or counts["by_client"] >= MAX_FAILURES_PER_CLIENT:
        raise LoginRefused("Too many failed logins. Wait 15 minutes and try again.")
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS}, password_hash FROM herald.users WHERE email = $1", email)
    ok = False
    if len(password) <= MAX_PASSWORD:
        try:
            ok = _hasher.verify(row["password_hash"] if row else _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
    if not ok or row is None or row["disabled_at"] is not None:
        await conn.execute("INSERT INTO herald.login_failures (email, client) VALUES ($1, $2)", email, client)
        await conn.execute("DELETE FROM herald.login_failures WHERE failed_at < clock_timestamp() - $1::interval",
                           LOGIN_WINDOW * 4)
        raise LoginRefused("That e-mail address and password do not match an active user.")
    if _hasher.check_needs_rehash(row["password_hash"]):
        await conn.execute("UPDATE herald.users SET password_hash = $2 WHERE id = $1",
                           row["id"], _hasher.hash(password))
    await conn.execute("UPDATE herald.users SET last_login_at = clock_timestamp() WHERE id = $1", row["id"])
    await conn.execute("DELETE FROM herald.login_failures WHERE email = $1", email)
    return _user(row)


# API tokens -----------------------------------------------------------------

@dataclass(frozen=True)
class ApiToken:
    id: int
    tenant_id: str
    name: str
    created_by: str | None
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked: bool


def _token(row: Any) -> ApiToken:
    return ApiToken(id=row["id"], tenant_id=row["tenant_id"], name=row["name"], created_by=row["created_by"],
                    created_at=row["created_at"], last_used_at=row["last_used_at"],
                    revoked=row["revoked_at"] is not None)


TOKEN_COLUMNS = "id, tenant_id, name, created_by, created_at, last_used_at, revoked_at"


async def create_token(conn: asyncpg.Connection, tenant_id: str, name: str, *, by: str) -> tuple[ApiToken, str]:
    """A new token for ``tenant_id``'s API; the token itself is returned once, never stored."""
    (tenant_id,) = check_tenants([tenant_id]) or ("",)
    if not tenant_id:
        raise AccountError("a token is for one tenant: give its id")
    if not name.strip() or len(name) > 200:
        raise AccountError("give the token a name of 1 to 200 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO herald.api_tokens (tenant_id, name, token_hash, created_by) VALUES ($1, $2, $3, $4)"
            f" RETURNING {TOKEN_COLUMNS}", tenant_id, name.strip(), token_hash(token), by)
        await audit(conn, by, "token.add", target=f"token {row['id']} ({name.strip()})", tenant_id=tenant_id)
    return _token(row), token


async def list_tokens(conn: asyncpg.Connection, tenant_id: str | None = None) -> list[ApiToken]:
    rows = await conn.fetch(f"SELECT {TOKEN_COLUMNS} FROM herald.api_tokens"
                            " WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY id", tenant_id)
    return [_token(row) for row in rows]


async def revoke_token(conn: asyncpg.Connection, token_id: int, *, by: str) -> ApiToken:
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE herald.api_tokens SET revoked_at = coalesce(revoked_at, clock_timestamp()) WHERE id = $1"
            f" RETURNING {TOKEN_COLUMNS}", token_id)
        if row is None:
            raise AccountError(f"no token {token_id}")
        await audit(conn, by, "token.revoke", target=f"token {token_id} ({row['name']})", tenant_id=row["tenant_id"])
    return _token(row)


async def token_for(conn: asyncpg.Connection, token: str) -> ApiToken | None:
    """The live token ``token`` is, its use recorded; None for an unknown or revoked one."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = await conn.fetchrow(
        "UPDATE herald.api_tokens SET last_used_at = clock_timestamp()"
        f" WHERE token_hash = $1 AND revoked_at IS NULL RETURNING {TOKEN_COLUMNS}", token_hash(token))
    return None if row is None else _token(row)
