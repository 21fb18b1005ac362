"""Enriching runs (the enrich actor's work): load the rows a run's templates need,
snapshot them, create its steps.

A run's steps are those of the workflow version it recorded when it was created
(``herald.runs.workflow_version``), whatever was saved since.

The context (the event's row, its old and new values, and each declared
relation such as the job's client and organization) is stored on the run, so
every step, and any retry, renders from what the run saw.

A related row is loaded only if it belongs to the event's tenant, whenever the
related table says whose a row is: its tenant column if Herald watches it, else
a column named like the event table's tenant column. A row of another tenant is
left out of the context (the relation is None) and a run whose steps name that
relation fails before any step runs, with the reason ("relation client not
loaded: client 5 belongs to another tenant"): nothing is sent to, or shows,
another tenant's data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import jinja2
import structlog
from jinja2 import meta

from actors import store
from actors.model.actions import SPECS
from actors.model.workflow import StepSpec, event_context, parse_workflow, stages
from config import log_context
from config.errors import WorkflowValidationError

log = structlog.get_logger(__name__)

# What a related table that changed under Herald raises when read.
_SCHEMA_CHANGED = (asyncpg.UndefinedColumnError, asyncpg.UndefinedTableError, asyncpg.InsufficientPrivilegeError)

# Only parses (finds the variables a template names); rendering is actors.model.templates'.
_PARSER = jinja2.Environment()


class _Unreadable(Exception):
    """A related table could not be read inside the enriching transaction, which
    PostgreSQL has aborted: enrich again without it (``found``), or, when the query
    of several tables failed, reading them one by one to find which."""

    def __init__(self, *, found: bool) -> None:
        super().__init__()
        self.found = found


async def enrich_runs(conn: asyncpg.Connection, run_ids: list[int]) -> dict[str, list[int]]:
    """Claim the pending runs among ``run_ids``, store their contexts and steps, in one
    transaction; return the first steps to start, by action.

    Related rows are read in that transaction, every related table in one query
    and without a savepoint (two round trips fewer per table, on every event): a
    table that cannot be read (changed under Herald) aborts it, and the runs are
    enriched again from the start, the tables read one by one to find which, then
    with that table left out, so that the runs needing it fail saying why.
    """
    unreadable: dict[_Target, str] = {}
    one_by_one = False
    while True:
        try:
            async with conn.transaction():
                return await _enrich(conn, run_ids, unreadable, one_by_one)
        except _Unreadable as exc:
            # Each pass leaves out one more table, or goes one by one: it ends.
            one_by_one = one_by_one or not exc.found


async def enrich_in_transaction(conn: asyncpg.Connection, run_ids: list[int]) -> dict[str, list[int]]:
    """:func:`enrich_runs` in the caller's transaction (matching's), in one pass: a
    related table that cannot be read raises, having aborted the transaction."""
    return await _enrich(conn, run_ids, {}, False)


async def _enrich(conn: asyncpg.Connection, run_ids: list[int], unreadable: dict[_Target, str],
                  one_by_one: bool) -> dict[str, list[int]]:
    """One pass of :func:`enrich_runs`, in the caller's transaction."""
    first_steps: dict[str, list[int]] = defaultdict(list)
    runs = await conn.fetch(store.CLAIM_RUNS, run_ids)
    if runs:
        with log_context.bound(**log_context.rows_ids("run", runs, event_key="event_id")):
            await _enrich_claimed(conn, runs, first_steps, unreadable, one_by_one)
    return first_steps


