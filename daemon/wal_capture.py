"""Capture from the write-ahead log: the daemon reads the database's replication
slot and writes each change of a table watched with ``--capture wal`` to
herald.events, as the capture trigger would have (config/migrations/022_capture_from_wal.sql).

While a table is captured this way, the daemon streams the slot
(daemon/wal_stream.py): the server sends each transaction as it commits. For
each, the daemon writes its changes as events and the end of the transaction
(``read_lsn``) in one transaction of its own, and only then confirms it to the
server. A daemon stopped in between is sent those transactions again and
skips them by ``read_lsn``: each change is one event, once. A transaction of
more changes than the stream holds is written in pieces as it arrives, in one
transaction of Herald's that commits with its end (:class:`LargeTransaction`),
so memory stays bounded whatever its size and the rule holds. A second daemon
finds the slot in use and stands by. Once no table is captured from the WAL,
the daemon reads what is left by peeking (``pg_logical_slot_peek_binary_changes``,
:meth:`WalCapture.read`, the same writing) and drops the slot.

LSNs are integers here, as asyncpg gives ``pg_lsn``.

The rows come from the log as text, column by column; PostgreSQL turns them
back into the table's row type (``jsonb_populate_record``) and then into
``jsonb``, so an event's ``old`` and ``new`` are what ``to_jsonb(row)`` in the
trigger gives. An update's unchanged large (TOASTed) values, which the log
leaves out of the new row, are taken from the old row (REPLICA IDENTITY FULL
keeps it whole). Herald's own ``update_record`` marks its transaction with a
logical decoding message naming its run (actors/actions/records.py), which
takes the place of the trigger's ``herald.origin_run`` setting.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from config.database import quote_qualified
from daemon.loops import OUTAGES, sleep_until_stopped
from daemon.progress import loop_passed, loop_started
from daemon.wal_stream import STREAM_ERRORS, ReplicationStream

log = structlog.get_logger(__name__)

PUBLICATION = "herald_capture"
ORIGIN_PREFIX = "herald.origin_run"  # the logical message update_record writes
# Transactions read at once: the slot gives whole transactions, so one larger
# than this comes whole.
MAX_CHANGES = 10_000
# Changes per INSERT: a transaction of a million rows is written in many
# statements (in its one transaction), the watchdog told of each.
INSERT_CHUNK = 5_000
# Messages beyond which a peek's are parsed in a thread.
PARSE_IN_THREAD = 500
# json and jsonb columns: their text is parsed, so that the row holds the value,
# not a string of it.
JSON_TYPES = {114, 3802}

# Whether any table is captured from the WAL.
_ANY_WAL_TABLE = "EXISTS (SELECT 1 FROM herald.watched_tables WHERE capture = 'wal')"
IN_USE = f"SELECT {_ANY_WAL_TABLE}"
STATE = f"""
SELECT w.slot_name, w.publication, pg_current_wal_flush_lsn() AS upto, {_ANY_WAL_TABLE} AS in_use
FROM herald.wal_capture w
"""
PEEK = """
SELECT lsn, data FROM pg_logical_slot_peek_binary_changes(
    $1, $2::pg_lsn, $3, 'proto_version', '1', 'publication_names', $4, 'messages', 'true')
