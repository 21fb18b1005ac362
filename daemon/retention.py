"""Retention: Herald's own tables do not grow for ever.

Finished runs (with their steps, messages and retries), matched events, the
heartbeats of processes long stopped and schedule fires that a newer one has
replaced are deleted once they are older than ``HERALD_RETENTION`` (30 days by
default); failed runs once older than ``HERALD_RETENTION_FAILED`` (90 days,
never sooner than the rest). The leader daemon does it every few minutes
(:class:`Retention`), and ``herald prune`` does it on demand.

It never deletes what Herald still needs:

- runs not finished (pending, running) or with a step not finished (pending,
  sending, waiting on a delay, or *unknown*: parked for a person to decide,
  whatever its age), and the events those runs came from;
- events not matched yet (pending, dispatched);
- messages that a rate limit still counts: a run is kept while any rate-limit
  window of its tenant (HERALD_RECIPIENT_LIMIT's, the tenant's, its workflows')
  could still reach back to it, and while its workflow's duplicate window or
  ``once_per`` period could;
- the newest schedule fire of each workflow and entity: an invoice still
  overdue, a client still inactive or a cron schedule's last instant would
  fire again without it;
- workflows and their versions (runs name them; they are small), dashboard
  users, sessions and the audit log.

Work goes in small batches, each its own short transaction (runs with their
children in one, so a run is never half deleted), oldest first, rows locked
with ``FOR UPDATE SKIP LOCKED`` so a batch never waits on the hot path, with a
pause between batches and a budget per pass. A workflow's execution count
survives its runs: the deleted ones are counted in herald.pruned_runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import structlog

from actors.model.dedupe import DedupePolicy
from actors.model.durations import parse_duration
from config.errors import WorkflowValidationError
from config.settings import VARIABLES, Settings, parse_recipient_limit, parse_retention
from daemon.loops import every, sleep_until_stopped

log = structlog.get_logger(__name__)

# Rows per batch: each batch looks at this many of the oldest rows and deletes those
# that may go (runs with their steps, messages and retries).
BATCH_SIZE = 1000
# Between two batches, so the hot path gets the disk and the locks back.
PAUSE_S = 0.05
# Batches per table per daemon pass; the next pass goes on where this one stopped.
MAX_BATCHES_PER_PASS = 100
# The leader's passes: the first a minute after it starts, then every ten minutes.
FIRST_PASS_S = 60.0
INTERVAL_S = 600.0

# Tables as reported, in the order they are pruned.
TABLES = ("runs", "steps", "messages", "retries", "events", "schedule_fires", "heartbeats")
LABELS = {"schedule_fires": ("schedule fire", "schedule fires"), "retries": ("retry", "retries")}

# Whether run r may go: finished, older than its cut-off ($1; $2 for failed runs,
# NULL: never), past every window that still counts it ($3 workflows, $4 the
# moment their runs must be older than), and no step of it still in flight.
RUN_OLD = """(
    r.created_at < $1
    AND (r.status IN ('completed', 'cancelled', 'skipped') AND r.updated_at < $1
         OR r.status = 'failed' AND r.updated_at < $2)
    AND r.updated_at < coalesce((SELECT h.before FROM unnest($3::uuid[], $4::timestamptz[]) AS h(workflow_id, before)
                                 WHERE h.workflow_id = r.workflow_id), 'infinity'))"""
RUN_STEPS_DONE = """NOT EXISTS (SELECT FROM herald.steps s WHERE s.run_id = r.id
                               AND s.status IN ('pending', 'sending', 'waiting', 'unknown'))"""

# Each batch looks at the next window of rows older than the cut-off, oldest
# first (after the last one seen this pass: $2, $3; at most $4), through the
# (created_at, id) index, and picks those that may go: so a batch costs the
# same however many old rows are kept, and never scans a whole table.
RUN_WINDOW = """
SELECT id, created_at FROM herald.runs
WHERE created_at < $1 AND (created_at, id) > ($2::timestamptz, $3::bigint)
ORDER BY created_at, id
LIMIT $4
"""

RUN_PICK = f"""
SELECT r.id FROM herald.runs r
WHERE r.id = ANY($5::bigint[]) AND {RUN_OLD} AND {RUN_STEPS_DONE}
ORDER BY r.id
"""

RUN_CHILDREN = """
SELECT (SELECT count(*) FROM herald.steps WHERE run_id = ANY($1::bigint[])) AS steps,
       (SELECT count(*) FROM herald.messages WHERE run_id = ANY($1::bigint[])) AS messages,
       (SELECT count(*) FROM herald.retries WHERE run_id = ANY($1::bigint[])) AS retries
