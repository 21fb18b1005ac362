"""Matching events (the match actor's work): which workflows each event runs, one run
per (workflow, event).

Every event records, for each active workflow of its tenant, whether it
matched and why or why not. Each run records the workflow's version it runs
(``herald.runs.workflow_version``, see store.INSERT_RUNS): its steps are that
version's, whatever is saved before it starts. An event also cancels the delayed runs waiting
on the same record whose ``cancel_on`` names a trigger it fires.

One event cannot take its batch down: the batch is matched at once and, if
that fails, again with each event in a savepoint of its own; an event that
still fails on its own is marked *failed* with the error (final: nobody sends
it again), and the others are matched. Only a lost database connection or a
transient database error (deadlock, serialisation, shutdown) fails the whole
message, to be retried.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from actors import store
from actors.model import dedupe
from actors.model.triggers import parse_trigger
from actors.model.workflow import WorkflowSpec, evaluate
from actors.workflows_cache import CachedWorkflow, WorkflowCache
from config import log_context
from config.errors import WorkflowValidationError

log = structlog.get_logger(__name__)

@dataclass
class Outcome:
    """What one match message did."""

    events: int = 0
    started: list[int] = field(default_factory=list)  # runs to enrich
    skipped: int = 0
    cancelled: int = 0
    failed: list[int] = field(default_factory=list)  # events whose matching failed
    tenants: list[str] = field(default_factory=list)  # whose events were claimed
    # The runs' first steps to start, by action, when they were enriched in matching's
    # transaction; None when they were not (the caller enriches them).
    first_steps: dict[str, list[int]] | None = None

    def add(self, other: Outcome) -> None:
        self.started += other.started
        self.skipped += other.skipped
        self.cancelled += other.cancelled


# SQLSTATE classes of errors that are not the event's fault: connection (08),
# transaction rollback: serialisation, deadlock (40), resources (53), object in
# use or locked (55), operator intervention: shutdown, cancel (57), system (58).
_TRANSIENT_CLASSES = ("08", "40", "53", "55", "57", "58")


def _transient(exc: BaseException) -> bool:
    """A failure of the database or the connection, not of the event: retry the message."""
    if isinstance(exc, (asyncpg.InterfaceError, OSError, TimeoutError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "").startswith(_TRANSIENT_CLASSES)
    return False


# Enriches runs just started, in the caller's transaction: their first steps by action.
Enrich = Callable[[asyncpg.Connection, list[int]], Awaitable[dict[str, list[int]]]]


class _EnrichFailed(Exception):
    """Enriching the runs in matching's transaction failed: the transaction is
    rolled back, to match the events again without enriching."""


class _BatchFailed(Exception):
    """Matching a batch at once failed for one of its events: the transaction is
    rolled back, to match them again one by one."""


async def match_events(conn: asyncpg.Connection, event_ids: list[int], cache: WorkflowCache, *,
                       enrich: Enrich | None = None) -> Outcome:
    """Match the claimable events among ``event_ids`` in one transaction on ``conn``.

    The whole batch at once, the usual case, with no savepoint (two round trips
    on every event); should one event make that fail, the transaction is rolled
    back and the batch matched again, each event in a savepoint of its own, so
    that the one failing is marked failed and the others are matched.

    ``enrich``: the runs started are enriched in the same transaction (one commit
    for both, ``outcome.first_steps``). Should that fail (a related table changed
    under Herald, say), the events are matched again without it, and the caller
    enriches the runs in a transaction of their own, which knows how to fail them.
    """
    try:
        try:
            return await _match_events(conn, event_ids, cache, one_by_one=False, enrich=enrich)
        except _EnrichFailed:
            return await _match_events(conn, event_ids, cache, one_by_one=False)
    except _BatchFailed:
        return await _match_events(conn, event_ids, cache, one_by_one=True)


async def _match_events(conn: asyncpg.Connection, event_ids: list[int], cache: WorkflowCache, *,
                        one_by_one: bool, enrich: Enrich | None = None) -> Outcome:
    outcome = Outcome()
    async with conn.transaction():
        events = await conn.fetch(store.CLAIM_EVENTS, event_ids)
        if not events:
            return outcome
        outcome.tenants = sorted({event["tenant_id"] for event in events})
        # The claimed events' ids and tenant on every line logged while they are matched.
        with log_context.bound(**log_context.rows_ids("event", events)):
            outcome.events = len(events)
            workflows = await cache.for_tenants(conn, (event["tenant_id"] for event in events))
            origins = await _origin_workflows(conn, events)
            if not one_by_one:
                try:
                    outcome.add(await _match_batch(conn, events, workflows, origins))
                except Exception as exc:
                    if _transient(exc):
                        raise
                    if len(events) > 1:
                        log.warning("batch could not be matched; matching its events one by one",
                                    events=len(events), error=_error_text(exc))
                    raise _BatchFailed() from exc
                if enrich is not None and outcome.started:
                    try:
                        outcome.first_steps = await enrich(conn, outcome.started)
                    except Exception as exc:
                        log.warning("could not enrich the runs in matching's transaction; matching again"
                                    " without", runs=len(outcome.started), error=_error_text(exc))
                        raise _EnrichFailed() from exc
                return outcome
            for event in events:
                try:
                    async with conn.transaction():  # a savepoint per event
                        outcome.add(await _match_batch(conn, [event], workflows, origins))
                except Exception as exc:
                    if _transient(exc):
                        raise
                    await _mark_failed(conn, event, exc, outcome)
    return outcome


async def _mark_failed(conn: asyncpg.Connection, event: Any, exc: Exception, outcome: Outcome) -> None:
    """Record that matching ``event`` failed, with the error; the state is final."""
    error = _error_text(exc)
    log.error("event could not be matched; marked failed", event_id=event["id"],
              tenant_id=event["tenant_id"], error=error, exc_info=exc)
    await conn.execute(store.MARK_FAILED, event["id"], {"error": error, "workflows": []})
    outcome.failed.append(event["id"])


# An error is kept whole up to this size in the event's report; its start beyond.
MAX_ERROR_CHARS = 2000


def _error_text(exc: BaseException) -> str:
    """The error as text PostgreSQL's jsonb accepts (no NUL, no lone surrogate), cut to size."""
    text = f"{type(exc).__name__}: {exc}"
    if len(text) > MAX_ERROR_CHARS:
        text = f"{text[:MAX_ERROR_CHARS]}… [truncated: {len(text):,} characters in all]"
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