async def _enrich_claimed(conn: asyncpg.Connection, runs: list[Any], first_steps: dict[str, list[int]],
                          unreadable: dict[_Target, str], one_by_one: bool) -> None:
    """Store the claimed runs' contexts and steps (in the caller's transaction)."""
    # The claim brought each run's watch (store.CLAIM_RUNS).
    watched = {run["table_name"]: run for run in runs if run["watched_table"] is not None}
    contexts = await build_contexts(conn, runs, unreadable, guarded=False, watched=watched, one_by_one=one_by_one)
    columns: list[list[Any]] = [[] for _ in range(10)]
    refusals: dict[int, str] = {}
    for run in runs:
        built = contexts[run["id"]]
        try:
            spec = parse_workflow(run["definition"])
        except WorkflowValidationError as exc:
            # A version saved before a check it fails existed: the run fails, saying why.
            refusals[run["id"]] = f"the workflow's version {run['workflow_version']} is invalid: {exc}"
            continue
        blocked = first_blocked_step(spec.steps, built.refused)
        if blocked is not None:
            position, error = blocked
            step = spec.steps[position]
            refusals[run["id"]] = f"step {position + 1} ({step.key}, {step.action}): {error}"
        for position, (step, stage) in enumerate(zip(spec.steps, stages(spec.steps))):
            status, error = "pending", None
            if blocked is not None:  # the run fails before any step: nothing is sent
                status, error = ("failed", blocked[1]) if position == blocked[0] else ("skipped", None)
            for column, value in zip(
                columns,
                (run["id"], run["tenant_id"], position, step.key, step.action, step.config, status, error,
                 SPECS[step.action].actor, stage),
            ):
                column.append(value)
    for step in await conn.fetch(store.INSERT_STEPS, *columns, [run["id"] for run in runs],
                                 [contexts[run["id"]].context for run in runs]):
        if step["stage"] == 0 and step["status"] == "pending":  # the first stage's steps start now
            first_steps[step["action"]].append(step["id"])
    for run_id, reason in refusals.items():
        await conn.execute(store.FAIL_RUN, run_id, reason)
        log.warning("run failed before its first step", error=reason, **_ids(runs, run_id))
    log.info("runs enriched", runs=len(runs), failed=len(refusals))


def _ids(runs: list[Any], run_id: int) -> dict[str, Any]:
    """One run's ids for its log line."""
    run = next(run for run in runs if run["id"] == run_id)
    return {"run_id": run_id, "event_id": run["event_id"], "tenant_id": run["tenant_id"]}


@dataclass
class Context:
    """A run's context, and the relations left out of it with the reason for each."""

    context: dict[str, Any]
    refused: dict[str, str] = field(default_factory=dict)


# A related table as read: (table, key column, key type).
_Target = tuple[str, str, str]


def _target(relation: dict[str, Any]) -> _Target:
    return relation["table"], relation.get("key", "id"), relation.get("key_type", "text")


async def build_contexts(conn: asyncpg.Connection, runs: list[Any],
                         unreadable: dict[_Target, str] | None = None, *,
                         guarded: bool = True, watched: Mapping[str, Any] | None = None,
                         one_by_one: bool = False) -> dict[int, Context]:
    """Each run's context, loading every relation in one query (``one_by_one``: a
    query per related table).

    ``unreadable``: related tables found unreadable (by target), left out; one
    found so now is added to it. ``guarded``: the tables are read in a savepoint,
    so that the caller's transaction goes on after one that cannot be; unguarded,
    such a table raises :class:`_Unreadable` (the transaction is aborted).
    ``watched``: the runs' event tables' watches (store.WATCHED_RELATIONS' rows,
    by table) when the caller has read them; else they are read here.
    """
    if watched is None:
        tables = sorted({run["table_name"] for run in runs})
        watched = {row["table_name"]: row for row in await conn.fetch(store.WATCHED_RELATIONS, tables)}
    # Whose each related table's rows are, per (related table, event table's tenant column).
    owners = {(table, row["tenant_column"]): column
              for row in watched.values() for table, column in (row["owners"] or {}).items()}

    def relations_of(run: Any) -> dict[str, Any]:
        row = watched.get(run["table_name"])
        return dict(row["relations"]) if row is not None else {}

    def tenant_column_of(run: Any) -> str | None:
        row = watched.get(run["table_name"])
        return row["tenant_column"] if row is not None else None

    contexts: dict[int, Context] = {}
    wanted: dict[_Target, set[str]] = defaultdict(set)
    for run in runs:
        event = dict(run)
        event["id"] = run["event_id"]
        event["tenant_id"] = run["event_tenant"]
        context = event_context(event)
        contexts[run["id"]] = Context(context)
        for relation in relations_of(run).values():
            value = context[run["entity"]].get(relation["column"])
            if value is not None:
                wanted[_target(relation)].add(str(value))

    unreadable = {} if unreadable is None else unreadable
    reads = [(target, column) for target in wanted if target not in unreadable
             for column in sorted({owner for (table, _), owner in owners.items() if table == target[0]},
                                  key=lambda c: c or "")]
    loaded = await _load_related(conn, reads, wanted, unreadable, guarded=guarded, one_by_one=one_by_one)
    for run in runs:
        built = contexts[run["id"]]
        context = built.context
        row = context[run["entity"]]
        for name, relation in relations_of(run).items():
            value = row.get(relation["column"])
            context[name] = None
            if relation["column"] not in row and row:
                built.refused[name] = (f"{run['table_name']} has no column {relation['column']!r} any more;"
                                       " run `herald watch` for it again")
                continue
            if _target(relation) in unreadable:
                built.refused[name] = unreadable[_target(relation)]
                continue
            if value is None:
                continue
            owner_column = owners[(relation["table"], tenant_column_of(run))]
            found = loaded.get((_target(relation), owner_column), {}).get(str(value))
            if found is None:
                # Deleted since, or hidden from Herald's role by row-level security: a step
                # that needs it fails saying so, not with "NoneType has no attribute 'email'".
                built.refused[name] = (f"{name} {_shown(value)} not found in {relation['table']} (deleted, or hidden"
                                       " from Herald's role by row-level security)")
                continue
            related, tenant = found
            if owner_column is not None and tenant != run["event_tenant"]:
                built.refused[name] = f"{name} {_shown(value)} belongs to another tenant"
                log.warning("related row of another tenant not loaded", run_id=run["id"],
                            event_id=run["event_id"], relation=name,
                            table=relation["table"], key=str(value), tenant_id=run["event_tenant"])
                continue
            context[name] = related
    return contexts


