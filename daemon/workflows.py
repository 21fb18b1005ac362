"""Saving, checking, finding and exporting workflow definitions.

A workflow is validated before it is saved, so a bad one never reaches a
worker. Saving reads its trigger against the entities Herald watches
(``work_order_status_changed`` is work_order/status once crm.work_orders is
watched), refuses templates that read columns the entity or its relations do
not have (a typo that would otherwise fail every run) unless forced, and warns
about a trigger whose entity no watched table has (yet).

Every save that changes the definition makes a new version (numbered by the
database: see migration 011); runs record the version they ran. A tenant's
workflows are found by their document's ``id``, their name (unique among a
tenant's active workflows) or their uuid. Deleting hides a workflow and keeps
it, so its runs stay readable; importing its document again brings it back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from actors.model.actions import NOT_COLUMNS
from actors.model.naming import AmbiguousName, column_for
from actors.model.templates import referenced_fields
from actors.model.workflow import WorkflowSpec, parse_workflow, template_strings
from actors.tables import TableShape, table_shape
from config.errors import HeraldConfigError, StepError, WorkflowValidationError
from daemon.scheduler import check_time_trigger
from daemon.triggering import check_storable, check_text, watched_entities

# Saves of one tenant's workflows, one at a time: the name check and the write
# happen together (the name is unique among the tenant's active workflows).
LOCK_TENANT = "SELECT pg_advisory_xact_lock(hashtextextended('herald.workflows:' || $1, 0))"

# Who saves (read by the trigger that keeps versions); '' for nobody in particular.
SAVED_BY = "SELECT set_config('herald.saved_by', $1, true)"

WORKFLOW_FIELDS = """
id, tenant_id, source_id, name, trigger_type, version, is_active, deleted_at, created_at, updated_at
"""

# A document with an id is that workflow (deleted or not: importing it again brings it
# back); one without is the tenant's workflow of the same name that has no id either.
BY_SOURCE_ID = f"SELECT {WORKFLOW_FIELDS} FROM herald.workflows WHERE tenant_id = $1 AND source_id = $2"
BY_NAME_WITHOUT_ID = f"""
SELECT {WORKFLOW_FIELDS} FROM herald.workflows
WHERE tenant_id = $1 AND source_id IS NULL AND name = $2 AND deleted_at IS NULL
ORDER BY is_active DESC, created_at, id LIMIT 1
"""

# Another active workflow of the tenant with this name.
NAME_TAKEN = f"""
SELECT {WORKFLOW_FIELDS} FROM herald.workflows
WHERE tenant_id = $1 AND name = $2 AND is_active AND deleted_at IS NULL AND id IS DISTINCT FROM $3
ORDER BY created_at, id LIMIT 1
"""

INSERT_WORKFLOW = """
INSERT INTO herald.workflows (tenant_id, source_id, name, trigger_type, definition, is_active, created_at)
VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp())  -- a file of several keeps its order in lists and exports
RETURNING id, version
"""

UPDATE_WORKFLOW = """
UPDATE herald.workflows
SET name = $2, trigger_type = $3, definition = $4, is_active = $5, deleted_at = NULL, updated_at = now(),
    -- saved again: the scheduler tries it afresh (see daemon/scheduler.py)
    schedule_error = NULL, schedule_error_at = NULL
WHERE id = $1
RETURNING id, version
"""

# How often a workflow ran is counted from its runs (those not skipped as
# duplicates), not kept on the workflow's row: a counter there is one row
# every matching transaction would update, and they would queue for its lock.
# Runs that retention deleted (daemon/retention.py) are counted in herald.pruned_runs.
EXPORT = """
SELECT w.id, w.tenant_id, w.source_id, w.name, w.version, w.definition, w.is_active,
       coalesce(ran.n, 0) + coalesce((SELECT sum(p.runs) FROM herald.pruned_runs p WHERE p.workflow_id = w.id), 0)::bigint
           AS execution_count
FROM herald.workflows w
LEFT JOIN (SELECT workflow_id, count(*) AS n FROM herald.runs WHERE status <> 'skipped' GROUP BY 1) ran
       ON ran.workflow_id = w.id