"""

DELETE_RETRIES = "DELETE FROM herald.retries WHERE run_id = ANY($1::bigint[])"
DELETE_MESSAGES = "DELETE FROM herald.messages WHERE run_id = ANY($1::bigint[])"
DELETE_STEPS = "DELETE FROM herald.steps WHERE run_id = ANY($1::bigint[])"
DELETE_RUNS = """
DELETE FROM herald.runs WHERE id = ANY($1::bigint[])
RETURNING workflow_id, coalesce(workflow_version, 0) AS version, status
"""

COUNT_PRUNED = """
INSERT INTO herald.pruned_runs (workflow_id, version, runs, failed)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::bigint[], $4::bigint[])
ON CONFLICT (workflow_id, version) DO UPDATE
SET runs = herald.pruned_runs.runs + excluded.runs, failed = herald.pruned_runs.failed + excluded.failed
"""

# Events are walked in id order, through the primary key: every index on
# herald.events is paid for inside the application's own writes (the capture
# trigger inserts there), so retention adds none. Ids follow creation order
# but for transactions that ran long, so the walk goes on until a whole window
# is newer than the cut-off by a day ($2), and an older event past that (a
# transaction open for over a day) goes on a later pass.
EVENT_WINDOW = """
SELECT id, created_at < $1 AS old, created_at < $1 + $2::interval AS near FROM herald.events
WHERE id > $3
ORDER BY id
LIMIT $4
"""
EVENT_WALK_MARGIN = dt.timedelta(days=1)

# Matched (or failed) events older than the cut-off that no run needs. $6 true:
# any run left keeps the event (deleting: a run is deleted before its event);
# false (dry run): only a run that would not be pruned does.
EVENT_PICK = f"""
SELECT e.id FROM herald.events e
WHERE e.id = ANY($5::bigint[]) AND e.state IN ('matched', 'failed') AND coalesce(e.matched_at, e.created_at) < $1
  AND NOT EXISTS (SELECT FROM herald.runs r WHERE r.event_id = e.id
                  AND ($6::boolean OR NOT coalesce({RUN_OLD} AND {RUN_STEPS_DONE}, false)))
ORDER BY e.id
"""

DELETE_EVENTS = "DELETE FROM herald.events WHERE id = ANY($1::bigint[])"

# A fire older than the cut-off that a newer fire of the same workflow and entity replaced.
FIRE_CANDIDATES = """
SELECT f.workflow_id, f.fire_key, f.fired_at FROM herald.schedule_fires f
WHERE f.fired_at < $1 AND (f.fired_at, f.workflow_id, f.fire_key) > ($2::timestamptz, $3::uuid, $4::text)
  AND f.row_id IS NOT NULL
  AND EXISTS (SELECT FROM herald.schedule_fires n
              WHERE n.workflow_id = f.workflow_id AND n.row_id = f.row_id AND n.fired_at > f.fired_at)