_Loaded = dict[tuple[_Target, str | None], dict[str, tuple[dict[str, Any], str | None]]]


async def _load_related(conn: asyncpg.Connection, reads: list[tuple[_Target, str | None]],
                        wanted: Mapping[_Target, set[str]], unreadable: dict[_Target, str], *,
                        guarded: bool, one_by_one: bool) -> _Loaded:
    """The rows ``wanted`` of each (related table, its owner column) in ``reads``: all
    in one query, or one query each. When the query of several fails on a table
    that cannot be read, guarded, each is read again alone to find which;
    unguarded, :class:`_Unreadable` asks for a pass one by one."""
    loaded: _Loaded = {}
    for part in [reads] if len(reads) > 1 and not one_by_one else [[read] for read in reads]:
        if part[0][0] in unreadable:
            continue  # found so under another owner column
        try:
            async with conn.transaction() if guarded else nullcontext():
                rows = await store.load_related(conn, [
                    store.RelatedRead(*target, sorted(wanted[target]), column) for target, column in part])
        except _SCHEMA_CHANGED as exc:
            if len(part) > 1:
                if not guarded:
                    raise _Unreadable(found=False) from exc
                loaded.update(await _load_related(conn, part, wanted, unreadable, guarded=True, one_by_one=True))
                continue
            # The related table changed under Herald (a column renamed or dropped,
            # a right revoked): the runs that need it fail and say so.
            target = part[0][0]
            unreadable[target] = f"{target[0]} cannot be read by {target[1]}: {exc}"
            log.error("related table unreadable", table=target[0], key=target[1], error=str(exc))
            if not guarded:
                raise _Unreadable(found=True) from exc
            continue
        loaded.update(zip(part, rows))
    return loaded


def _shown(value: Any) -> str:
    """A related row's key as an error shows it: at most 64 characters."""
    return str(value) if len(str(value)) <= 64 else f"{str(value)[:64]}…"


def first_blocked_step(steps: tuple[StepSpec, ...], refused: dict[str, str]) -> tuple[int, str] | None:
    """The first step whose templates name a refused relation: (position, why it cannot run)."""
    if not refused:
        return None
    for position, step in enumerate(steps):
        names = _names_used(step.config)
        for name, reason in refused.items():
            if name in names:
                return position, f"relation {name} not loaded: {reason}"
    return None


def _names_used(value: Any) -> set[str]:
    """The top-level variables (``client`` of ``{{client.email}}``) a step's templates read."""
    names: set[str] = set()
    for text in _strings(value):
        if "{" not in text:
            continue
        try:
            names |= meta.find_undeclared_variables(_PARSER.parse(text))
        except jinja2.TemplateSyntaxError:
            continue  # the step fails on it when it renders
    return names


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
