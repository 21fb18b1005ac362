"""create_task, create_note and update_record: rows in the app's own tables.

Where tasks and notes go, and which columns update_record may change, is
configured per watched table (``herald watch TABLE --tasks-table T
--notes-table N --updatable col,col``). The write commits in the same
transaction as the step's status, so it happens exactly once.

A step's keys name columns as the table has them, or in the other spelling
(``patientId`` for ``patient_id`` and the other way round); the columns an ORM
would fill on the client are filled as actors/tables.py says.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from actors.actions.base import Action, Done, StepRun, register
from actors.model.actions import (
    FIELDS,
    NOT_COLUMNS,
    CreateNoteSpec,
    CreateTaskSpec,
    UpdateRecordSpec,
)
from actors.tables import TableShape, fill_value, table_shape
from config.database import quote_ident, quote_qualified
from config.errors import StepError


def as_text(value: Any) -> str | None:
    """Values reach PostgreSQL as text and are cast to each column's type there."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _placeholder(index: int, column_type: str) -> str:
    return f"${index}::text::{column_type}"


class _CreateRow(Action):
    async def execute(self, run: StepRun) -> Done:
        step = run.step
        target = (step["action_targets"] or {}).get(self.name)
        if run.preview and run.conn is None:
            # No database to read the table from: the row is the keys as written, rendered.
            row = {key: run.render_object(value, key) for key, value in run.config.items() if key not in NOT_COLUMNS}
            run.rendered.update(row)
            return Done({"preview": True, "table": target, "row": row})
        if not target:
            raise StepError(
                f"no table is configured for {self.name} on {step['table_name']}; run"
                f" `herald watch {step['table_name']} {self.target_option} TABLE`"
            )
        shape = await table_shape(run.conn, target)
        values = _by_column(shape, {
            key: run.render_object(value, key) for key, value in run.config.items() if key not in NOT_COLUMNS
        }, self.name)
        tenant_column = step["tenant_column"]
        if tenant_column and tenant_column in shape.columns:
            if values.setdefault(tenant_column, step["tenant_id"]) != step["tenant_id"]:
                raise StepError(f"{self.name} may not write rows of another tenant")
        run.rendered.update(values)
        fills = shape.insert_fills(step.get("fills") or {}, values)
        unfilled = shape.unfillable_key()
        if unfilled is not None and unfilled.name not in values and unfilled.name not in fills:
            raise StepError(
                f"{target}.{unfilled.name} ({unfilled.type}) has no default and Herald cannot make up"
                f" its value: give it a default (an identity or a sequence) or set {unfilled.name} in the step")
        names, expressions, args = _expressions(shape, values, fills)
        if run.preview:
            await _check_row(run.conn, shape, names, expressions, args, "the row")
            return Done({"preview": True, "table": target, "row": values, "filled": fills})
        key = shape.primary_key
        returning = f" RETURNING {quote_ident(key)}::text" if key else ""
        sql = (f"INSERT INTO {quote_qualified(target)} ({', '.join(map(quote_ident, names))})"
               f" VALUES ({', '.join(expressions)}){returning}")
        try:
            row_id = await run.conn.fetchval(sql, *args)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise StepError(f"{target} refused the row: {exc}") from None
        except asyncpg.InsufficientPrivilegeError as exc:
            raise StepError(f"Herald may not write to {target}: {exc}") from None
        return Done({"table": target, "id": row_id, **({"filled": sorted(fills)} if fills else {})})


