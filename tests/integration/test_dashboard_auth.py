"""Signing in to the dashboard: passwords, sessions, CSRF, login limits, API
tokens, the users page and `herald users`, over a real database."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from config.settings import Settings
from daemon import accounts
from daemon.cli import main as herald
from daemon.demo import load_demo
from dashboard.app import create_app
from dashboard.auth import SESSION_COOKIE
from tests.dashboard_support import PASSWORD, csrf_of, make_user, sign_in
from tests.integration.test_dashboard import record_run


@pytest.fixture
async def client(settings: Settings, aiohttp_client: Any, conn: asyncpg.Connection) -> TestClient:
    await load_demo(conn)
    return await aiohttp_client(create_app(settings))


async def test_pages_need_a_session_and_the_api_an_answer_in_json(client: TestClient) -> None:
    page = await client.get("/runs?status=failed", allow_redirects=False)
    location = URL(page.headers["Location"])
    assert page.status == 303 and location.path == "/login" and location.query["next"] == "/runs?status=failed"
    api = await client.get("/api/runs")
    assert api.status == 401 and (await api.json())["status"] == 401
    assert (await client.get("/health")).status in (200, 503)  # public: monitors probe it
    assert (await client.get("/login")).status == 200


async def test_a_wrong_password_or_unknown_address_says_the_same_thing(
    client: TestClient, conn: asyncpg.Connection
) -> None:
    await make_user(conn, "ana@example.com", "viewer", ("1",))
    answers = []
    for email, password in (("ana@example.com", "wrong password!!"), ("nobody@example.com", PASSWORD)):
        form = await (await client.get("/login")).text()
        response = await client.post("/login", data={"email": email, "password": password,
                                                     "csrf_token": csrf_of(form)}, allow_redirects=False)
        assert response.status == 401
        text = await response.text()
        assert "do not match an active user" in text and password not in text
        answers.append(text.replace(email, ""))
    assert answers[0].count("do not match") == answers[1].count("do not match")
    assert SESSION_COOKIE not in client.session.cookie_jar.filter_cookies(client.make_url("/"))


async def test_signing_in_starts_a_new_session_with_safe_cookie_flags(
    client: TestClient, conn: asyncpg.Connection
) -> None:
    await make_user(conn, "ana@example.com", "viewer", ("1",))
    await sign_in(client, "ana@example.com")
    first = client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value
    # Signing in again replaces the session: the old cookie no longer works.
    form = await (await client.get("/login")).text()
    response = await client.post("/login", data={"email": "ana@example.com", "password": PASSWORD,
                                                 "csrf_token": csrf_of(form)}, allow_redirects=False)
    cookie = response.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert cookie.value != first
    stored = await conn.fetchval("SELECT count(*) FROM herald.sessions WHERE token_hash = $1", first)
    assert stored == 0
    assert not await conn.fetchval("SELECT count(*) FROM herald.sessions WHERE token_hash = $1", cookie.value)


async def test_cookies_are_secure_beyond_loopback(settings: Settings, aiohttp_client: Any) -> None:
    """Over plain HTTP to a loopback name browsers count the origin as secure anyway;
    reached by any other name, every cookie Herald sets is Secure (sent over HTTPS only)."""
    app = create_app(settings.replace(dashboard_allowed_hosts=("herald.example.com",)))
    client = await aiohttp_client(app)
    remote = await client.get("/login", headers={"Host": "herald.example.com"})
    local = await client.get("/login")
    assert remote.cookies["herald_login"]["secure"] and not local.cookies["herald_login"]["secure"]
    assert remote.cookies["herald_login"]["httponly"] and remote.cookies["herald_login"]["samesite"] == "Strict"


async def test_a_user_changes_their_own_password(client: TestClient, conn: asyncpg.Connection) -> None:
    await make_user(conn, "ana@example.com", "viewer", ("1",))
    csrf = await sign_in(client, "ana@example.com")
    wrong = await client.post("/account/password", data={"csrf_token": csrf, "current": "not it at all",
                                                          "password": "a brand new password"})
    assert wrong.status == 400
    changed = await client.post("/account/password", allow_redirects=False, data={
        "csrf_token": csrf, "current": PASSWORD, "password": "a brand new password"})
    assert changed.status == 303
    assert (await client.get("/account", allow_redirects=False)).status == 200  # a fresh session
    await accounts.authenticate(conn, "ana@example.com", "a brand new password", client="tests")


@pytest.mark.parametrize("target, landing", [
    ("/failures", "/failures"), ("https://evil.example/", "/"), ("//evil.example/x", "/"), ("/\\evil", "/"),
])
async def test_after_signing_in_only_this_dashboard_is_a_destination(
    client: TestClient, conn: asyncpg.Connection, target: str, landing: str
) -> None:
    await make_user(conn, "ana@example.com", "viewer", ("1",))
    form = await (await client.get("/login")).text()
    response = await client.post("/login", allow_redirects=False, data={
        "email": "ana@example.com", "password": PASSWORD, "csrf_token": csrf_of(form), "next": target})
    assert response.status == 303 and response.headers["Location"] == landing


async def test_a_login_without_its_form_token_is_refused(client: TestClient, conn: asyncpg.Connection) -> None:
    await make_user(conn, "ana@example.com", "viewer", ("1",))
    await client.get("/login")
    response = await client.post("/login", allow_redirects=False,
                                 data={"email": "ana@example.com", "password": PASSWORD, "csrf_token": "forged"})
    assert response.status == 403


async def test_guessing_passwords_is_stopped_for_the_address(client: TestClient, conn: asyncpg.Connection) -> None:
    await make_user(conn, "ana@example.com", "viewer", ("1",))
    for _ in range(accounts.MAX_FAILURES_PER_EMAIL):
        form = await (await client.get("/login")).text()
        await client.post("/login", data={"email": "ana@example.com", "password": "not the password",
                                          "csrf_token": csrf_of(form)})
    form = await (await client.get("/login")).text()
    response = await client.post("/login", allow_redirects=False, data={
        "email": "ana@example.com", "password": PASSWORD, "csrf_token": csrf_of(form)})
    assert response.status == 401 and "Too many failed logins" in await response.text()
    # Once the window has passed, the right password works again.
    await conn.execute("UPDATE herald.login_failures SET failed_at = failed_at - $1::interval",
                       accounts.LOGIN_WINDOW)
    await sign_in(client, "ana@example.com")
    assert await conn.fetchval("SELECT count(*) FROM herald.audit_log WHERE action = 'login.refused'") == 6


async def test_posts_need_the_sessions_csrf_token(client: TestClient, conn: asyncpg.Connection) -> None:
    await make_user(conn, "root@example.com", "admin")
    csrf = await sign_in(client, "root@example.com")
    without = await client.post("/tenant", data={"tenant": "1"}, allow_redirects=False)
    forged = await client.post("/tenant", data={"tenant": "1", "csrf_token": "x" * 43}, allow_redirects=False)
    assert without.status == 403 and forged.status == 403
    assert "reload the page" in await without.text()
    ok = await client.post("/tenant", data={"tenant": "1", "csrf_token": csrf, "next": "/runs"},
                           allow_redirects=False)
    assert ok.status == 303
    header = await client.post("/tenant", data={"tenant": ""}, headers={"X-CSRF-Token": csrf},
                               allow_redirects=False)
    assert header.status == 303


async def test_sessions_end_when_idle_expired_or_signed_out(
    client: TestClient, conn: asyncpg.Connection, settings: Settings
) -> None:
    await make_user(conn, "ana@example.com", "viewer", ("1",))

    async def signed_in() -> bool:
        return (await client.get("/runs", allow_redirects=False)).status == 200

    await sign_in(client, "ana@example.com")
    await conn.execute("UPDATE herald.sessions SET last_seen_at = last_seen_at - $1::interval",
                       dt.timedelta(minutes=settings.session_idle_minutes + 1))
    assert not await signed_in()
    await sign_in(client, "ana@example.com")
    await conn.execute("UPDATE herald.sessions SET expires_at = clock_timestamp() - interval '1 second'")
    assert not await signed_in()
    csrf = await sign_in(client, "ana@example.com")
    assert await signed_in()
    response = await client.post("/logout", data={"csrf_token": csrf}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/login"
    assert not await signed_in()
    assert await conn.fetchval("SELECT count(*) FROM herald.sessions") == 0


async def test_disabling_or_demoting_a_user_ends_their_sessions(
    client: TestClient, conn: asyncpg.Connection
) -> None:
    await make_user(conn, "ana@example.com", "operator", ("1",))
    await sign_in(client, "ana@example.com")
    await accounts.set_role(conn, "ana@example.com", "viewer", by="tests")
    assert (await client.get("/runs", allow_redirects=False)).status == 303
    await sign_in(client, "ana@example.com")
    await accounts.set_disabled(conn, "ana@example.com", True, by="tests")
    assert (await client.get("/runs", allow_redirects=False)).status == 303
    form = await (await client.get("/login")).text()
    refused = await client.post("/login", data={"email": "ana@example.com", "password": PASSWORD,
                                                "csrf_token": csrf_of(form)})
    assert refused.status == 401


async def test_a_tenant_user_sees_only_their_tenant_and_cannot_pick_another(
    client: TestClient, conn: asyncpg.Connection
) -> None:
    mine = await record_run(conn, 1)  # tenant 1
    theirs = await record_run(conn, 4)  # tenant 2
    assert await conn.fetchval("SELECT tenant_id FROM herald.runs WHERE id = $1", theirs) == "2"
    await make_user(conn, "ana@example.com", "viewer", ("1",))
    csrf = await sign_in(client, "ana@example.com")
    runs = (await (await client.get("/api/runs")).json())["runs"]
    assert [run["id"] for run in runs] == [mine]
    assert (await client.get("/api/runs", params={"tenant": "2"})).status == 404
    pick = await client.post("/tenant", data={"tenant": "2", "csrf_token": csrf}, allow_redirects=False)
    assert pick.status == 404
    page = await (await client.get("/runs")).text()
    assert '<option value="2"' not in page


async def test_an_admin_sees_every_tenant_or_the_one_they_pick(
    client: TestClient, conn: asyncpg.Connection
) -> None:
    one, two = await record_run(conn, 1), await record_run(conn, 4)
    await make_user(conn, "root@example.com", "admin")
    csrf = await sign_in(client, "root@example.com")
    assert {run["id"] for run in (await (await client.get("/api/runs")).json())["runs"]} == {one, two}
    await client.post("/tenant", data={"tenant": "2", "csrf_token": csrf})
    assert [run["id"] for run in (await (await client.get("/api/runs")).json())["runs"]] == [two]


async def test_api_tokens_read_one_tenant_until_revoked(client: TestClient, conn: asyncpg.Connection) -> None:
    one, _ = await record_run(conn, 1), await record_run(conn, 4)
    token, secret = await accounts.create_token(conn, "1", "reporting", by="tests")
    headers = {"Authorization": f"Bearer {secret}"}
    response = await client.get("/api/runs", headers=headers)
    assert [run["id"] for run in (await response.json())["runs"]] == [one]
    assert (await client.get("/api/runs", headers=headers, params={"tenant": "2"})).status == 404
    # A token is for the API, not the pages, and never for writes a session would need CSRF for.
    assert (await client.get("/runs", headers=headers, allow_redirects=False)).status == 303
    stored = await conn.fetchval("SELECT token_hash FROM herald.api_tokens WHERE id = $1", token.id)
    assert secret not in stored
    await accounts.revoke_token(conn, token.id, by="tests")
    assert (await client.get("/api/runs", headers=headers)).status == 401
    assert (await client.get("/api/runs", headers={"Authorization": "Bearer hrld_made_up"})).status == 401


async def test_admins_manage_users_on_the_users_page(client: TestClient, conn: asyncpg.Connection) -> None:
    await make_user(conn, "root@example.com", "admin")
    csrf = await sign_in(client, "root@example.com")
    added = await client.post("/users", allow_redirects=False, data={
        "csrf_token": csrf, "email": "Bo@Example.com", "role": "support", "tenants": "1, 2",
        "password": "a long enough password"})
    assert added.status == 303
    bo = await accounts.find_user(conn, "bo@example.com")
    assert (bo.role, bo.tenants) == ("support", ("1", "2"))
    short = await client.post("/users", data={"csrf_token": csrf, "email": "cy@example.com", "role": "viewer",
                                              "tenants": "1", "password": "short"})
    assert short.status == 400 and "at least 12 characters" in await short.text()
    assert 'value="cy@example.com"' in await short.text()  # what was typed is kept
    await client.post(f"/users/{bo.id}", data={"csrf_token": csrf, "change": "role", "role": "viewer"})
    await client.post(f"/users/{bo.id}", data={"csrf_token": csrf, "change": "disabled"})
    bo = await accounts.find_user(conn, "bo@example.com")
    assert bo.role == "viewer" and bo.disabled
    page = await (await client.get("/users")).text()
    assert "bo@example.com" in page and "argon2" not in page
    # The last admin cannot lock everyone out.
    root = await accounts.find_user(conn, "root@example.com")
    last = await client.post(f"/users/{root.id}", data={"csrf_token": csrf, "change": "disabled"})
    assert last.status == 400 and "last admin" in await last.text()
    actions = [row["action"] for row in await conn.fetch(
        "SELECT action FROM herald.audit_log WHERE actor = 'root@example.com' ORDER BY id")]
    assert actions == ["login", "user.add", "user.set_role", "user.disable"]
    audit = await (await client.get("/audit")).text()
    assert "user.set_role" in audit


async def test_only_admins_reach_the_users_page(client: TestClient, conn: asyncpg.Connection) -> None:
    await make_user(conn, "op@example.com", "operator", ("1",))
    csrf = await sign_in(client, "op@example.com")
    assert (await client.get("/users")).status == 403
    response = await client.post("/users", data={"csrf_token": csrf, "email": "x@example.com", "role": "admin",
                                                 "password": "a long enough password"})
    assert response.status == 403
    assert not await conn.fetchval("SELECT count(*) FROM herald.users WHERE email = 'x@example.com'")


def test_herald_users_from_the_command_line(settings: Settings, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("HERALD_REDIS_URL", settings.redis_url)
    monkeypatch.setattr("sys.stdin", _Stdin("a long enough password\n"))
    assert herald(["users", "add", "ops@example.com", "--role", "operator", "--tenant", "1",
                   "--password-stdin"]) == 0
    assert "ops@example.com  operator  1" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", _Stdin(""))
    assert herald(["users", "add", "root@example.com", "--role", "admin"]) == 0
    out = capsys.readouterr().out
    assert "password (shown once" in out
    assert herald(["users", "add", "root@example.com", "--role", "admin"]) == 1
    assert "already a user root@example.com" in capsys.readouterr().err
    assert herald(["users", "add", "v@example.com", "--role", "viewer"]) == 1
    assert "give at least one with --tenant" in capsys.readouterr().err
    assert herald(["users", "set-role", "ops@example.com", "support"]) == 0
    assert herald(["users", "disable", "root@example.com"]) == 1
    assert "last admin" in capsys.readouterr().err
    assert herald(["users", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ops@example.com  support  1" in listing and "root@example.com  admin  every tenant" in listing
    assert herald(["tokens", "add", "--tenant", "1", "reporting"]) == 0
    token = capsys.readouterr().out.split("\n")[1]
    assert token.startswith("hrld_")
    assert herald(["tokens", "list"]) == 0
    assert token not in capsys.readouterr().out


class _Stdin:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines(keepends=True)

    def readline(self) -> str:
        return self.lines.pop(0) if self.lines else ""

    def isatty(self) -> bool:
        return False
