"""Time triggers: invoice overdue, client inactive, cron.

One daemon at a time evaluates them: the leader holds a PostgreSQL advisory
lock on a dedicated connection, and when it dies the lock is released with
its session and another daemon takes over. Each pass writes an ordinary
outbox event (operation SCHEDULED, aimed at the one workflow) for every
entity that has become due, together with a row in herald.schedule_fires
keyed by entity and occurrence, so nothing fires twice across passes or
restarts. The usual dispatcher and workers take it from there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import structlog
from croniter import croniter

from actors.triggers import TIME_TRIGGERS, Trigger, parse_trigger
from config.database import DATABASE_ERRORS, connect, quote_ident, quote_qualified
from config.errors import WorkflowValidationError
from daemon.loops import every

log = structlog.get_logger(__name__)

LEADER_LOCK = 0x4845_5253  # "HERS": the scheduler's advisory lock

TIME_WORKFLOWS = """
SELECT id, tenant_id, definition, created_at FROM herald.workflows
WHERE is_active AND trigger_type = ANY($1::text[])
ORDER BY id
"""

TENANT_COLUMN = "SELECT tenant_column FROM herald.watched_tables WHERE table_name = $1"

RESOLVE_TABLE = """
SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
"""

# A fire not recorded yet for this workflow and occurrence: the unique key makes it once only.
RECORD_FIRES = """
INSERT INTO herald.schedule_fires (workflow_id, fire_key)
SELECT $1, k FROM unnest($2::text[]) AS k
ON CONFLICT DO NOTHING
RETURNING fire_key
"""

WRITE_EVENT = """
INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, new, workflow_id)
VALUES ($1, $2, $3, $4, 'SCHEDULED', $5, $6, $7)
RETURNING id
"""

LINK_FIRE = "UPDATE herald.schedule_fires SET event_id = $3 WHERE workflow_id = $1 AND fire_key = $2"

NOTIFY = "SELECT pg_notify('herald_events', $1::text)"


async def _tenant_filter(conn: asyncpg.Connection, table: str, tenant: str, alias: str,
                         index: int) -> tuple[str, list[Any]]:
    """SQL (and its argument) restricting ``alias`` to the workflow's tenant."""
    column = await conn.fetchval(TENANT_COLUMN, table)
    if column is None:
        # An unwatched table has no tenant: only the default tenant may use it.
        return ("TRUE", []) if tenant == "default" else ("FALSE", [])
    return f"{alias}.{quote_ident(column)}::text = ${index}", [tenant]


async def _qualified(conn: asyncpg.Connection, table: str) -> str | None:
    return await conn.fetchval(RESOLVE_TABLE, table)  # type: ignore[no-any-return]


async def overdue_invoices(conn: asyncpg.Connection, config: dict[str, Any], tenant: str,
                           now: dt.datetime) -> tuple[str, list[Any]]:
    table = await _qualified(conn, config["table"])
    if table is None:
        raise WorkflowValidationError("trigger_config.table", f"table {config['table']!r} does not exist")
    tenant_sql, tenant_args = await _tenant_filter(conn, table, tenant, "t", 4)
    due = quote_ident(config["due_column"])
    rows = await conn.fetch(
        f"SELECT t.id::text AS row_id, t.{due}::text AS occurrence, to_jsonb(t) AS row"
        f" FROM {quote_qualified(table)} t"
        f" WHERE t.{due} + make_interval(days => $1) < $2::timestamptz"
        f" AND NOT (t.{quote_ident(config['status_column'])}::text = ANY($3::text[]))"
        f" AND {tenant_sql}",
        config["days"], now, config["settled_statuses"], *tenant_args)
    return table, list(rows)


async def inactive_clients(conn: asyncpg.Connection, config: dict[str, Any], tenant: str,
                           now: dt.datetime) -> tuple[str, list[Any]]:
    table = await _qualified(conn, config["table"])
    activity = await _qualified(conn, config["activity_table"])
    if table is None or activity is None:
        raise WorkflowValidationError("trigger_config.table", "the client or activity table does not exist")
    tenant_sql, tenant_args = await _tenant_filter(conn, table, tenant, "c", 3)
    last = (f"coalesce(max(a.{quote_ident(config['activity_column'])}),"
            f" c.{quote_ident(config['created_column'])})")
    rows = await conn.fetch(
        f"SELECT c.id::text AS row_id, {last}::text AS occurrence, to_jsonb(c) AS row"
        f" FROM {quote_qualified(table)} c"
        f" LEFT JOIN {quote_qualified(activity)} a ON a.{quote_ident(config['activity_foreign_key'])} = c.id"
        f" WHERE {tenant_sql}"
        f" GROUP BY c.id HAVING {last} < $1::timestamptz - make_interval(days => $2)",
        now, config["days"], *tenant_args)
    return table, list(rows)