def _by_column(shape: TableShape, values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` keyed by the column each key names; two keys naming one column are an error."""
    by_column: dict[str, Any] = {}
    for key, value in values.items():
        column = shape.writable(key, what).name
        if column in by_column:
            raise StepError(f"{what} sets {shape.table}.{column} twice (as {key!r} and another spelling)")
        by_column[column] = value
    return by_column


def _expressions(
    shape: TableShape, values: dict[str, Any], fills: dict[str, str], first: int = 1,
) -> tuple[list[str], list[str], list[str | None]]:
    """Columns, their SQL expressions and the query's arguments (numbered from
    ``first``): each value as a placeholder cast to its column's type, each fill
    as now() or a generated id."""
    names: list[str] = []
    expressions: list[str] = []
    args: list[str | None] = []
    for name, value in [*values.items(), *((n, kind) for n, kind in fills.items())]:
        names.append(name)
        if name in fills and name not in values:
            if fills[name] == "now":
                expressions.append("now()")
                continue
            value = fill_value(fills[name])
        args.append(as_text(value))
        expressions.append(_placeholder(first + len(args) - 1, shape.columns[name].type))
    return names, expressions, args


async def _check_row(conn: asyncpg.Connection, shape: TableShape, names: list[str], expressions: list[str],
                     args: list[str | None], what: str) -> None:
    """For a preview: cast every value to its column's type as the write would, in a
    SELECT that writes nothing; a value the column cannot hold fails the step as the
    write would. An insert also needs every NOT NULL column without a default."""
    if what == "the row":
        missing = [c.name for c in shape.columns.values() if c.not_null and not c.has_default
                   and not c.generated and c.name not in names]
        if missing:
            raise StepError(f'{shape.table} would refuse {what}: null value in column "{missing[0]}"'
                            " (NOT NULL, no default, not set by the step)")
    if not expressions:
        return
    try:
        async with conn.transaction():  # a savepoint: a refused cast leaves the caller's transaction usable
            await conn.fetchrow(f"SELECT {', '.join(expressions)}", *args)
    except asyncpg.DataError as exc:
        raise StepError(f"{shape.table} would refuse {what}: {exc}") from None


@register
class CreateTask(CreateTaskSpec, _CreateRow):
    """A row in the watched table's tasks table."""


@register
class CreateNote(CreateNoteSpec, _CreateRow):
    """A row in the watched table's notes table."""


@register
class UpdateRecord(UpdateRecordSpec, Action):
    """Change allowlisted columns of the row the event is about."""

    async def execute(self, run: StepRun) -> Done:
        step = run.step
        table = step["table_name"]
        if run.preview and run.conn is None:
            # No database to read the table from: the fields as written, rendered.
            fields = {key: run.render_object(value, f"fields.{key}")
                      for key, value in dict(run.param(FIELDS)).items()}
            run.rendered["fields"] = fields
            return Done({"preview": True, "table": table, "fields": fields})
        shape = await table_shape(run.conn, table)
        fields = _by_column(shape, {
            key: run.render_object(value, f"fields.{key}") for key, value in dict(run.param(FIELDS)).items()
        }, self.name)
        allowed = set(step["updatable_columns"] or ())
        refused = sorted(set(fields) - allowed)
        if refused:
            allowed_text = ", ".join(sorted(allowed)) or "none"
            raise StepError(
                f"update_record may not change {', '.join(map(repr, refused))} on {table}"
                f" (allowed: {allowed_text}; see `herald watch {table} --updatable`)"
            )
        run.rendered["fields"] = fields
        fills = shape.update_fills(step.get("fills") or {}, fields)
        names, expressions, args = _expressions(shape, fields, fills)
        if run.preview:
            await _check_row(run.conn, shape, names, expressions, args, "the update")
            return Done({"preview": True, "table": table, "fields": fields, "filled": fills})
        assignments = ", ".join(f"{quote_ident(n)} = {e}" for n, e in zip(names, expressions))
        where = []
        for column_name, value in ((step["id_column"], step["row_id"]), (step["tenant_column"], step["tenant_id"])):
            if column_name:
                column = shape.column(column_name, "finding the event's row")
                args.append(value)
                where.append(f"{quote_ident(column.name)} = {_placeholder(len(args), column.type)}")
        # The change this causes is marked as Herald's own, so it cannot re-trigger this workflow:
        # for the capture trigger by a setting, in the WAL by a message (daemon/wal_capture.py).
        await run.conn.execute(
            "SELECT set_config('herald.origin_run', $1, true),"
            " CASE WHEN $2 THEN pg_logical_emit_message(true, 'herald.origin_run', $1) END",
            str(step["run_id"]), step.get("capture") == "wal")
        sql = f"UPDATE {quote_qualified(table)} SET {assignments} WHERE {' AND '.join(where)}"
        try:
            status = await run.conn.execute(sql, *args)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise StepError(f"{table} refused the update: {exc}") from None
        except asyncpg.InsufficientPrivilegeError as exc:
            raise StepError(f"Herald may not update {table}: {exc}") from None
        if status == "UPDATE 0":
            raise StepError(f"{table} row {step['row_id']} no longer exists")
        return Done({"table": table, "updated": list(fields), **({"filled": sorted(fills)} if fills else {})})