"""
ADVANCE = """
SELECT pg_replication_slot_advance(slot_name, greatest($2::pg_lsn, confirmed_flush_lsn))
FROM pg_replication_slots WHERE slot_name = $1
"""
# No table captured from the WAL any more, and the slot read to its end: the slot
# goes (a slot nobody reads keeps the server's WAL forever). The row is locked
# first, as `herald watch --capture wal` locks it, so that the look at the
# watched tables sees a table that such a command just switched.
LOCK_UNUSED = "SELECT 1 FROM herald.wal_capture WHERE slot_name = $1 FOR UPDATE"
DROP_UNUSED = f"""
WITH gone AS (
    DELETE FROM herald.wal_capture
    WHERE slot_name = $1 AND NOT {_ANY_WAL_TABLE}
    RETURNING slot_name
)
SELECT pg_drop_replication_slot(slot_name) FROM gone
"""

# One table's changes, in order, as events, in one statement: the capture
# trigger's INSERT with the rows rebuilt from the log's text
# (config/migrations/019_capture_per_statement.sql). It locks the slot's row and
# skips the changes of transactions that end at or before its read_lsn (written
# already; a change's LSN NULL: its transaction's, still being received, was
# checked by the caller, see LargeTransaction), and the last statement of a
# batch moves read_lsn to the batch's end ($8, NULL for the others). A batch of
# one statement is one round trip.
WRITE_EVENTS = """
WITH state AS (
    SELECT read_lsn FROM herald.wal_capture WHERE slot_name = $7 FOR UPDATE
), cfg AS (
    SELECT entity, id_column, tenant_column FROM herald.watched_tables WHERE table_name = $6
), written AS (
    INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, old, new,
                               origin_run_id, state, matched_at, match_report)
    SELECT CASE WHEN c.problem IS NULL THEN coalesce(c.r ->> cfg.tenant_column, 'default') ELSE '' END,
           cfg.entity, $6, c.r ->> cfg.id_column, c.op,
           cfg.entity || '.' || CASE c.op WHEN 'INSERT' THEN 'created' WHEN 'UPDATE' THEN 'updated'
                                          ELSE 'deleted' END,
           CASE WHEN pg_column_size(c.o) <= 16384 THEN c.o ELSE herald.event_row(c.o) END,
           CASE WHEN pg_column_size(c.n) <= 16384 THEN c.n ELSE herald.event_row(c.n) END,
           c.origin,
           CASE WHEN c.problem IS NULL THEN 'pending' ELSE 'failed' END,
           CASE WHEN c.problem IS NULL THEN NULL ELSE clock_timestamp() END,
           CASE WHEN c.problem IS NULL THEN NULL
                ELSE jsonb_build_object('error', c.problem, 'workflows', '[]'::jsonb) END
    FROM cfg,
         (SELECT x.*, coalesce(x.n, x.o) AS r,
                 herald.capture_problem(coalesce(x.n, x.o), (SELECT tenant_column FROM cfg), $6) AS problem
          FROM (SELECT u.i, u.op, u.origin,
                       CASE WHEN u.o IS NOT NULL
                            THEN to_jsonb(jsonb_populate_record(NULL::{table}, u.o::jsonb)) END AS o,
                       CASE WHEN u.n IS NOT NULL
                            THEN to_jsonb(jsonb_populate_record(NULL::{table}, u.n::jsonb)) END AS n
                FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::pg_lsn[])
                     WITH ORDINALITY AS u(op, o, n, origin, lsn, i)
                WHERE u.lsn IS NULL OR u.lsn > coalesce((SELECT read_lsn FROM state), '0/0'::pg_lsn)
                OFFSET 0) AS x
          WHERE x.op <> 'UPDATE' OR x.o IS DISTINCT FROM x.n) AS c
    ORDER BY c.i
    RETURNING 1
), moved AS (
    UPDATE herald.wal_capture SET read_lsn = $8
    WHERE slot_name = $7 AND $8::pg_lsn IS NOT NULL AND (read_lsn IS NULL OR read_lsn < $8)
    RETURNING 1
)
SELECT (SELECT count(*) FROM written) AS written, EXISTS (SELECT 1 FROM cfg) AS watched,
       (SELECT count(*) FROM moved) AS moved
"""
# A transaction written in pieces (LargeTransaction): the slot's row locked for
# its duration, and read_lsn moved to its end with its last piece.
LOCK_READ_LSN = "SELECT read_lsn FROM herald.wal_capture WHERE slot_name = $1 FOR UPDATE"
MOVE_READ_LSN = """
UPDATE herald.wal_capture SET read_lsn = $2 WHERE slot_name = $1 AND (read_lsn IS NULL OR read_lsn < $2)
"""
# Which of these tables exist (the statement above names the table's row type).
EXISTING = """
SELECT coalesce(array_agg(t), '{}') FROM unnest($1::text[]) AS t
WHERE to_regclass(format('%I.%I', split_part(t, '.', 1), substr(t, strpos(t, '.') + 1))) IS NOT NULL
"""


# -- pgoutput, protocol version 1 ---------------------------------------------------

@dataclass(frozen=True)
class Relation:
    schema: str
    name: str
    columns: tuple[tuple[str, int], ...]  # (name, type oid)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Change:
    relation: Relation
    operation: str  # INSERT, UPDATE, DELETE
    old: dict[str, Any] | None
    new: dict[str, Any] | None


@dataclass
class Transaction:
    end_lsn: int  # 0 until its commit has been read
    origin_run: int | None = None
    changes: list[Change] = field(default_factory=list)
    commit_lsn: int = 0  # where its commit record starts, from its BEGIN


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> str:
        self.at += 1
        return chr(self.data[self.at - 1])

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        end = self.data.index(0, self.at)
        text = self.data[self.at:end].decode()
        self.at = end + 1
        return text

    def take(self, n: int) -> bytes:
        self.at += n
        return self.data[self.at - n:self.at]


def _tuple(reader: _Reader, relation: Relation) -> tuple[dict[str, Any], set[str]]:
    """A row's columns (json parsed, NULL as None) and the names of those the log left out."""
    row: dict[str, Any] = {}
    unchanged = set()
    for name, type_oid in relation.columns[:reader.unpack(">h")]:
        kind = reader.byte()
        if kind == "n":
            row[name] = None
        elif kind == "u":
            unchanged.add(name)
        else:  # 't' text ('b' binary is only sent when asked for)
            text = reader.take(reader.unpack(">i")).decode()
            row[name] = json.loads(text) if type_oid in JSON_TYPES else text
    return row, unchanged