ORDER BY f.fired_at, f.workflow_id, f.fire_key
LIMIT $5
"""

DELETE_FIRES = """
DELETE FROM herald.schedule_fires
WHERE (workflow_id, fire_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))
"""

# Processes not seen since the cut-off (a live one beats every few seconds).
HEARTBEAT_CANDIDATES = """
SELECT instance, last_seen_at FROM herald.heartbeats
WHERE last_seen_at < $1 AND (last_seen_at, instance) > ($2::timestamptz, $3::text)
ORDER BY last_seen_at, instance
LIMIT $4
"""

DELETE_HEARTBEATS = "DELETE FROM herald.heartbeats WHERE instance = ANY($1::text[]) AND last_seen_at < $2"

# What decides how long a run must outlive its cut-off: every workflow's
# definition (deleted ones too: importing brings them back) and its tenant's limit.
WORKFLOW_WINDOWS = """
SELECT w.id, w.tenant_id, w.definition, ts.rate_limit AS tenant_rate_limit
FROM herald.workflows w LEFT JOIN herald.tenant_settings ts ON ts.tenant_id = w.tenant_id
"""

NO_UUID = uuid.UUID(int=0)
BEGINNING = dt.datetime(1, 1, 1, tzinfo=dt.UTC)

Source = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class RetentionPolicy:
    """How old rows must be before they go, and how the work is paced."""

    keep: dt.timedelta
    keep_failed: dt.timedelta | None  # None: failed runs are kept for ever
    rate_window: dt.timedelta = dt.timedelta(hours=1)  # HERALD_RECIPIENT_LIMIT's window
    batch_size: int = BATCH_SIZE
    pause_s: float = PAUSE_S
    max_batches: int | None = None  # per table per pass; None: until nothing is left

    @classmethod
    def from_settings(cls, settings: Settings, **pacing: Any) -> RetentionPolicy | None:
        """The policy HERALD_RETENTION and HERALD_RETENTION_FAILED set; None when retention is off."""
        keep = parse_retention(settings.retention, VARIABLES["retention"])
        if keep is None:
            return None
        keep_failed = parse_retention(settings.retention_failed, VARIABLES["retention_failed"])
        return cls(keep, max(keep_failed, keep) if keep_failed is not None else None,
                   rate_window=parse_recipient_limit(settings.recipient_limit)[1], **pacing)


@dataclass
class PruneReport:
    """What a pass deleted (or, dry, would delete): rows per table, and each batch's size."""

    dry_run: bool
    cutoff: dt.datetime
    failed_cutoff: dt.datetime | None
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    # (table, rows) per batch, in order: a runs batch counts its runs, not their children.
    batches: list[tuple[str, int]] = field(default_factory=list)
    complete: bool = True  # false: the pass's budget ran out with rows left

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def label(table: str, count: int) -> str:
    """``1 run``, ``2 schedule fires``."""
    singular, plural = LABELS.get(table, (table[:-1], table))
    return f"{count:,} {singular if count == 1 else plural}"


@contextlib.asynccontextmanager
async def _borrow(source: Source) -> AsyncIterator[asyncpg.Connection]:
    """A connection for one batch: from the pool (given back between batches), or the one given."""
    if isinstance(source, asyncpg.Pool):
        async with source.acquire() as conn:
            yield conn
    else:
        yield source


async def workflow_holds(conn: asyncpg.Connection, policy: RetentionPolicy,
                         now: dt.datetime) -> dict[uuid.UUID, dt.datetime]:
    """Workflows whose runs must be older than a moment before their cut-off allows:
    workflow -> that moment. A run's messages count towards every rate limit of its
    tenant (the count is per tenant, channel and recipient, whichever workflow sent
    them), and its keys towards its workflow's duplicate window and once_per period.
    Only windows longer than ``policy.keep`` matter; usually there are none."""
    rows = await conn.fetch(WORKFLOW_WINDOWS)
    tenant_window: dict[str, dt.timedelta] = {}
    own_window: dict[uuid.UUID, tuple[str, dt.timedelta]] = {}
    for row in rows:
        definition = row["definition"] if isinstance(row["definition"], dict) else {}
        rate = max(_rate_window(definition.get("rate_limit")), _rate_window(row["tenant_rate_limit"]),
                   policy.rate_window)
        tenant_window[row["tenant_id"]] = max(tenant_window.get(row["tenant_id"], rate), rate)
        own_window[row["id"]] = (row["tenant_id"], _dedupe_window(definition.get("dedupe")))
    holds = {}
    for workflow_id, (tenant, dedupe) in own_window.items():
        hold = max(tenant_window[tenant], dedupe)
        if hold >= policy.keep:
            holds[workflow_id] = now - hold
    return holds


def _rate_window(raw: Any) -> dt.timedelta:
    if not isinstance(raw, dict) or "window" not in raw:
        return dt.timedelta(0)
    try:
        return max(parse_duration(raw["window"], "rate_limit.window"), dt.timedelta(0))
    except WorkflowValidationError:
        return dt.timedelta(0)  # a workflow that says this cannot send (it fails validation)


