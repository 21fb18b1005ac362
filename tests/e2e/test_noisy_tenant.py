"""One tenant's slow template neither stops nor slows another tenant: the real
daemon and worker (one process, so one event loop for every tenant), the demo
app, the capture provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from config.database import connection
from config.embedded_layout import EmbeddedLayout
from daemon.demo import load_demo
from daemon.workflows import import_workflow
from tests.conftest import fresh_database, wait_until
from tests.e2e.conftest import running_herald

# A billion empty iterations: minutes of the event loop without a time limit.
SLOW = ("{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}"
        "{% endfor %}{% endfor %}{% endfor %}Thanks, {{ client.firstName }}")
NOISY, QUIET = "701", "702"


def workflow(message: str) -> dict[str, Any]:
    return {"name": "Job done", "trigger_type": "job_completed", "steps": [
        {"id": "mail", "type": "action", "config": {
            "actionType": "email", "recipient": "{{client.email}}", "subject": "{{job.title}} is done",
            "message": message}}]}


@pytest.fixture
async def db(template_database: str, layout: EmbeddedLayout) -> AsyncIterator[str]:
    async with fresh_database(layout) as url:
        async with connection(url) as conn:
            await load_demo(conn)
            await import_workflow(conn, NOISY, workflow(SLOW))
            await import_workflow(conn, QUIET, workflow("Dear {{client.firstName}}, {{job.title}} is done."))
        yield url


async def a_job(conn: asyncpg.Connection, tenant: str) -> int:
    """A job in progress for a client of ``tenant`` (an organization of the demo app)."""
    await conn.execute("INSERT INTO organizations (id, name) VALUES ($1::text::bigint, 'Org')"
                       " ON CONFLICT (id) DO NOTHING", tenant)
    client = await conn.fetchval(
        "INSERT INTO clients (organization_id, first_name, last_name, email) VALUES"
        " ($1::text::bigint, 'Maria', 'Lopez', 'maria@example.com') RETURNING id", tenant)
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO jobs (organization_id, client_id, title, status) VALUES"
        " ($1::text::bigint, $2, 'Fix sink', 'in_progress') RETURNING id", tenant, client)


RUN_OF_JOB = """
SELECT r.id, r.status, r.error, extract(epoch FROM r.completed_at - e.created_at) AS latency_s
FROM herald.runs r JOIN herald.events e ON e.id = r.event_id
WHERE e.tenant_id = $1 AND e.row_id = $2::bigint::text AND r.status IN ('completed', 'failed')
"""


async def finished(conn: asyncpg.Connection, tenant: str, job: int, what: str) -> asyncpg.Record:
    async def probe() -> asyncpg.Record | None:
        return await conn.fetchrow(RUN_OF_JOB, tenant, job)

    return await wait_until(probe, timeout=15, message=what)


async def test_a_slow_template_fails_on_time_and_holds_up_no_other_tenant(db: str, layout: EmbeddedLayout,
                                                                         tmp_path: Path) -> None:
    with running_herald(db, layout.redis_url, tmp_path, HERALD_WORKER_PROCESSES="1",
                        HERALD_WORKER_TIMEOUT_MS="100"):
        async with connection(db) as conn:
            noisy_job, warm_up, quiet_job = (await a_job(conn, NOISY), await a_job(conn, QUIET),
                                             await a_job(conn, QUIET))
            # The quiet tenant's first run warms the worker up (pools, sessions).
            await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", warm_up)
            assert (await finished(conn, QUIET, warm_up, "the warm-up run"))["status"] == "completed"

            await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", noisy_job)

            async def rendering() -> bool:  # the noisy step is claimed: its templates render now
                return await conn.fetchval(
                    "SELECT s.status = 'sending' FROM herald.steps s JOIN herald.runs r ON r.id = s.run_id"
                    " JOIN herald.events e ON e.id = r.event_id WHERE e.row_id = $1::bigint::text", noisy_job)

            await wait_until(rendering, message="the noisy tenant's step to start")
            await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", quiet_job)

            quiet = await finished(conn, QUIET, quiet_job, "the quiet tenant's run")
            assert quiet["status"] == "completed", quiet["error"]
            assert quiet["latency_s"] < 3, f"the quiet tenant's run took {quiet['latency_s']:.2f} s after its commit"
            assert await conn.fetchval(
                "SELECT body FROM herald.messages WHERE run_id = $1", quiet["id"]) == "Dear Maria, Fix sink is done."

            noisy = await finished(conn, NOISY, noisy_job, "the noisy tenant's run")
            assert noisy["status"] == "failed"
            assert "template for message took longer than 1 s" in noisy["error"]
            step = await conn.fetchrow("SELECT status, attempts, execution_time_ms FROM herald.steps"
                                       " WHERE run_id = $1", noisy["id"])
            assert (step["status"], step["attempts"]) == ("failed", 1)
            assert step["execution_time_ms"] < 2000
            assert await conn.fetchval("SELECT count(*) FROM herald.messages WHERE run_id = $1", noisy["id"]) == 0
