"""`herald watch` / `herald unwatch`: capture a business table's changes.

Capture writes each inserted, updated (changed) and deleted row to herald.events
in the same transaction as the change, one set-based INSERT per statement, and
NOTIFYs the daemon once per transaction (config/migrations/019_capture_per_statement.sql).
It runs with Herald's rights (config/migrations/010_existing_databases.sql), so
the application's own roles keep writing their tables as before.

Tables are named as PostgreSQL does (``jobs``, ``crm.work_orders``,
``'"Appointment"'``); an unquoted name that only exists in another case
(``Appointment``) is taken when exactly one table has it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import asyncpg

from actors.model.naming import camel_to_snake
from actors.tables import FILL_KINDS, TableShape, table_shape
from config.database import quote_ident, quote_qualified
from config.errors import HeraldConfigError, StepError
from daemon import wal_setup
from daemon.access import Needs, access_report

RESOLVE_TABLE = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
"""

# An unquoted name in another case: "Appointment" written without its quotes.
RESOLVE_BY_NAME = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE lower(c.relname) = lower($2) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND CASE WHEN $1::text IS NULL THEN n.nspname = ANY (current_schemas(false))
           ELSE lower(n.nspname) = lower($1) END
ORDER BY n.nspname, c.relname
"""

UPSERT_WATCHED = """
INSERT INTO herald.watched_tables
    (table_name, entity, id_column, tenant_column, relations, action_targets, updatable_columns, fills, capture)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (table_name) DO UPDATE
SET entity = EXCLUDED.entity, id_column = EXCLUDED.id_column,
    tenant_column = EXCLUDED.tenant_column, relations = EXCLUDED.relations,
    action_targets = EXCLUDED.action_targets, updatable_columns = EXCLUDED.updatable_columns,
    fills = EXCLUDED.fills, capture = EXCLUDED.capture
"""

ENTITY_OWNER = "SELECT table_name FROM herald.watched_tables WHERE entity = $1 AND table_name <> $2"
WORKFLOWS_OF_ENTITY = """
SELECT count(*) FROM herald.workflows w
WHERE w.is_active AND (w.trigger_type LIKE $1 || '\\_%' OR w.trigger_type LIKE 'crm/' || $1 || '.%')
"""

# What `herald watch` installs on a table (migration 019): per statement for
# inserts, updates and deletes; a partitioned table has herald_capture (inserts
# and deletes, per row) and herald_capture_update only. A table captured from
# the WAL has none (migration 022, daemon/wal_setup.py).
CAPTURE_TRIGGERS = ("herald_capture", "herald_capture_update", "herald_capture_delete")
CAPTURE_MODES = ("trigger", "wal")

ENTITY = re.compile(r"^[a-z][a-z0-9_]*$")
_TABLE_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view", "f": "foreign table"}


@dataclass(frozen=True)
class Relation:
    """``client=clients:client_id``: the row of ``clients`` whose key (its primary
    key, or ``:KEY`` given as a fourth part) is the watched row's ``client_id``,
    available to templates as ``client``."""

    name: str
    table: str
    column: str
    key: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Relation:
        name, sep, target = spec.partition("=")
        parts = target.split(":")
        if not (sep and name and len(parts) in (2, 3) and all(parts)):
            raise HeraldConfigError(
                f"relation {spec!r} must look like NAME=TABLE:COLUMN[:KEY], e.g. client=clients:client_id"
            )
        return cls(name, parts[0], parts[1], parts[2] if len(parts) == 3 else None)


@dataclass
class Watched:
    """What `herald watch` set up, and what the user should know about it."""

    table: str
    entity: str
    id_column: str
    warnings: list[str] = field(default_factory=list)


def default_entity(table_name: str) -> str:
    """jobs -> job, companies -> company, "WorkOrders" -> work_order: the singular,
    in snake_case, used in trigger names."""
    name = camel_to_snake(table_name)
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith("s") and not name.endswith("ss"):
        return name[:-1]
    return name


def _split_unquoted(table: str) -> tuple[str | None, str] | None:
    """``schema.name`` or ``name`` written without quotes; None for anything else."""
    if '"' in table:
        return None
    schema, dot, name = table.rpartition(".")
    return (schema if dot else None), name


async def resolve_table(conn: asyncpg.Connection, table: str, what: str = "table") -> str:
    """``table`` as ``schema.name``: a table or partitioned table that exists."""
    try:
        row = await conn.fetchrow(RESOLVE_TABLE, table)
    except asyncpg.PostgresError as exc:
        raise HeraldConfigError(f"{what} {table!r} is not a table name: {exc}") from None
    if row is None and (parts := _split_unquoted(table)) is not None:
        rows = await conn.fetch(RESOLVE_BY_NAME, *parts)
        exact = [r for r in rows if r["name"] == parts[1]]
        if len(exact) == 1:
            row = exact[0]
        elif rows:
            names = ", ".join(quote_qualified(f"{r['schema']}.{r['name']}") for r in rows)
            raise HeraldConfigError(f"{what} {table!r} does not exist; did you mean {names}?"
                                    " (a mixed-case name is written in double quotes)")
    if row is None:
        raise HeraldConfigError(f"{what} {table!r} does not exist")
    if row["kind"] not in ("r", "p"):
        raise HeraldConfigError(f"{what} {table!r} is a {_TABLE_KINDS.get(row['kind'], 'relation')}, not a table")
    return f"{row['schema']}.{row['name']}"


async def _shape(conn: asyncpg.Connection, table: str) -> TableShape:
    try:
        return await table_shape(conn, table)
    except StepError as exc:
        raise HeraldConfigError(str(exc)) from None


def _column(shape: TableShape, column: str, what: str) -> str:
    """The column as the table spells it (``patientId`` for patient_id, or the reverse)."""
    try:
        return shape.column(column, what).name
    except StepError as exc:
        raise HeraldConfigError(str(exc)) from None


def parse_fills(specs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["updatedAt=now", "id=cuid"]`` -> ``{"updatedAt": "now", "id": "cuid"}``."""
    fills = {}
    for spec in specs:
        column, sep, kind = spec.rpartition("=")
        if not (sep and column) or kind not in FILL_KINDS:
            raise HeraldConfigError(f"--fill {spec!r} must look like COLUMN=KIND, KIND one of {', '.join(FILL_KINDS)}")
        fills[column] = kind
    return fills


