"""Saving, checking and exporting workflow definitions.

A workflow is validated before it is saved, so a bad one never reaches a
worker. Saving reads its trigger against the entities Herald watches
(``work_order_status_changed`` is work_order/status once crm.work_orders is
watched), and warns about a trigger whose entity no watched table has (yet)
and about templates that read columns the entity or its relations do not
have (a typo that would otherwise fail every run).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from actors.actions.records import NOT_COLUMNS
from actors.naming import AmbiguousName, column_for
from actors.tables import TableShape, table_shape
from actors.templates import referenced_fields
from config.errors import StepError, WorkflowValidationError
from actors.workflow import StepSpec, WorkflowSpec, parse_workflow
from daemon.scheduler import check_time_trigger
from daemon.triggering import check_storable, check_text, watched_entities

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


@dataclass(frozen=True)
class SavedWorkflow:
    """A stored workflow: its id, its spec with the trigger read against the watched
    entities, and what may be wrong with it though it is valid."""

    workflow_id: str
    spec: WorkflowSpec
    warnings: list[str]


async def import_workflow(conn: asyncpg.Connection, tenant_id: str, document: dict[str, Any]) -> str:
    """Validate and store ``document`` for a tenant; return the workflow's id (see :func:`save_workflow`)."""
    return (await save_workflow(conn, tenant_id, document)).workflow_id


async def save_workflow(conn: asyncpg.Connection, tenant_id: str, document: dict[str, Any]) -> SavedWorkflow:
    """Validate and store ``document`` for a tenant.

    Importing the same document (same ``id``) again updates it in place.
    Raises WorkflowValidationError naming the field at fault, or HeraldConfigError
    for text PostgreSQL cannot store (a NUL character, an unpaired surrogate).
    A trigger entity no table has is no error: the table may be watched later.
    """
    check_text(tenant_id, "the tenant")
    check_storable(document, "the workflow")
    spec = parse_workflow(document)
    await check_time_trigger(conn, spec.trigger)  # the tables it reads are watched, never Herald's own
    entities = await watched_entities(conn)
    spec = replace(spec, trigger=spec.trigger.resolve(entities))
    await check_record_columns(conn, spec, document)
    workflow_id = await conn.fetchval(
        UPSERT_WORKFLOW, tenant_id, spec.source_id, spec.name, spec.trigger.name, document
    )
    warnings = [] if spec.trigger.resolved else _unwatched_warnings(spec, entities)
    return SavedWorkflow(str(workflow_id), spec, warnings + await template_warnings(conn, spec))


def _unwatched_warnings(spec: WorkflowSpec, entities: list[str]) -> list[str]:
    """The entity trigger's entity is none Herald watches: nothing fires it until one is."""
    if spec.trigger.scheduled_type is not None:
        return []
    return [f"trigger {spec.trigger.name} watches entity {' or '.join(spec.trigger.entities)},"
            f" which no watched table has (watched: {', '.join(entities) or 'none'})"]


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
    """Templates reading columns that the trigger's entity or its relations lack.

    ``spec`` as :func:`save_workflow` returns it: its trigger read against the watched entities.
    """
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
                if known and not _names_a_column(attribute, known):
                    warnings.append(f"{path}: {name} has no column {attribute!r} ({tables[name]})")
    return warnings


def _names_a_column(attribute: str, columns: set[str]) -> bool:
    try:
        return column_for(attribute, columns) is not None
    except AmbiguousName:
        return True  # it names a column; which one is the template's own business


# Actions that write the application's tables: the keys they set must name columns.
RECORD_ACTIONS = ("create_task", "create_note", "update_record")

WATCHED_TARGETS = """
SELECT table_name, action_targets, updatable_columns FROM herald.watched_tables WHERE entity = $1
"""


async def check_record_columns(conn: asyncpg.Connection, spec: WorkflowSpec, document: dict[str, Any]) -> None:
    """Refuse a workflow whose create_task, create_note or update_record steps name
    a column the real table lacks (or that several of its columns could be), with
    the field at fault and the table's columns. Tables not configured yet are not checked."""
    watched = await conn.fetchrow(WATCHED_TARGETS, spec.trigger.entity)
    if watched is None:
        return
    prefix = "steps[{}].config" if "steps" in document else "actions[{}].args"
    shapes: dict[str, TableShape] = {}
    for index, step in enumerate(spec.steps):
        if step.action not in RECORD_ACTIONS:
            continue
        if step.action == "update_record":
            table, keys, where = watched["table_name"], dict(step.config.get("fields") or {}), ".fields"
        else:
            table = (watched["action_targets"] or {}).get(step.action)
            keys, where = {k: v for k, v in step.config.items() if k not in NOT_COLUMNS}, ""
        if not table:
            continue
        if table not in shapes:
            shapes[table] = await table_shape(conn, table)
        for key in keys:
            try:
                shapes[table].writable(key, step.action)
            except StepError as exc:
                raise WorkflowValidationError(f"{prefix.format(index)}{where}.{key}", str(exc)) from None