def _dedupe_window(raw: Any) -> dt.timedelta:
    try:
        policy = DedupePolicy.from_config(raw)
    except WorkflowValidationError:
        return dt.timedelta(0)
    return max(policy.window, policy.once_per or dt.timedelta(0))


async def prune(source: Source, policy: RetentionPolicy, *, dry_run: bool = False,
                now: dt.datetime | None = None,
                on_batch: Callable[[str, int], None] | None = None) -> PruneReport:
    """Delete (``dry_run``: count) what ``policy`` says has been kept long enough.

    ``source`` is a pool (a connection per batch) or one connection. ``on_batch``
    hears of each batch as it is done, e.g. to print progress.
    """
    now = now or dt.datetime.now(dt.UTC)
    cutoff = now - policy.keep
    failed_cutoff = now - policy.keep_failed if policy.keep_failed is not None else None
    report = PruneReport(dry_run, cutoff, failed_cutoff)
    async with _borrow(source) as conn:
        holds = await workflow_holds(conn, policy, now)
    run_args = (cutoff, failed_cutoff, list(holds), list(holds.values()))

    def done(table: str, count: int) -> None:
        report.batches.append((table, count))
        if on_batch is not None:
            on_batch(table, count)

    async def batches(table: str, one: Callable[[Any], Awaitable[tuple[int, Any]]], start: Any) -> None:
        """Batches of ``table`` until one comes back short, or the budget is spent."""
        after, count = start, 0
        while True:
            rows, after = await one(after)
            if rows:
                done(table, rows)
            if after is None:
                return
            count += 1
            if policy.max_batches is not None and count >= policy.max_batches:
                report.complete = False
                return
            if policy.pause_s:
                await asyncio.sleep(policy.pause_s)

    async def window(conn: asyncpg.Connection, sql: str, after: tuple[dt.datetime, int]) -> tuple[list[int], Any]:
        """The next window's ids, and where the next one starts (None: this was the last)."""
        rows = await conn.fetch(sql, cutoff, *after, policy.batch_size)
        following = (rows[-1]["created_at"], rows[-1]["id"]) if len(rows) == policy.batch_size else None
        return [row["id"] for row in rows], following

    async def runs_batch(after: tuple[dt.datetime, int]) -> tuple[int, Any]:
        async with _borrow(source) as conn, conn.transaction():
            seen, following = await window(conn, RUN_WINDOW, after)
            lock = "" if dry_run else " FOR UPDATE OF r SKIP LOCKED"
            ids = [row["id"] for row in await conn.fetch(RUN_PICK + lock, *run_args, seen)] if seen else []
            if ids and dry_run:
                children = await conn.fetchrow(RUN_CHILDREN, ids)
                for table in ("steps", "messages", "retries"):
                    report.deleted[table] += children[table]
            elif ids:
                for table, sql in (("retries", DELETE_RETRIES), ("messages", DELETE_MESSAGES),
                                   ("steps", DELETE_STEPS)):
                    report.deleted[table] += _rows(await conn.execute(sql, ids))
                await _count_pruned(conn, await conn.fetch(DELETE_RUNS, ids))
        report.deleted["runs"] += len(ids)
        return len(ids), following

    async def events_batch(after: int) -> tuple[int, Any]:
        async with _borrow(source) as conn, conn.transaction():
            rows = await conn.fetch(EVENT_WINDOW, cutoff, EVENT_WALK_MARGIN, after, policy.batch_size)
            seen = [row["id"] for row in rows if row["old"]]
            going_on = len(rows) == policy.batch_size and any(row["near"] for row in rows)
            following = rows[-1]["id"] if going_on else None
            lock = "" if dry_run else " FOR UPDATE OF e SKIP LOCKED"
            ids = ([row["id"] for row in await conn.fetch(EVENT_PICK + lock, *run_args, seen, not dry_run)]
                   if seen else [])
            if ids and not dry_run:
                await conn.execute(DELETE_EVENTS, ids)
        report.deleted["events"] += len(ids)
        return len(ids), following

    async def fires_batch(after: tuple[dt.datetime, uuid.UUID, str]) -> tuple[int, Any]:
        async with _borrow(source) as conn, conn.transaction():
            lock = "" if dry_run else " FOR UPDATE OF f SKIP LOCKED"
            rows = await conn.fetch(FIRE_CANDIDATES + lock, cutoff, *after, policy.batch_size)
            if rows and not dry_run:
                await conn.execute(DELETE_FIRES, [r["workflow_id"] for r in rows], [r["fire_key"] for r in rows])
        report.deleted["schedule_fires"] += len(rows)
        last = rows[-1] if rows else None
        return len(rows), ((last["fired_at"], last["workflow_id"], last["fire_key"])
                           if len(rows) == policy.batch_size else None)

    async def heartbeats_batch(after: tuple[dt.datetime, str]) -> tuple[int, Any]:
        async with _borrow(source) as conn, conn.transaction():
            rows = await conn.fetch(HEARTBEAT_CANDIDATES, cutoff, *after, policy.batch_size)
            if rows and not dry_run:
                await conn.execute(DELETE_HEARTBEATS, [row["instance"] for row in rows], cutoff)
        report.deleted["heartbeats"] += len(rows)
        last = rows[-1] if rows else None
        return len(rows), (last["last_seen_at"], last["instance"]) if len(rows) == policy.batch_size else None

    # Runs before events: an event goes only once no run needs it.
    await batches("runs", runs_batch, (BEGINNING, 0))
    await batches("events", events_batch, 0)
    await batches("schedule_fires", fires_batch, (BEGINNING, NO_UUID, ""))
    await batches("heartbeats", heartbeats_batch, (BEGINNING, ""))
    return report