WHERE w.deleted_at IS NULL AND ($1::text IS NULL OR w.tenant_id = $1)
ORDER BY w.tenant_id, w.created_at, w.id
"""

BY_ID = f"SELECT {WORKFLOW_FIELDS} FROM herald.workflows WHERE id = $1"

TENANT_WORKFLOWS = f"""
SELECT {WORKFLOW_FIELDS} FROM herald.workflows WHERE tenant_id = $1 ORDER BY created_at, id
"""

LIST = """
SELECT w.id, w.tenant_id, w.source_id, w.name, w.trigger_type, w.version, w.is_active,
       (SELECT count(*) FROM herald.runs r WHERE r.workflow_id = w.id AND r.status <> 'skipped')
       + (SELECT coalesce(sum(p.runs), 0)::bigint FROM herald.pruned_runs p WHERE p.workflow_id = w.id) AS runs,
       (SELECT count(*) FROM herald.runs r WHERE r.workflow_id = w.id AND r.status = 'failed')
       + (SELECT coalesce(sum(p.failed), 0)::bigint FROM herald.pruned_runs p WHERE p.workflow_id = w.id) AS failed
FROM herald.workflows w
WHERE w.deleted_at IS NULL AND ($1::text IS NULL OR w.tenant_id = $1)
ORDER BY w.tenant_id, w.created_at, w.id
"""

HISTORY = """
SELECT v.version, v.saved_at, v.saved_by,
       (SELECT count(*) FROM herald.runs r
        WHERE r.workflow_id = v.workflow_id AND r.workflow_version = v.version AND r.status <> 'skipped')
       + (SELECT coalesce(sum(p.runs), 0)::bigint FROM herald.pruned_runs p
          WHERE p.workflow_id = v.workflow_id AND p.version = v.version) AS runs
FROM herald.workflow_versions v
WHERE v.workflow_id = $1
ORDER BY v.version DESC
"""

VERSION = """
SELECT version, definition, saved_at, saved_by FROM herald.workflow_versions
WHERE workflow_id = $1 AND version = $2
"""

CURRENT = """
SELECT w.definition, v.saved_at, v.saved_by
FROM herald.workflows w
LEFT JOIN herald.workflow_versions v ON v.workflow_id = w.id AND v.version = w.version
WHERE w.id = $1
"""

SET_ACTIVE = """
UPDATE herald.workflows SET is_active = $2, updated_at = now() WHERE id = $1 AND deleted_at IS NULL
"""

UNFINISHED_RUNS = """
SELECT id FROM herald.runs WHERE workflow_id = $1 AND status IN ('pending', 'running') ORDER BY id
"""

CANCEL_RUNS = """
WITH steps AS (
    UPDATE herald.steps SET status = 'cancelled', updated_at = clock_timestamp()
    WHERE run_id = ANY($1::bigint[]) AND status IN ('waiting', 'pending')
)
UPDATE herald.runs
SET status = 'cancelled', error = $2, completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    execution_time_ms = (extract(epoch FROM clock_timestamp() - created_at) * 1000)::int
WHERE id = ANY($1::bigint[]) AND status IN ('pending', 'running')
"""

RUN_COUNT = "SELECT count(*) FROM herald.runs WHERE workflow_id = $1"

DELETE = """
UPDATE herald.workflows SET is_active = false, deleted_at = clock_timestamp(), updated_at = now()
WHERE id = $1 AND deleted_at IS NULL
"""

WATCHED_BY_ENTITY = "SELECT table_name, relations FROM herald.watched_tables WHERE entity = $1"

COLUMNS = """
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
"""


class UnknownColumns(WorkflowValidationError):
    """Templates read columns the trigger's entity or its relations lack: every run
    would fail on them. Refused unless the save is forced."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        field, _, first = problems[0].partition(": ")
        rest = "".join(f"; {problem}" for problem in problems[1:])
        super().__init__(field, f"{first}{rest} (--force saves it anyway)")


@dataclass(frozen=True)
class SavedWorkflow:
    """A stored workflow: its id, its spec with the trigger read against the watched
    entities, what may be wrong with it though it is valid, and its version
    (``previous_version``: the one before this save, None for a new workflow)."""

    workflow_id: str
    spec: WorkflowSpec
    warnings: list[str]
    version: int = 1
    previous_version: int | None = None
    is_active: bool = True
    restored: bool = False  # it had been deleted: this save brought it back

    @property
    def changed(self) -> bool:
        return self.previous_version != self.version


