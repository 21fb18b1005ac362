"""Users and signed-in clients for the dashboard's tests (aiohttp test client)."""

from __future__ import annotations

import re

import asyncpg
from aiohttp.test_utils import TestClient

from daemon.accounts import add_user

PASSWORD = "correct horse battery staple"


async def make_user(conn: asyncpg.Connection, email: str, role: str, tenants: tuple[str, ...] = ()) -> None:
    await add_user(conn, email, role=role, password=PASSWORD, tenants=tenants, by="tests")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(
        r'<meta name="csrf-token" content="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def sign_in(client: TestClient, email: str, password: str = PASSWORD) -> str:
    """Sign ``client`` in as ``email``; the session's CSRF token is returned."""
    form = await (await client.get("/login")).text()
    response = await client.post("/login", data={"email": email, "password": password,
                                                 "csrf_token": csrf_of(form), "next": "/runs"},
                                 allow_redirects=False)
    assert response.status == 303, await response.text()
    page = await (await client.get("/account")).text()
    return csrf_of(page)
