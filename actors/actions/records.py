"""create_task, create_note and update_record: rows in the app's own tables.

Where tasks and notes go, and which columns update_record may change, is
configured per watched table (``herald watch TABLE --tasks-table T
--notes-table N --updatable col,col``). The write commits in the same
transaction as the step's status, so it happens exactly once.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from actors.actions.base import Action, Done, Param, StepRun, register
from actors.templates import camel_to_snake
from config.database import quote_ident, quote_qualified
from config.errors import StepError, WorkflowValidationError

TABLE_COLUMNS = """
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
"""

# Keys of the step configuration that are not columns.
NOT_COLUMNS = {"actionType"}


async def table_columns(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch(TABLE_COLUMNS, quote_qualified(table))
    if not rows:
        raise StepError(f"table {table} does not exist")
    return {row["name"]: row["type"] for row in rows}


def _as_text(value: Any) -> str | None:
    """Values reach PostgreSQL as text and are cast to each column's type there."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _placeholder(index: int, column_type: str) -> str:
    return f"${index}::text::{column_type}"


class _CreateRow(Action):
    atomic = True
    actor = "records"
    target_option: str

    def check(self, config: dict[str, Any], field: str) -> None:  # type: ignore[override]
        if not [key for key in config if key not in NOT_COLUMNS]:
            raise WorkflowValidationError(field, f"{self.name} needs at least one column value")

    async def execute(self, run: StepRun) -> Done:
        step = run.step
        target = (step["action_targets"] or {}).get(self.name)
        if not target:
            raise StepError(
                f"no table is configured for {self.name} on {step['table_name']}; run"
                f" `herald watch {step['table_name']} {self.target_option} TABLE`"
            )
        columns = await table_columns(run.conn, target)
        values = {
            camel_to_snake(key): run.render_object(value, key)
            for key, value in run.config.items() if key not in NOT_COLUMNS
        }
        tenant_column = step["tenant_column"]
        if tenant_column and tenant_column in columns:
            if values.setdefault(tenant_column, step["tenant_id"]) != step["tenant_id"]:
                raise StepError(f"{self.name} may not write rows of another tenant")
        unknown = sorted(set(values) - set(columns))
        if unknown:
            raise StepError(
                f"{target} has no column {', '.join(map(repr, unknown))}"
                f" (columns: {', '.join(sorted(columns))})"
            )
        run.rendered.update(values)
        names = list(values)
        returning = " RETURNING id::text" if "id" in columns else ""
        sql = (
            f"INSERT INTO {quote_qualified(target)} ({', '.join(map(quote_ident, names))})"
            f" VALUES ({', '.join(_placeholder(i + 1, columns[n]) for i, n in enumerate(names))})"
            + returning
        )
        try:
            row_id = await run.conn.fetchval(sql, *(_as_text(values[n]) for n in names))
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise StepError(f"{target} refused the row: {exc}") from None
        return Done({"table": target, "id": row_id})


@register
class CreateTask(_CreateRow):
    name = "create_task"
    target_option = "--tasks-table"


@register
class CreateNote(_CreateRow):
    name = "create_note"
    target_option = "--notes-table"


FIELDS = Param("fields", kind="object", required=True)


@register
class UpdateRecord(Action):
    """Change allowlisted columns of the row the event is about."""

    name = "update_record"
    actor = "records"
    atomic = True
    params = (FIELDS,)

    def check(self, config: dict[str, Any], field: str) -> None:  # type: ignore[override]
        if not config["fields"]:
            raise WorkflowValidationError(f"{field}.fields", "must name at least one column")

    async def execute(self, run: StepRun) -> Done:
        step = run.step
        table = step["table_name"]
        fields = {camel_to_snake(k): run.render_object(v, f"fields.{k}")
                  for k, v in dict(run.param(FIELDS)).items()}
        allowed = set(step["updatable_columns"] or ())
        refused = sorted(set(fields) - allowed)
        if refused:
            allowed_text = ", ".join(sorted(allowed)) or "none"
            raise StepError(
                f"update_record may not change {', '.join(map(repr, refused))} on {table}"
                f" (allowed: {allowed_text}; see `herald watch {table} --updatable`)"
            )
        columns = await table_columns(run.conn, table)
        run.rendered["fields"] = fields
        names = list(fields)
        assignments = ", ".join(
            f"{quote_ident(n)} = {_placeholder(i + 1, columns[n])}" for i, n in enumerate(names))
        id_column, tenant_column = step["id_column"], step["tenant_column"]
        where = f"{quote_ident(id_column)} = {_placeholder(len(names) + 1, columns[id_column])}"
        args = [*(_as_text(fields[n]) for n in names), step["row_id"]]
        if tenant_column:
            where += f" AND {quote_ident(tenant_column)} = {_placeholder(len(names) + 2, columns[tenant_column])}"
            args.append(step["tenant_id"])
        # The change this causes is marked as Herald's own, so it cannot re-trigger this workflow.
        await run.conn.execute("SELECT set_config('herald.origin_run', $1, true)", str(step["run_id"]))
        try:
            status = await run.conn.execute(f"UPDATE {quote_qualified(table)} SET {assignments} WHERE {where}", *args)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise StepError(f"{table} refused the update: {exc}") from None
        if status == "UPDATE 0":
            raise StepError(f"{table} row {step['row_id']} no longer exists")
        return Done({"table": table, "updated": names})