async def import_workflow(
    conn: asyncpg.Connection, tenant_id: str, document: dict[str, Any], *, force: bool = False,
) -> str:
    """Validate and store ``document`` for a tenant; return the workflow's id (see :func:`save_workflow`)."""
    return (await save_workflow(conn, tenant_id, document, force=force)).workflow_id


async def save_workflow(
    conn: asyncpg.Connection, tenant_id: str, document: dict[str, Any], *, force: bool = False,
    active: bool | None = None, saved_by: str | None = None,
) -> SavedWorkflow:
    """Validate and store ``document`` for a tenant.

    Importing the same document (same ``id``; without one, the same name) again
    updates it in place: a new version when the definition changed, none when it
    did not. ``active``: whether it runs (default: as it was; a new or deleted one
    runs). Raises WorkflowValidationError naming the field at fault (UnknownColumns
    for templates naming columns the tables lack, unless ``force``; a name another
    active workflow of the tenant has), or HeraldConfigError for text PostgreSQL
    cannot store (a NUL character, an unpaired surrogate). A trigger entity no
    table has is no error: the table may be watched later.
    """
    check_text(tenant_id, "the tenant")
    check_storable(document, "the workflow")
    spec = parse_workflow(document)
    await check_time_trigger(conn, spec.trigger)  # the tables it reads are watched, never Herald's own
    entities = await watched_entities(conn)
    spec = replace(spec, trigger=spec.trigger.resolve(entities))
    await check_record_columns(conn, spec, document)
    problems = await template_warnings(conn, spec, document)
    if problems and not force:
        raise UnknownColumns(problems)
    async with conn.transaction():
        await conn.execute(LOCK_TENANT, tenant_id)
        if spec.source_id is not None:
            existing = await conn.fetchrow(BY_SOURCE_ID, tenant_id, spec.source_id)
        else:
            existing = await conn.fetchrow(BY_NAME_WITHOUT_ID, tenant_id, spec.name)
        if active is None:
            active = existing is None or existing["deleted_at"] is not None or existing["is_active"]
        if active:
            other = await conn.fetchrow(NAME_TAKEN, tenant_id, spec.name, None if existing is None else existing["id"])
            if other is not None:
                raise WorkflowValidationError("name", (
                    f"tenant {tenant_id} already has an active workflow named {spec.name!r}"
                    f" ({describe(other)}); rename one of them, or disable the other first"))
        await conn.execute(SAVED_BY, saved_by or "")
        if existing is None:
            saved = await conn.fetchrow(INSERT_WORKFLOW, tenant_id, spec.source_id, spec.name,
                                        spec.trigger.name, document, active)
        else:
            saved = await conn.fetchrow(UPDATE_WORKFLOW, existing["id"], spec.name, spec.trigger.name,
                                        document, active)
    warnings = [] if spec.trigger.resolved else unwatched_warnings(spec, entities)
    return SavedWorkflow(str(saved["id"]), spec, warnings + problems, saved["version"],
                         None if existing is None else existing["version"], active,
                         existing is not None and existing["deleted_at"] is not None)


def unwatched_warnings(spec: WorkflowSpec, entities: list[str]) -> list[str]:
    """The entity trigger's entity is none Herald watches: nothing fires it until one is."""
    if spec.trigger.scheduled_type is not None:
        return []
    return [f"trigger {spec.trigger.name} watches entity {' or '.join(spec.trigger.entities)},"
            f" which no watched table has (watched: {', '.join(entities) or 'none'})"]


async def export_workflows(conn: asyncpg.Connection, tenant_id: str | None) -> list[dict[str, Any]]:
    """Every stored workflow (deleted ones aside) as written, with where it lives, its
    version, whether it runs and how often it ran: what :func:`workflow_entries` reads."""
    return [
        {"tenant_id": row["tenant_id"], "workflow_id": str(row["id"]), "source_id": row["source_id"],
         "name": row["name"], "version": row["version"], "is_active": row["is_active"],
         "execution_count": row["execution_count"], "definition": row["definition"]}
        for row in await conn.fetch(EXPORT, tenant_id)
    ]


# -- files ---------------------------------------------------------------------

_DOCUMENT_KEYS = ("trigger_type", "trigger", "steps", "actions")


@dataclass(frozen=True)
class WorkflowEntry:
    """One workflow of a file: its document and, from an export, whether it ran and whose it was."""

    label: str  # the file, or the file and the entry's place in it: backup.json[2]
    document: Any
    is_active: bool | None = None
    tenant_id: str | None = None