class Decoder:
    """pgoutput messages to transactions, fed in pieces.

    ``relations``: the tables described so far, which the server describes once
    per stream (or peek), before their first change; kept across feeds. A
    transaction may span feeds: ``current`` is the one being received, with its
    changes so far, which its reader may take away as it writes them.
    """

    def __init__(self, relations: dict[int, Relation] | None = None) -> None:
        self.relations = {} if relations is None else relations
        self.current: Transaction | None = None

    def feed(self, messages: list[bytes]) -> list[Transaction]:
        """The transactions whose commit is in ``messages``, each with its changes."""
        done: list[Transaction] = []
        for data in messages:
            reader = _Reader(data)
            kind = reader.byte()
            if kind == "B":
                self.current = Transaction(end_lsn=0, commit_lsn=reader.unpack(">q"))
            elif kind == "C":
                reader.unpack(">b")
                reader.unpack(">q")  # the commit's own LSN
                if self.current is not None:
                    self.current.end_lsn = reader.unpack(">q")
                    done.append(self.current)
                self.current = None
            elif kind == "R":
                relid = reader.unpack(">I")
                schema, name = reader.string(), reader.string()
                reader.unpack(">b")  # replica identity
                columns = []
                for _ in range(reader.unpack(">h")):
                    reader.unpack(">b")
                    column = reader.string()
                    columns.append((column, reader.unpack(">I")))
                    reader.unpack(">i")
                self.relations[relid] = Relation(schema, name, tuple(columns))
            elif kind == "M":
                transactional = reader.unpack(">b") & 1
                reader.unpack(">q")
                prefix = reader.string()
                content = reader.take(reader.unpack(">i")).decode()
                if transactional and self.current is not None and prefix == ORIGIN_PREFIX and content.isdigit():
                    self.current.origin_run = int(content)
            elif kind in "IUD" and self.current is not None:
                relation = self.relations[reader.unpack(">I")]
                old = new = None
                marker = reader.byte()
                if marker in "KO":
                    old, _ = _tuple(reader, relation)
                    marker = reader.byte() if kind == "U" else ""
                if marker == "N":
                    new, unchanged = _tuple(reader, relation)
                    for name in unchanged:  # left out of the new row: as it was
                        new[name] = (old or {}).get(name)
                operation = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}[kind]
                self.current.changes.append(Change(relation, operation, old, new))
            # Y (type), O (origin), T (truncate: not an event, as for the trigger): nothing to do
        return done


# -- the reader --------------------------------------------------------------------

