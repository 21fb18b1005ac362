"""`herald watch`: install the capture trigger on a business table.

The trigger writes each INSERT, UPDATE (that changes something) and DELETE to
herald.events in the same transaction as the change, and NOTIFYs the event id.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from config.database import quote_qualified
from config.errors import HeraldConfigError

RESOLVE_TABLE = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')
"""

COLUMN_TYPE = """
SELECT format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped
"""

UPSERT_WATCHED = """
INSERT INTO herald.watched_tables
    (table_name, entity, id_column, tenant_column, relations, action_targets, updatable_columns)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (table_name) DO UPDATE
SET entity = EXCLUDED.entity, id_column = EXCLUDED.id_column,
    tenant_column = EXCLUDED.tenant_column, relations = EXCLUDED.relations,
    action_targets = EXCLUDED.action_targets, updatable_columns = EXCLUDED.updatable_columns
"""


@dataclass(frozen=True)
class Relation:
    """``client=clients:client_id``: the row of ``clients`` whose id is the
    watched row's ``client_id``, available to templates as ``client``."""

    name: str
    table: str
    column: str
    key: str = "id"

    @classmethod
    def parse(cls, spec: str) -> Relation:
        name, sep, target = spec.partition("=")
        table, sep2, column = target.partition(":")
        if not (sep and sep2 and name and table and column):
            raise HeraldConfigError(
                f"relation {spec!r} must look like NAME=TABLE:COLUMN, e.g. client=clients:client_id"
            )
        return cls(name, table, column)


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def default_entity(table_name: str) -> str:
    """jobs -> job, companies -> company: the singular used in trigger names."""
    if table_name.endswith("ies"):
        return table_name[:-3] + "y"
    if table_name.endswith("s") and not table_name.endswith("ss"):
        return table_name[:-1]
    return table_name


async def _qualified(conn: asyncpg.Connection, table: str) -> str:
    row = await conn.fetchrow(RESOLVE_TABLE, table)
    if row is None:
        raise HeraldConfigError(f"table {table!r} does not exist")
    return f"{row['schema']}.{row['name']}"


async def _column_type(conn: asyncpg.Connection, table: str, column: str) -> str:
    column_type = await conn.fetchval(COLUMN_TYPE, quote_qualified(table), column)
    if column_type is None:
        raise HeraldConfigError(f"table {table} has no column {column!r}")
    return str(column_type)


async def watch_table(
    conn: asyncpg.Connection,
    table: str,
    *,
    tenant_column: str | None = None,
    entity: str | None = None,
    id_column: str = "id",
    relations: tuple[Relation, ...] = (),
    tasks_table: str | None = None,
    notes_table: str | None = None,
    updatable: tuple[str, ...] = (),
) -> str:
    """Install (or refresh) capture on ``table``; return its qualified name.

    ``tasks_table`` / ``notes_table`` are where create_task / create_note
    write for this table's events; ``updatable`` lists the columns
    update_record may change.
    """
    qualified = await _qualified(conn, table)
    entity = entity or default_entity(qualified.partition(".")[2])
    await _column_type(conn, qualified, id_column)
    if tenant_column:
        await _column_type(conn, qualified, tenant_column)
    relation_map = {}
    for relation in relations:
        await _column_type(conn, qualified, relation.column)
        target = await _qualified(conn, relation.table)
        relation_map[relation.name] = {
            "table": target,
            "column": relation.column,
            "key": relation.key,
            "key_type": await _column_type(conn, target, relation.key),
        }
    action_targets = {}
    for action, target_table in (("create_task", tasks_table), ("create_note", notes_table)):
        if target_table:
            action_targets[action] = await _qualified(conn, target_table)
    for column in updatable:
        await _column_type(conn, qualified, column)
    protected = {id_column, tenant_column} & set(updatable)
    if protected:
        raise HeraldConfigError(f"update_record may not change {sorted(protected)[0]!r}: it identifies the row")
    args = ", ".join(quote_literal(arg) for arg in (entity, id_column, tenant_column or ""))
    target_sql = quote_qualified(qualified)
    async with conn.transaction():
        await conn.execute(
            f"CREATE OR REPLACE TRIGGER herald_capture AFTER INSERT OR DELETE ON {target_sql}"
            f" FOR EACH ROW EXECUTE FUNCTION herald.capture_change({args})"
        )
        # An UPDATE that changes nothing is not an event.
        await conn.execute(
            f"CREATE OR REPLACE TRIGGER herald_capture_update AFTER UPDATE ON {target_sql}"
            f" FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)"
            f" EXECUTE FUNCTION herald.capture_change({args})"
        )
        await conn.execute(UPSERT_WATCHED, qualified, entity, id_column, tenant_column, relation_map,
                           action_targets, list(updatable))
    return qualified