def _is_export_entry(item: Any) -> bool:
    return (isinstance(item, dict) and isinstance(item.get("definition"), dict)
            and not any(key in item for key in _DOCUMENT_KEYS))


def workflow_entries(label: str, data: Any) -> list[WorkflowEntry]:
    """The workflows a file holds: one workflow document, a JSON array of documents,
    or what ``herald workflows export`` writes (an array of entries with
    ``definition`` and ``is_active``; also read wrapped as ``{"workflows": [...]}``).
    Raises HeraldConfigError for an entry whose fields are not what export writes."""
    if isinstance(data, dict) and isinstance(data.get("workflows"), list) and not any(
            key in data for key in _DOCUMENT_KEYS):
        data = data["workflows"]
    if not isinstance(data, list):
        return [WorkflowEntry(label, data)]  # one document (parse_workflow says what is wrong with it)
    entries = []
    for i, item in enumerate(data):
        where = f"{label}[{i}]"
        if not _is_export_entry(item):
            entries.append(WorkflowEntry(where, item))
            continue
        active, tenant = item.get("is_active"), item.get("tenant_id")
        if active is not None and not isinstance(active, bool):
            raise HeraldConfigError(f"{where}.is_active: must be true or false")
        if tenant is not None and not isinstance(tenant, str):
            raise HeraldConfigError(f"{where}.tenant_id: must be a string")
        entries.append(WorkflowEntry(where, item["definition"], active, tenant))
    return entries


# -- finding a tenant's workflow ---------------------------------------------------


def describe(row: Any) -> str:
    """How a person tells this workflow apart: its name and its document id (or uuid)."""
    return f"{row['name']!r}, id {row['source_id'] or row['id']}"


def _shown(ref: str) -> str:
    return repr(ref if len(ref) <= 80 else f"{ref[:80]}…")


async def find_workflow(conn: asyncpg.Connection, tenant_id: str, ref: str, what: str = "workflow") -> Any:
    """The tenant's workflow ``ref`` names: its document's ``id``, its name (exactly,
    else in any case when only one fits) or its uuid. Deleted workflows are not
    found. HeraldConfigError in one line otherwise, naming what was tried and some
    of the tenant's workflows."""
    check_text(ref, what)
    rows = list(await conn.fetch(TENANT_WORKFLOWS, tenant_id))
    live = [row for row in rows if row["deleted_at"] is None]
    try:
        as_uuid: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        as_uuid = None
    candidates: list[list[Any]] = [
        [row for row in rows if as_uuid is not None and row["id"] == as_uuid],
        [row for row in rows if row["source_id"] == ref],
        [row for row in rows if row["name"] == ref],
        [row for row in rows if row["name"].casefold() == ref.casefold()],
    ]
    for hits in candidates:
        found = [row for row in hits if row["deleted_at"] is None]
        if len(found) > 1:
            active = [row for row in found if row["is_active"]]
            if len(active) != 1:
                named = ", ".join(f"id {row['source_id'] or row['id']}" for row in found[:5])
                raise HeraldConfigError(f"{what} {_shown(ref)}: {len(found)} workflows of tenant {tenant_id}"
                                        f" have that name ({named}); give its id instead")
            found = active
        if found:
            return found[0]
        if hits:  # only deleted ones
            when = max(row["deleted_at"] for row in hits)
            raise HeraldConfigError(
                f"{what} {_shown(ref)}: that workflow of tenant {tenant_id} was deleted"
                f" ({when:%Y-%m-%d %H:%M} UTC); import its document again to bring it back")
    if not live:
        raise HeraldConfigError(f"{what} {_shown(ref)}: tenant {tenant_id} has no workflows")
    shown = ", ".join(describe(row) for row in live[:5])
    more = f" and {len(live) - 5} more (herald workflows list --tenant {tenant_id})" if len(live) > 5 else ""
    raise HeraldConfigError(
        f"{what} {_shown(ref)}: tenant {tenant_id} has no workflow with that id, name or uuid"
        f" (its workflows: {shown}{more})")


async def list_workflows(conn: asyncpg.Connection, tenant_id: str | None) -> list[Any]:
    """The workflows (deleted ones aside), with how many runs each made and how many failed."""
    return list(await conn.fetch(LIST, tenant_id))