class WalCapture:
    """Streams the slot while a table is captured from the WAL (looked for every
    ``interval_s``), writing each transaction's changes as events as it arrives."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, *, interval_s: float, on_events: Callable[[], None]) -> None:
        self.pool = pool
        self.dsn = dsn
        self.interval_s = interval_s
        self.on_events = on_events
        self._existing: set[str] = set()  # tables seen to exist (their row types rebuild the rows)

    async def run(self, stop: asyncio.Event) -> None:
        loop_started("wal capture", self.interval_s)
        while not stop.is_set():
            try:
                state = await self.pool.fetchrow(STATE)
                if state is not None and state["in_use"]:
                    await self.stream(state["slot_name"], state["publication"], stop)
                elif state is not None:
                    await self.read()  # what is left, then the slot goes
            except asyncpg.ObjectInUseError:
                pass  # another daemon is reading the slot: this one stands by
            except STREAM_ERRORS as exc:
                if "is active for PID" not in str(exc):  # else: another daemon streams it
                    log.warning("the replication stream failed; will try again", error=str(exc).strip())
            except OUTAGES as exc:
                log.warning("reading the replication slot failed; will try again", error=str(exc))
            loop_passed("wal capture")
            await sleep_until_stopped(stop, self.interval_s)

    async def stream(self, slot: str, publication: str, stop: asyncio.Event) -> None:
        """Write the slot's transactions as they arrive, until ``stop`` or no table
        is captured from the WAL any more."""
        stream = await ReplicationStream.open(self.dsn, slot, publication)
        decoder = Decoder()
        large: LargeTransaction | None = None  # being received, written in pieces
        log.info("streaming changes from the WAL", slot=slot)
        try:
            looked = time.monotonic()
            while not stop.is_set():
                await stream.wait(self.interval_s, stop)
                messages = stream.take()
                if messages:
                    transactions = await self._decode(decoder, messages)
                    written = 0
                    if large is not None and transactions:  # its commit has come: the first
                        ended, large = large, None
                        written += await ended.finish()
                        stream.confirm(transactions.pop(0).end_lsn)
                    if transactions:
                        async with self.pool.acquire() as conn:
                            written += await self._write(conn, slot, transactions)
                        stream.confirm(transactions[-1].end_lsn)
                    if decoder.current is not None and decoder.current.changes:
                        if large is None:
                            large = await LargeTransaction.begin(self, slot, decoder.current)
                        written += await large.write()
                    if written:
                        self.on_events()
                elif large is None:
                    stream.confirm_idle()
                loop_passed("wal capture")
                if time.monotonic() - looked >= self.interval_s:
                    looked = time.monotonic()
                    if not await self.pool.fetchval(IN_USE):
                        return
        finally:
            if large is not None:  # not ended: none of it is written; the server sends it again
                await large.abandon()
            stream.close()

    async def _decode(self, decoder: Decoder, messages: list[bytes]) -> list[Transaction]:
        # A bulk write's thousands of rows are parsed off the event loop, which goes
        # on listening and dispatching meanwhile.
        if len(messages) > PARSE_IN_THREAD:
            return await asyncio.to_thread(decoder.feed, messages)
        return decoder.feed(messages)

    async def read(self) -> int:
        """Write the slot's unread changes as events and advance it; return how many events."""
        total = 0
        while True:
            async with self.pool.acquire() as conn:
                state = await conn.fetchrow(STATE)
                if state is None:
                    return total
                try:
                    rows = await conn.fetch(PEEK, state["slot_name"], state["upto"], MAX_CHANGES,
                                            state["publication"])
                except asyncpg.ObjectInUseError:
                    return total  # another daemon is reading it
                transactions = await self._decode(Decoder(), [bytes(row["data"]) for row in rows])
                loop_passed("wal capture")
                complete = len(rows) < MAX_CHANGES
                written = await self._write(conn, state["slot_name"], transactions) if transactions else 0
                total += written
                # Everything that committed before `upto` was read when the peek was not cut short.
                upto = state["upto"] if complete else transactions[-1].end_lsn
                try:
                    await conn.execute(ADVANCE, state["slot_name"], upto)
                except asyncpg.ObjectInUseError:
                    pass  # another daemon is reading it: it advances it, or the next read does
                if written:
                    self.on_events()
                if complete:
                    if not state["in_use"]:
                        await self._drop_unused(conn, state["slot_name"])
                    return total

    async def _drop_unused(self, conn: asyncpg.Connection, slot: str) -> None:
        async with conn.transaction():
            await conn.execute(LOCK_UNUSED, slot)
            dropped = await conn.fetch(DROP_UNUSED, slot)
        if dropped:
            log.info("replication slot dropped: no table is captured from the WAL", slot=slot)

    async def _write(self, conn: asyncpg.Connection, slot: str, transactions: list[Transaction]) -> int:
        """Write the changes of ``transactions`` not written yet as events, and move read_lsn
        to their end (if they have ended); one statement per table and chunk, in one
        transaction if several."""
        runs = _runs(transactions)
        unknown = {table for table, _ in runs} - self._existing
        if unknown:
            self._existing |= set(await conn.fetchval(EXISTING, sorted(unknown)))
        statements = []
        for table, group in runs:
            if table not in self._existing:  # dropped since: its changes cannot be rebuilt
                log.warning("changes of a table that no longer exists are not events", table=table,
                            changes=len(group))
                continue
            statements += [(table, group[start:start + INSERT_CHUNK]) for start in range(0, len(group), INSERT_CHUNK)]
        if not statements:
            return 0
        end_lsn = transactions[-1].end_lsn or None  # None: a piece of one not ended
        try:
            if len(statements) == 1:
                return await self._statements(conn, slot, statements, end_lsn)
            async with conn.transaction():
                return await self._statements(conn, slot, statements, end_lsn)
        except asyncpg.UndefinedTableError:
            self._existing.clear()  # dropped meanwhile: the next attempt looks again
            raise

    async def _statements(self, conn: asyncpg.Connection, slot: str,
                          statements: list[tuple[str, list[tuple[Change, int | None, int | None]]]],
                          end_lsn: int | None) -> int:
        written = 0
        for n, (table, chunk) in enumerate(statements):
            columns: list[list[Any]] = [[], [], [], [], []]
            for change, origin, lsn in chunk:
                for column, value in zip(columns, (change.operation, _json(change.old), _json(change.new),
                                                   origin, lsn)):
                    column.append(value)
            row = await conn.fetchrow(WRITE_EVENTS.format(table=quote_qualified(table)), *columns, table, slot,
                                      end_lsn if n == len(statements) - 1 else None)
            if not row["watched"]:
                log.warning("changes of a table no longer watched are not events", table=table, changes=len(chunk))
            written += row["written"]
            loop_passed("wal capture")  # a bulk write's events take a while: not stuck
        if written:
            log.debug("changes read from the WAL", events=written)
        return written


