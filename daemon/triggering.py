"""Manual triggers: fire an event with a given payload (`herald trigger`, the dashboard).

The event runs the tenant's workflows whose trigger has exactly this name
(or only ``workflow_id``), with the payload as the entity's row. When the
entity's table is watched, its relations are loaded as for a real change.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from actors.triggers import TIME_TRIGGERS, parse_trigger

TABLE_OF_ENTITY = "SELECT table_name FROM herald.watched_tables WHERE entity = $1"

INSERT_EVENT = """
INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, new, workflow_id)
VALUES ($1, $2, $3, $4, 'MANUAL', $5, $6, $7)
RETURNING id
"""


async def fire_event(
    conn: asyncpg.Connection, *, tenant_id: str, trigger_type: str, payload: dict[str, Any],
    workflow_id: str | None = None,
) -> int:
    """Write a MANUAL event to the outbox (and NOTIFY at commit); return its id.

    Raises WorkflowValidationError for an unknown trigger name.
    """
    if trigger_type in TIME_TRIGGERS:
        entity = TIME_TRIGGERS[trigger_type][0]
    else:
        entity = parse_trigger(trigger_type, "trigger").entity
    table = await conn.fetchval(TABLE_OF_ENTITY, entity) or "manual"
    row_id = payload.get("id")
    async with conn.transaction():
        event_id = await conn.fetchval(
            INSERT_EVENT, tenant_id, entity, table, None if row_id is None else str(row_id),
            trigger_type, payload, workflow_id)
        await conn.execute("SELECT pg_notify('herald_events', $1)", str(event_id))
    return int(event_id)
