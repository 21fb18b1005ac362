"""Saving, checking and exporting workflow definitions.

A workflow is validated before it is saved, so a bad one never reaches a
worker. Saving also warns about templates that read columns the entity or its
relations do not have (a typo that would otherwise fail every run).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg

from actors.templates import camel_to_snake, referenced_fields
from actors.workflow import StepSpec, WorkflowSpec, parse_workflow
from daemon.scheduler import check_time_trigger
from daemon.triggering import check_storable, check_text

UPSERT_WORKFLOW = """
INSERT INTO herald.workflows (tenant_id, source_id, name, trigger_type, definition)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, source_id) DO UPDATE
SET name = EXCLUDED.name, trigger_type = EXCLUDED.trigger_type,
    definition = EXCLUDED.definition, updated_at = now(),
    -- saved again: the scheduler tries it afresh (see daemon/scheduler.py)
    schedule_error = NULL, schedule_error_at = NULL
RETURNING id
"""

EXPORT = """
SELECT id, tenant_id, definition, is_active, execution_count
FROM herald.workflows
WHERE ($1::text IS NULL OR tenant_id = $1)
ORDER BY tenant_id, created_at, id
"""

WATCHED_BY_ENTITY = "SELECT table_name, relations FROM herald.watched_tables WHERE entity = $1"

COLUMNS = """
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
"""


async def import_workflow(conn: asyncpg.Connection, tenant_id: str, document: dict[str, Any]) -> str:
    """Validate and store ``document`` for a tenant; return the workflow's id.

    Importing the same document (same ``id``) again updates it in place.
    Raises WorkflowValidationError naming the field at fault, or HeraldConfigError
    for text PostgreSQL cannot store (a NUL character, an unpaired surrogate).
    """
    check_text(tenant_id, "the tenant")
    check_storable(document, "the workflow")
    spec = parse_workflow(document)
    await check_time_trigger(conn, spec.trigger)  # the tables it reads are watched, never Herald's own
    workflow_id = await conn.fetchval(
        UPSERT_WORKFLOW, tenant_id, spec.source_id, spec.name, spec.trigger.name, document
    )
    return str(workflow_id)


async def export_workflows(conn: asyncpg.Connection, tenant_id: str | None) -> list[dict[str, Any]]:
    """Every stored workflow as written, with where it lives and how often it ran."""
    return [
        {"tenant_id": row["tenant_id"], "workflow_id": str(row["id"]), "is_active": row["is_active"],
         "execution_count": row["execution_count"], "definition": row["definition"]}
        for row in await conn.fetch(EXPORT, tenant_id)
    ]


def _templates(step: StepSpec, index: int) -> Iterator[tuple[str, str]]:
    def walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from walk(item, f"{path}[{i}]")

    yield from walk(step.config, f"steps[{index}]")


async def template_warnings(conn: asyncpg.Connection, spec: WorkflowSpec) -> list[str]:
    """Templates reading columns that the trigger's entity or its relations lack."""
    watched = await conn.fetchrow(WATCHED_BY_ENTITY, spec.trigger.entity)
    if watched is None:
        return []
    tables = {spec.trigger.entity: watched["table_name"]}
    tables |= {name: relation["table"] for name, relation in watched["relations"].items()}
    columns: dict[str, set[str]] = {}
    for name, table in tables.items():
        columns[name] = {row["attname"] for row in await conn.fetch(COLUMNS, table)}
    warnings = []
    for index, step in enumerate(spec.steps):
        for path, source in _templates(step, index):
            for name, attribute in sorted(referenced_fields(source)):
                known = columns.get(name)
                if known and attribute not in known and camel_to_snake(attribute) not in known:
                    warnings.append(f"{path}: {name} has no column {attribute!r} ({tables[name]})")
    return warnings