def _runs(transactions: list[Transaction]) -> list[tuple[str, list[tuple[Change, int | None, int | None]]]]:
    """The changes in order, in runs of one table each, each with its transaction's
    origin run and end (None: not ended yet)."""
    runs: list[tuple[str, list[tuple[Change, int | None, int | None]]]] = []
    for transaction in transactions:
        for change in transaction.changes:
            table = change.relation.qualified
            if not runs or runs[-1][0] != table:
                runs.append((table, []))
            runs[-1][1].append((change, transaction.origin_run, transaction.end_lsn or None))
    return runs


def _json(row: dict[str, Any] | None) -> str | None:
    return None if row is None else json.dumps(row)


class LargeTransaction:
    """A transaction of more changes than the stream holds (its ``SPILL_MESSAGES``),
    written in pieces as they arrive, all in one transaction of Herald's that
    commits with its end, so its changes are all events, once, or none.

    Whether it was written already (sent again after a restart) is decided at its
    first piece: read_lsn, the end of the last transaction written, is past its
    commit's start exactly when it was. The slot's row stays locked until it ends.
    Stopped or broken before its commit arrives, it is rolled back, and the server
    sends the whole transaction again to the next stream.
    """

    def __init__(self, capture: WalCapture, slot: str, transaction: Transaction, conn: Any, tx: Any,
                 *, written_before: bool) -> None:
        self.capture, self.slot, self.transaction = capture, slot, transaction
        self.conn, self.tx, self.written_before = conn, tx, written_before

    @classmethod
    async def begin(cls, capture: WalCapture, slot: str, transaction: Transaction) -> LargeTransaction:
        conn = await capture.pool.acquire()
        try:
            tx = conn.transaction()
            await tx.start()
            read_lsn = await conn.fetchval(LOCK_READ_LSN, slot)
        except BaseException:
            await capture.pool.release(conn)
            raise
        written_before = read_lsn is not None and read_lsn > transaction.commit_lsn
        log.info("a large transaction is read in pieces", slot=slot, written_before=written_before)
        return cls(capture, slot, transaction, conn, tx, written_before=written_before)

    async def write(self) -> int:
        """Its changes received so far, taken from it and written (unless it was before)."""
        piece = Transaction(end_lsn=0, origin_run=self.transaction.origin_run, changes=self.transaction.changes)
        self.transaction.changes = []
        if self.written_before:
            return 0
        return await self.capture._write(self.conn, self.slot, [piece])

    async def finish(self) -> int:
        """Its commit has arrived: the rest of its changes, read_lsn moved to its end, committed."""
        try:
            written = await self.write()
            if self.written_before:
                await self.tx.rollback()
            else:
                await self.conn.execute(MOVE_READ_LSN, self.slot, self.transaction.end_lsn)
                await self.tx.commit()
        except BaseException:
            await self.abandon()
            raise
        await self.capture.pool.release(self.conn)
        return written

    async def abandon(self) -> None:
        try:
            await self.tx.rollback()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pass  # the connection is gone, and the transaction with it
        finally:
            await self.capture.pool.release(self.conn)
