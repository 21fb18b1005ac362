"""Application tables as Herald writes to them: their columns, and what an ORM
would have filled in on the client.

ORMs fill some columns themselves rather than leaving it to a database
default: Prisma's ``cuid()`` / ``uuid()`` ids and ``@updatedAt``, Rails'
``created_at`` / ``updated_at``, Ecto's ``inserted_at``, Django's ``auto_now``.
A row Herald writes into such a table must get them too, or PostgreSQL
refuses it (``null value in column "id"``). What Herald fills:

* a primary key column without a default: ``uuid`` for a uuid column, ``cuid``
  for a text one (25 characters: ``c``, then 8 of time and 16 random, in
  lower-case base 36, like Prisma's ``cuid()``); Herald does not make up
  numbers for an integer key (give it an identity or a sequence);
* ``NOT NULL`` date/time columns without a default named like an ORM's
  timestamps (:data:`TIMESTAMP_COLUMNS`): the current time on insert, and for
  those meaning "last changed" (:data:`TOUCHED_COLUMNS`) on update too;
* anything set per watched table with ``herald watch --fill COLUMN=KIND``
  (``now``, ``uuid``, ``cuid``, or ``none`` to fill nothing there).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import asyncpg

from actors.model.naming import AmbiguousName, column_for
from config.database import quote_qualified
from config.errors import StepError

TABLE_SHAPE = """
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       coalesce(bt.typcategory, t.typcategory)::text AS category, a.attnotnull AS not_null,
       (a.atthasdef OR a.attidentity <> '') AS has_default, a.attgenerated <> '' AS generated,
       coalesce(a.attnum = ANY (pk.indkey::int2[]), false) AS primary_key
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

FILL_KINDS = ("now", "uuid", "cuid", "none")
# What ORMs name the timestamps they set themselves.
TIMESTAMP_COLUMNS = frozenset({"created_at", "updated_at", "inserted_at", "createdAt", "updatedAt"})
# ...and of those, the ones meaning "last changed", set on every update too.
TOUCHED_COLUMNS = frozenset({"updated_at", "updatedAt"})
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    category: str  # PostgreSQL's type category: D date/time, S string, N number, U user (uuid)...
    not_null: bool
    has_default: bool  # a default, an identity or a generated expression
    generated: bool
    primary_key: bool

    @property
    def is_uuid(self) -> bool:
        return self.type == "uuid"


@dataclass(frozen=True)
class TableShape:
    """A table's columns, in order, as PostgreSQL has them now."""

    table: str
    columns: dict[str, Column]

    @property
    def primary_key(self) -> str | None:
        """The primary key column, when the key is one column."""
        keys = [c.name for c in self.columns.values() if c.primary_key]
        return keys[0] if len(keys) == 1 else None

    def column(self, key: str, what: str) -> Column:
        """The column a workflow's ``key`` names (exact, then snake_case or camelCase
        spelling); a :class:`StepError` naming the table's columns if there is none."""
        try:
            name = column_for(key, self.columns)
        except AmbiguousName as exc:
            raise StepError(f"{self.table}: {what} names {exc}; write the column's exact name") from None
        if name is None:
            raise StepError(f"{self.table} has no column {key!r} for {what}"
                            f" (columns: {', '.join(self.columns)})")
        return self.columns[name]

    def writable(self, key: str, what: str) -> Column:
        column = self.column(key, what)
        if column.generated:
            raise StepError(f"{self.table}.{column.name} is a generated column; {what} cannot set it")
        return column

    def insert_fills(self, configured: Mapping[str, str], given: Iterable[str]) -> dict[str, str]:
        """Column -> fill kind for a new row, for the columns the workflow left out."""
        given = set(given)
        fills = {}
        for column in self.columns.values():
            if column.name in given or column.generated:
                continue
            kind = configured.get(column.name) or self._default_insert_fill(column)
            if kind and kind != "none":
                fills[column.name] = kind
        return fills

    def update_fills(self, configured: Mapping[str, str], given: Iterable[str]) -> dict[str, str]:
        """Column -> "now" for the "last changed" columns an update must move."""
        given = set(given)
        fills = {}
        for column in self.columns.values():
            if column.name in given or column.generated or column.category != "D":
                continue
            kind = configured.get(column.name)
            if kind is None and column.name in TOUCHED_COLUMNS and column.not_null and not column.has_default:
                kind = "now"
            if kind == "now":
                fills[column.name] = kind
        return fills

    def _default_insert_fill(self, column: Column) -> str | None:
        if column.has_default:
            return None
        if column.primary_key and self.primary_key == column.name:
            if column.is_uuid:
                return "uuid"
            if column.category == "S":
                return "cuid"
            return None
        if column.not_null and column.category == "D" and column.name in TIMESTAMP_COLUMNS:
            return "now"
        return None

    def unfillable_key(self) -> Column | None:
        """A primary key column that has no default and that Herald cannot fill."""
        name = self.primary_key
        if name is None:
            return None
        column = self.columns[name]
        return None if column.has_default or self._default_insert_fill(column) else column


async def table_shape(conn: asyncpg.Connection, table: str) -> TableShape:
    rows = await conn.fetch(TABLE_SHAPE, quote_qualified(table))
    if not rows:
        raise StepError(f"table {table} does not exist")
    return TableShape(table, {row["name"]: Column(**dict(row)) for row in rows})


def cuid() -> str:
    """A 25-character text id: "c", 8 base-36 digits of the time in ms, 16 random."""
    return "c" + _base36(int(time.time() * 1000), 8) + "".join(secrets.choice(_BASE36) for _ in range(16))


def _base36(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits))


def fill_value(kind: str) -> str | None:
    """The value of a fill, as text for PostgreSQL to cast; None for "now" (SQL's now())."""
    if kind == "uuid":
        return str(uuid.uuid4())
    if kind == "cuid":
        return cuid()
    return None