def last_cron_instant(config: dict[str, Any], now: dt.datetime) -> dt.datetime:
    """The latest scheduled instant at or before ``now`` (missed ones before it are not replayed)."""
    local = now.astimezone(ZoneInfo(config["timezone"]))
    if croniter.match(config["schedule"], local.replace(second=0, microsecond=0)):
        return local.replace(second=0, microsecond=0).astimezone(dt.UTC)
    instant: dt.datetime = croniter(config["schedule"], local).get_prev(dt.datetime)
    return instant.astimezone(dt.UTC)


Finder = Callable[[asyncpg.Connection, dict[str, Any], str, dt.datetime], Any]
FINDERS: dict[str, Finder] = {"invoice_overdue": overdue_invoices, "client_inactive": inactive_clients}


class Scheduler:
    """Fires time triggers while this daemon is the leader."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, *, interval_s: float) -> None:
        self.dsn = dsn
        self.pool = pool
        self.interval_s = interval_s
        self._leader_conn: asyncpg.Connection | None = None

    async def is_leader(self) -> bool:
        """Hold (or try to take) the leader lock on a dedicated connection."""
        if self._leader_conn is not None and not self._leader_conn.is_closed():
            return True
        self._leader_conn = None
        conn = await connect(self.dsn, server_settings={"application_name": "herald-scheduler"})
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
            self._leader_conn = conn
            log.info("scheduler leads")
            return True
        await conn.close()
        return False

    async def close(self) -> None:
        conn, self._leader_conn = self._leader_conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except (*DATABASE_ERRORS, TimeoutError):
                conn.terminate()  # the server is gone: drop the socket

    async def run(self, stop: asyncio.Event) -> None:
        async def lead() -> None:
            if await self.is_leader():
                await self.tick()

        try:
            # After an outage the leader connection is dropped and the lock taken anew.
            await every(self.interval_s, lead, stop, name="scheduler pass", on_outage=self.close)
        finally:
            await self.close()

    async def tick(self, now: dt.datetime | None = None) -> int:
        """One pass over every active time-triggered workflow; returns events written."""
        now = now or dt.datetime.now(dt.UTC)
        written = 0
        async with self.pool.acquire() as conn:
            for workflow in await conn.fetch(TIME_WORKFLOWS, sorted(TIME_TRIGGERS)):
                definition = workflow["definition"]
                name = definition.get("trigger_type") or definition.get("trigger")
                try:
                    trigger = parse_trigger(name, "trigger", definition.get("trigger_config"))
                    written += await self._fire(conn, workflow, trigger, now)
                except WorkflowValidationError as exc:
                    log.warning("time trigger skipped", workflow_id=str(workflow["id"]), error=str(exc))
        if written:
            log.info("time triggers fired", events=written)
        return written

    async def _fire(self, conn: asyncpg.Connection, workflow: Any, trigger: Trigger, now: dt.datetime) -> int:
        assert trigger.config is not None and trigger.scheduled_type is not None
        if trigger.name == "cron":
            instant = last_cron_instant(trigger.config, now)
            if instant < workflow["created_at"]:
                return 0  # the schedule's first instant after the workflow was made is still ahead
            table, rows = "", [{"row_id": "schedule", "occurrence": instant.isoformat(),
                                "row": {"scheduled_for": instant.isoformat(), "schedule": trigger.config["schedule"]}}]
        else:
            table, rows = await FINDERS[trigger.name](conn, trigger.config, workflow["tenant_id"], now)
        if not rows:
            return 0
        by_key = {f"{r['row_id']}:{r['occurrence']}": r for r in rows}
        async with conn.transaction():
            fresh = await conn.fetch(RECORD_FIRES, workflow["id"], list(by_key))
            for record in fresh:
                row = by_key[record["fire_key"]]
                event_id = await conn.fetchval(
                    WRITE_EVENT, workflow["tenant_id"], trigger.entity, table or "schedule",
                    row["row_id"], trigger.scheduled_type, row["row"], workflow["id"])
                await conn.execute(LINK_FIRE, workflow["id"], record["fire_key"], event_id)
                await conn.execute(NOTIFY, str(event_id))  # delivered at commit, like the capture trigger's
        return len(fresh)
