"""Saving workflow definitions: validated first, so a bad one never reaches a worker."""

from __future__ import annotations

from typing import Any

import asyncpg

from actors.workflow import parse_workflow

UPSERT_WORKFLOW = """
INSERT INTO herald.workflows (tenant_id, source_id, name, trigger_type, definition)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, source_id) DO UPDATE
SET name = EXCLUDED.name, trigger_type = EXCLUDED.trigger_type,
    definition = EXCLUDED.definition, updated_at = now()
RETURNING id
"""


async def import_workflow(conn: asyncpg.Connection, tenant_id: str, document: dict[str, Any]) -> str:
    """Validate and store ``document`` for a tenant; return the workflow's id.

    Importing the same document (same ``id``) again updates it in place.
    Raises WorkflowValidationError naming the field at fault.
    """
    spec = parse_workflow(document)
    workflow_id = await conn.fetchval(
        UPSERT_WORKFLOW, tenant_id, spec.source_id, spec.name, spec.trigger.name, document
    )
    return str(workflow_id)