async def _match_batch(
    conn: asyncpg.Connection, events: list[Any], workflows: dict[str, list[CachedWorkflow]],
    origins: dict[int, Any],
) -> Outcome:
    """Decide, record and create the runs of ``events``; raises if any of them fails."""
    candidates: list[Candidate] = []
    reports: list[tuple[int, dict[str, Any]]] = []
    for event in events:
        report = []
        for workflow in workflows[event["tenant_id"]]:
            matched, reason = _decide(workflow, dict(event), origins.get(event["origin_run_id"]))
            report.append({"workflow_id": str(workflow.id), "workflow": workflow.name,
                           "matched": matched, "reason": reason})
            if matched and isinstance(workflow.spec, WorkflowSpec):
                trigger = workflow.spec.trigger.for_entity(event["entity"])  # its field keys the change
                candidates.append(Candidate(event, workflow.id, workflow.spec, reason,
                                            *dedupe.keys(trigger, dict(event))))
        reports.append((event["id"], {"workflows": report}))
    created = await _create_runs(conn, candidates, reports)
    started = [row for row in created if row["status"] == "pending"]
    cancelled = await _cancel_waiting_runs(conn, events)
    return Outcome(started=[row["id"] for row in started], skipped=len(created) - len(started),
                   cancelled=cancelled)


@dataclass
class Candidate:
    """A workflow an event matched, before duplicate prevention."""

    event: Any
    workflow_id: Any
    spec: WorkflowSpec
    reason: str
    dedupe_key: str | None
    once_key: str | None