async def workflow_history(conn: asyncpg.Connection, workflow_id: Any) -> list[Any]:
    """Every version of a workflow, newest first: when it was saved, by whom, and its runs."""
    return list(await conn.fetch(HISTORY, workflow_id))


async def workflow_definition(conn: asyncpg.Connection, workflow: Any, version: int | None = None) -> Any:
    """A version of the workflow (default: the current one): its definition and when it was saved."""
    if version is None:
        return await conn.fetchrow(CURRENT, workflow["id"])
    row = await conn.fetchrow(VERSION, workflow["id"], version)
    if row is None:
        raise HeraldConfigError(f"workflow {describe(workflow)} has no version {version}"
                                f" (versions 1 to {workflow['version']})")
    return row


async def set_active(conn: asyncpg.Connection, workflow: Any, active: bool) -> bool:
    """Enable or disable a workflow; False when it already was. Enabling refuses a
    name another active workflow of the tenant has."""
    async with conn.transaction():
        await conn.execute(LOCK_TENANT, workflow["tenant_id"])
        current = await conn.fetchrow(BY_ID, workflow["id"])
        if current is None or current["deleted_at"] is not None:
            raise HeraldConfigError(f"workflow {describe(workflow)} was deleted")
        if current["is_active"] == active:
            return False
        if active:
            other = await conn.fetchrow(NAME_TAKEN, current["tenant_id"], current["name"], current["id"])
            if other is not None:
                raise HeraldConfigError(
                    f"workflow {describe(current)} cannot be enabled: tenant {current['tenant_id']} already has"
                    f" an active workflow of that name ({describe(other)}); disable it first")
        await conn.execute(SET_ACTIVE, current["id"], active)
    return True


@dataclass(frozen=True)
class Deleted:
    runs_kept: int
    cancelled: list[int]


async def delete_workflow(conn: asyncpg.Connection, workflow: Any, *, force: bool, by: str) -> Deleted:
    """Delete a workflow: it stops running and leaves lists and exports, and is kept
    (with its versions) so that its runs stay readable. Refused while runs of it are
    under way (pending, or running: waiting on a delay, say) unless ``force``, which
    cancels them."""
    async with conn.transaction():
        await conn.execute(LOCK_TENANT, workflow["tenant_id"])
        unfinished = [row["id"] for row in await conn.fetch(UNFINISHED_RUNS, workflow["id"])]
        if unfinished and not force:
            shown = ", ".join(map(str, unfinished[:10])) + (", …" if len(unfinished) > 10 else "")
            count = f"{len(unfinished)} run{'s' if len(unfinished) != 1 else ''}"
            raise HeraldConfigError(
                f"workflow {describe(workflow)} has {count} under way ({shown}): disable it and let them"
                " finish, or delete it with --force to cancel them")
        if unfinished:
            await conn.execute(CANCEL_RUNS, unfinished, f"cancelled: the workflow was deleted by {by}")
        await conn.execute(DELETE, workflow["id"])
        kept = await conn.fetchval(RUN_COUNT, workflow["id"])
    return Deleted(int(kept), unfinished)


# -- checks ----------------------------------------------------------------------


def _step_prefix(document: Any) -> str:
    """Where a step's configuration is in the document, as errors name it."""
    return "steps[{}].config" if isinstance(document, dict) and "steps" in document else "actions[{}].args"


async def template_warnings(
    conn: asyncpg.Connection, spec: WorkflowSpec, document: Any = None,
) -> list[str]:
    """Templates reading columns that the trigger's entity or its relations lack,
    each as ``steps[0].config.subject: job has no column 'titel' (public.jobs)``.

    ``spec`` as :func:`save_workflow` returns it: its trigger read against the watched
    entities; ``document``, the document it was read from (names the fields).
    """
    watched = await conn.fetchrow(WATCHED_BY_ENTITY, spec.trigger.entity)
    if watched is None:
        return []
    tables = {spec.trigger.entity: watched["table_name"]}
    tables |= {name: relation["table"] for name, relation in watched["relations"].items()}
    columns: dict[str, set[str]] = {}
    for name, table in tables.items():
        columns[name] = {row["attname"] for row in await conn.fetch(COLUMNS, table)}
    prefix = _step_prefix(document if document is not None else {"steps": []})
    warnings = []
    for index, step in enumerate(spec.steps):
        for path, source in template_strings(step.config, prefix.format(index)):
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
    prefix = _step_prefix(document)
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
