"""Users and signed-in clients for the dashboard's tests (aiohttp test client)."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from config.settings import Settings
from daemon.accounts import add_user

PASSWORD = "correct horse battery staple"


async def make_user(conn: asyncpg.Connection, email: str, role: str, tenants: tuple[str, ...] = ()) -> None:
    await add_user(conn, email, role=role, password=PASSWORD, tenants=tenants, by="tests")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(
        r'<meta name="csrf-token" content="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def signed_in(aiohttp_client: Any, settings: Settings, conn: asyncpg.Connection, email: str, role: str,
                    tenants: tuple[str, ...] = ()) -> tuple[TestClient, str]:
    """A new client of a new dashboard app, signed in as a new user: (client, CSRF token)."""
    from dashboard.app import create_app

    client = await aiohttp_client(create_app(settings))
    await make_user(conn, email, role, tenants)
    return client, await sign_in(client, email)


async def sign_in(client: TestClient, email: str, password: str = PASSWORD) -> str:
    """Sign ``client`` in as ``email``; the session's CSRF token is returned."""
    form = await (await client.get("/login")).text()
    response = await client.post("/login", data={"email": email, "password": password,
                                                 "csrf_token": csrf_of(form), "next": "/runs"},
                                 allow_redirects=False)
    assert response.status == 303, await response.text()
    page = await (await client.get("/account")).text()
    return csrf_of(page)


async def failed_run(conn: asyncpg.Connection, tenant: str, error: str, *,
                     steps: tuple[tuple[str, str, str | None], ...] = (("email", "sent", None),
                                                                        ("sms", "failed", None)),
                     same_version: bool = False) -> int:
    """A failed run of ``tenant``'s demo workflow as the actors leave it; ``steps``:
    (action, status, error). The run's error names the first step that failed."""
    job = 1 if tenant == "1" else 4
    await conn.execute("UPDATE jobs SET title = title || '.' WHERE id = $1", job)
    event = await conn.fetchval("SELECT id FROM herald.events WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1", tenant)
    workflow = await conn.fetchrow("SELECT id, version FROM herald.workflows WHERE tenant_id = $1", tenant)
    run_id = await conn.fetchval(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, error, context, completed_at,"
        " workflow_version) VALUES ($1, $2, $3, 'failed', $4, '{}', clock_timestamp(), $5) RETURNING id",
        tenant, workflow["id"], event, error, workflow["version"] if same_version else None)
    for position, (action, status, step_error) in enumerate(steps):
        await conn.execute(
            "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status,"
            " attempts, error, rendered) VALUES ($1, $2, $3, $4, $5, $5, '{}', $6, 1, $7, $8)",
            run_id, tenant, position, f"step-{position + 1}", action, status,
            step_error if step_error is not None else (error if status in ("failed", "unknown") else None),
            {"recipient": "+15550001111"} if action == "sms" else {"recipient": "maria@example.com"})
    return int(run_id)


PARKED_ERROR = "the worker stopped while handing the message to the provider"


async def parked_run(conn: asyncpg.Connection, tenant: str = "1") -> tuple[int, int, int]:
    """A run whose email was parked (unknown), its SMS skipped when the run failed:
    (run, email step, sms step)."""
    run = await failed_run(conn, tenant, "step 1 (step-1, email): outcome unknown, parked for a person to decide",
                           steps=(("email", "unknown", PARKED_ERROR), ("sms", "skipped", None)))
    email, sms = [r["id"] for r in await conn.fetch("SELECT id FROM herald.steps WHERE run_id = $1 ORDER BY position", run)]
    await conn.execute(
        "INSERT INTO herald.messages (tenant_id, run_id, step_id, channel, provider, idempotency_key, recipient,"
        " body, status) VALUES ($1, $2, $3, 'email', 'smtp', $4, 'maria@example.com', 'Hello', 'unknown')",
        tenant, run, email, f"key-{run}")
    return run, email, sms