def _rows(status: str) -> int:
    """The row count of a command status such as ``DELETE 12``."""
    return int(status.rsplit(" ", 1)[-1])


async def _count_pruned(conn: asyncpg.Connection, deleted: list[asyncpg.Record]) -> None:
    """Add the deleted runs to herald.pruned_runs, per workflow version."""
    counts: dict[tuple[uuid.UUID, int], list[int]] = {}
    for row in deleted:
        entry = counts.setdefault((row["workflow_id"], row["version"]), [0, 0])
        entry[0] += row["status"] != "skipped"
        entry[1] += row["status"] == "failed"
    keys = sorted(counts)
    await conn.execute(COUNT_PRUNED, [k[0] for k in keys], [k[1] for k in keys],
                       [counts[k][0] for k in keys], [counts[k][1] for k in keys])


class Retention:
    """The daemon's retention task: a pass every ``interval_s`` while this daemon leads.

    ``is_leader`` is the scheduler's: the one daemon holding the leader lock
    prunes, so two daemons never delete the same rows or double the load.
    """

    def __init__(self, pool: asyncpg.Pool, policy: RetentionPolicy | None,
                 is_leader: Callable[[], Awaitable[bool]], *, interval_s: float = INTERVAL_S,
                 first_pass_s: float = FIRST_PASS_S) -> None:
        self.pool = pool
        # A pass has a budget: the hot path gets the database back; the next pass goes on.
        self.policy = (replace(policy, max_batches=policy.max_batches or MAX_BATCHES_PER_PASS)
                       if policy is not None else None)
        self.is_leader = is_leader
        self.interval_s = interval_s
        self.first_pass_s = first_pass_s
        self.passes = 0  # passes made as the leader

    async def run(self, stop: asyncio.Event) -> None:
        if self.policy is None:
            log.info("retention is off: nothing is pruned", setting=VARIABLES["retention"])
            await stop.wait()  # a daemon task that ends before the daemon stops is taken for a crash
            return
        await sleep_until_stopped(stop, self.first_pass_s)
        await every(self.interval_s, self.tick, stop, name="retention pass")

    async def tick(self) -> PruneReport | None:
        """One pass, if this daemon leads; what it deleted."""
        if self.policy is None or not await self.is_leader():
            return None
        report = await prune(self.pool, self.policy)
        self.passes += 1
        if report.total:
            log.info("retention pass", **{t: n for t, n in report.deleted.items() if n},
                     complete=report.complete, cutoff=report.cutoff.isoformat(timespec="seconds"))
        return report
