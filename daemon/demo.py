"""`herald demo`: the field-service demo app, watched, with the job-completed workflow."""

from __future__ import annotations

import json
from importlib import resources

import asyncpg

from daemon.capture import Relation, watch_table
from daemon.workflows import import_workflow

DEMO_TENANTS = ("1", "2")

WATCHES: tuple[tuple[str, tuple[Relation, ...]], ...] = (
    ("jobs", (Relation("client", "clients", "client_id"),
              Relation("organization", "organizations", "organization_id"))),
    ("clients", (Relation("organization", "organizations", "organization_id"),)),
    ("invoices", (Relation("client", "clients", "client_id"),
                  Relation("job", "jobs", "job_id"),
                  Relation("organization", "organizations", "organization_id"))),
)


def demo_workflow() -> dict[str, object]:
    """The seed's job-completed workflow, shipped unchanged."""
    text = resources.files("config.examples").joinpath("job-completed.workflow.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


async def load_demo(conn: asyncpg.Connection) -> bool:
    """Create and fill the demo tables; False when they already exist."""
    if await conn.fetchval("SELECT to_regclass('public.jobs')") is not None:
        return False
    async with conn.transaction():
        await conn.execute(resources.files("config.demo").joinpath("demo.sql").read_text())
        for table, relations in WATCHES:
            await watch_table(conn, table, tenant_column="organization_id", relations=relations)
        for tenant in DEMO_TENANTS:
            await import_workflow(conn, tenant, demo_workflow())
    return True