async def _create_runs(conn: asyncpg.Connection, candidates: list[Candidate],
                       reports: list[tuple[int, dict[str, Any]]]) -> list[Any]:
    """Mark the events matched with their ``reports`` and insert a run per candidate:
    pending, or skipped with the reason it duplicates another."""
    # Only workflows that prevent duplicates (a window, or once_per) look at earlier
    # runs; the others' keys are still recorded, for when they start to.
    checked = [c for c in candidates if c.spec.dedupe.prevents_duplicates]
    earlier: dict[Any, list[tuple[str | None, str | None, dt.datetime]]] = defaultdict(list)
    now = None
    if checked:
        # Two batches with changes to the same record must not both decide "no duplicate":
        # serialise them per (workflow, record) until this transaction ends. Sorted: no deadlock.
        records = sorted({f"{c.workflow_id}:{c.event['entity']}:{c.event['row_id']}"
                          for c in checked if c.dedupe_key})
        if records:
            await conn.execute(store.LOCK_RECORDS, records)
        longest = max(max(c.spec.dedupe.window, c.spec.dedupe.once_per or dt.timedelta(0)) for c in checked)
        recent = await conn.fetch(
            store.RECENT_RUNS, sorted({c.workflow_id for c in checked}),
            [c.dedupe_key for c in checked if c.dedupe_key],
            [c.once_key for c in checked if c.once_key], longest.total_seconds(),
        )
        now = recent[0]["now"]
        for row in recent:
            if row["workflow_id"] is not None:
                earlier[row["workflow_id"]].append((row["dedupe_key"], row["once_key"], row["created_at"]))
    columns: list[list[Any]] = [[] for _ in range(8)]
    for c in candidates:
        skip = None
        if now is not None and c.spec.dedupe.prevents_duplicates:
            skip = dedupe.skip_reason(c.spec.dedupe, c.dedupe_key, c.once_key, earlier[c.workflow_id], now)
            if skip is None:
                # Later events of this batch are duplicates of this one.
                earlier[c.workflow_id].append((c.dedupe_key, c.once_key, now))
        values = (c.event["tenant_id"], c.workflow_id, c.event["id"], {"reason": c.reason},
                  c.dedupe_key, c.once_key, "skipped" if skip else "pending", skip)
        for column, value in zip(columns, values):
            column.append(value)
    return list(await conn.fetch(store.INSERT_RUNS, *columns, *map(list, zip(*reports))))


def _decide(workflow: CachedWorkflow, event: dict[str, Any], origin_workflow: Any) -> tuple[bool, str]:
    if event["workflow_id"] is not None and event["workflow_id"] != workflow.id:
        return False, "the event was fired for another workflow"
    if origin_workflow is not None and origin_workflow == workflow.id:
        return False, "the change was made by this workflow's own update_record (loop prevented)"
    if isinstance(workflow.spec, WorkflowValidationError):
        return False, f"workflow is invalid: {workflow.spec}"
    verdict = evaluate(workflow.spec, event)
    return verdict.matched, verdict.reason


async def _origin_workflows(conn: asyncpg.Connection, events: list[Any]) -> dict[int, Any]:
    """For changes Herald made itself: the run that made them -> its workflow."""
    run_ids = sorted({e["origin_run_id"] for e in events if e["origin_run_id"] is not None})
    if not run_ids:
        return {}
    return {row["id"]: row["workflow_id"] for row in await conn.fetch(store.RUN_WORKFLOWS, run_ids)}


async def _cancel_waiting_runs(conn: asyncpg.Connection, events: list[Any]) -> int:
    """Cancel delayed runs on the same records whose cancel_on triggers these events
    fire (each event's ``waiting``, read by its claim), each by the first that does."""
    firing: dict[int, tuple[dict[str, Any], list[Any]]] = {}
    for event in events:
        for step in event["waiting"] or ():
            firing.setdefault(step["id"], (step, []))[1].append(event)
    cancelled = 0
    for step, candidates in firing.values():
        for event in candidates:
            if event["id"] <= step["event_id"]:
                continue
            fired = next((name for name in step["config"].get("cancel_on", [])
                          if parse_trigger(name).explain(dict(event)) is None), None)
            if fired is not None:
                done = await conn.execute(store.CANCEL_RUN, step["run_id"],
                                          f"cancelled by event {event['id']} ({fired})")
                cancelled += done == "UPDATE 1"  # not when an earlier event of this message cancelled it
                break
    return cancelled