def _check_fills(fills: dict[str, str], shapes: list[TableShape]) -> dict[str, str]:
    """The fills with each column spelled as its tables have it; the kind must suit its type."""
    checked = {}
    for column, kind in fills.items():
        found = [(shape, shape.columns[name]) for shape in shapes
                 if (name := _optional_column(shape, column)) is not None]
        if not found:
            tables = ", ".join(shape.table for shape in shapes)
            raise HeraldConfigError(f"--fill {column}: no column {column!r} in {tables}")
        for shape, col in found:
            suits = {"now": col.category == "D", "uuid": col.is_uuid or col.category == "S",
                     "cuid": col.category == "S", "none": True}[kind]
            if not suits:
                raise HeraldConfigError(f"--fill {column}={kind}: {shape.table}.{col.name} is {col.type}")
            checked[col.name] = kind
    return checked


def _optional_column(shape: TableShape, column: str) -> str | None:
    try:
        return shape.column(column, "--fill").name
    except StepError:
        return None


async def watch_table(
    conn: asyncpg.Connection,
    table: str,
    *,
    tenant_column: str | None = None,
    entity: str | None = None,
    id_column: str | None = None,
    relations: tuple[Relation, ...] = (),
    tasks_table: str | None = None,
    notes_table: str | None = None,
    updatable: tuple[str, ...] = (),
    fills: dict[str, str] | None = None,
    capture: str = "trigger",
) -> Watched:
    """Install (or refresh) capture on ``table``; say what was set up.

    ``id_column`` defaults to the table's primary key; ``tasks_table`` /
    ``notes_table`` are where create_task / create_note write for this table's
    events; ``updatable`` lists the columns update_record may change; ``fills``
    what Herald fills in the rows it writes (actors/tables.py); ``capture``
    whether triggers capture its changes or the daemon reads them from the
    write-ahead log (``wal``, daemon/wal_setup.py). Raises
    HeraldConfigError naming what is wrong, and every privilege Herald's role lacks.
    """
    if capture not in CAPTURE_MODES:
        raise HeraldConfigError(f"--capture must be one of {', '.join(CAPTURE_MODES)}, not {capture!r}")
    qualified = await resolve_table(conn, table)
    shape = await _shape(conn, qualified)
    entity = entity or default_entity(qualified.partition(".")[2])
    if not ENTITY.match(entity):
        raise HeraldConfigError(
            f"entity {entity!r} must be lower-case letters, digits and underscores, starting with a letter;"
            " name it with --entity")
    owner = await conn.fetchval(ENTITY_OWNER, entity, qualified)
    if owner is not None:
        raise HeraldConfigError(f"entity {entity!r} is already {owner}'s; give this table another with --entity")
    id_column = _column(shape, id_column or shape.primary_key or "id", "--id-column")
    if tenant_column:
        tenant_column = _column(shape, tenant_column, "--tenant-column")
    needs = Needs()
    needs.read(qualified, {id_column, *([tenant_column] if tenant_column else [])})
    needs.trigger(qualified)
    relation_map = {}
    for relation in relations:
        column = _column(shape, relation.column, f"relation {relation.name}")
        target = await resolve_table(conn, relation.table, f"relation {relation.name}'s table")
        target_shape = await _shape(conn, target)
        key = _column(target_shape, relation.key or target_shape.primary_key or "id", f"relation {relation.name}'s key")
        relation_map[relation.name] = {
            "table": target, "column": column, "key": key, "key_type": target_shape.columns[key].type,
        }
        needs.read(target, set(target_shape.columns))
    action_targets = {}
    target_shapes = []
    warnings = []
    for action, target_table in (("create_task", tasks_table), ("create_note", notes_table)):
        if target_table:
            target = await resolve_table(conn, target_table, f"the {action} table")
            action_targets[action] = target
            target_shape = await _shape(conn, target)
            target_shapes.append(target_shape)
            needs.insert(target, target_shape.primary_key)
            unfillable = target_shape.unfillable_key()
            if unfillable is not None:
                warnings.append(
                    f"{target}.{unfillable.name} ({unfillable.type}) has no default and Herald makes up only"
                    f" uuid and text ids: {action} steps must set {unfillable.name}, or give it a default")
    updatable = tuple(_column(shape, column, "--updatable") for column in updatable)
    protected = {id_column, tenant_column} & set(updatable)
    if protected:
        raise HeraldConfigError(f"update_record may not change {sorted(protected)[0]!r}: it identifies the row")
    generated = [c for c in updatable if shape.columns[c].generated]
    if generated:
        raise HeraldConfigError(f"--updatable {generated[0]}: a generated column cannot be changed")
    checked_fills = _check_fills(fills or {}, [shape, *target_shapes])
    if updatable:
        needs.update(qualified, set(updatable) | set(shape.update_fills(checked_fills, updatable)))
    report = await access_report(conn, needs)
    if report.missing:
        raise HeraldConfigError(report.missing_text())
    warnings.extend(report.warnings)
    if capture == "wal":
        have = await wal_setup.check(conn, qualified)
        await wal_setup.ensure_slot(conn, have["database"])
    async with conn.transaction():
        if capture == "wal":
            await wal_setup.install(conn, qualified, have, CAPTURE_TRIGGERS)
        else:
            if await wal_setup.remove(conn, qualified):
                warnings.append(f"{qualified} keeps REPLICA IDENTITY FULL, which capture from the WAL set: if"
                                f" nothing else needs it, ALTER TABLE {quote_qualified(qualified)}"
                                " REPLICA IDENTITY DEFAULT;")
            # config/migrations/019_capture_per_statement.sql: per statement, or per
            # row on a partitioned table.
            await conn.execute("SELECT herald.install_capture($1::regclass, $2, $3, $4, $5)",
                               quote_qualified(qualified), entity, id_column, tenant_column, qualified)
        await conn.execute(UPSERT_WATCHED, qualified, entity, id_column, tenant_column, relation_map,
                           action_targets, list(updatable), checked_fills, capture)
    return Watched(qualified, entity, id_column, warnings)


async def unwatch_table(conn: asyncpg.Connection, table: str) -> tuple[str, int]:
    """Remove capture from ``table`` (its events so far stay); return its name and
    how many active workflows still name its entity (they will match nothing)."""
    qualified = await resolve_table(conn, table)
    async with conn.transaction():
        entity = await conn.fetchval(
            "DELETE FROM herald.watched_tables WHERE table_name = $1 RETURNING entity", qualified)
        drops = [f"DROP TRIGGER IF EXISTS {quote_ident(trigger)} ON {quote_qualified(qualified)};"
                 for trigger in CAPTURE_TRIGGERS]
        try:
            for drop in drops:
                await conn.execute(drop)
            await wal_setup.remove(conn, qualified)
        except asyncpg.InsufficientPrivilegeError:
            # Only a table's owner may drop its triggers (Herald's role may create them).
            raise HeraldConfigError(
                f"only the owner of {qualified} may remove its capture triggers: ask them to run"
                f" {' '.join(drops)} then run `herald unwatch {table}` again") from None
    if entity is None:
        raise HeraldConfigError(f"{qualified} is not watched")
    return qualified, int(await conn.fetchval(WORKFLOWS_OF_ENTITY, entity))

