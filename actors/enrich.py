"""enrich(run_ids): load the rows a run's templates need, snapshot them, start the run.

The context (the event's row, its old and new values, and each declared
relation such as the job's client and organization) is stored on the run, so
every step, and any retry, renders from what the run saw.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import dramatiq
import structlog

from actors import store
from actors.actions import ACTIONS
from actors.db import get_pool
from actors.workflow import event_context, parse_workflow

log = structlog.get_logger(__name__)


@dramatiq.actor(queue_name="enrich", max_retries=5, min_backoff=500)
async def enrich(run_ids: list[int]) -> None:
    pool = await get_pool()
    first_steps: dict[str, list[int]] = defaultdict(list)
    async with pool.acquire() as conn, conn.transaction():
        runs = await conn.fetch(store.CLAIM_RUNS, run_ids)
        if not runs:
            return
        contexts = await _build_contexts(conn, runs)
        columns: list[list[Any]] = [[], [], [], [], [], []]
        for run in runs:
            await conn.execute(store.SET_CONTEXT, run["id"], contexts[run["id"]])
            spec = parse_workflow(run["definition"])
            for position, step in enumerate(spec.steps):
                for column, value in zip(
                    columns,
                    (run["id"], run["tenant_id"], position, step.key, step.action, step.config),
                ):
                    column.append(value)
        for step in await conn.fetch(store.INSERT_STEPS, *columns):
            if step["position"] == 0:
                first_steps[step["action"]].append(step["id"])
    log.info("runs enriched", runs=len(runs))
    broker = dramatiq.get_broker()
    for action, step_ids in first_steps.items():
        # Off the event loop: a slow Redis must not stall the other actors.
        await asyncio.to_thread(broker.get_actor(ACTIONS[action].actor).send, step_ids)


def _target(relation: dict[str, Any]) -> tuple[str, str, str]:
    return relation["table"], relation.get("key", "id"), relation.get("key_type", "text")


async def _build_contexts(conn: Any, runs: list[Any]) -> dict[int, dict[str, Any]]:
    """Each run's context, loading every relation with one query per related table."""
    tables = sorted({run["table_name"] for run in runs})
    relations_by_table = {
        row["table_name"]: row["relations"]
        for row in await conn.fetch(store.WATCHED_RELATIONS, tables)
    }
    contexts: dict[int, dict[str, Any]] = {}
    wanted: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for run in runs:
        event = dict(run)
        event["id"] = run["event_id"]
        event["tenant_id"] = run["event_tenant"]
        context = contexts[run["id"]] = event_context(event)
        for relation in relations_by_table.get(run["table_name"], {}).values():
            value = context[run["entity"]].get(relation["column"])
            if value is not None:
                wanted[_target(relation)].add(str(value))

    loaded = {}
    for (table, key, key_type), keys in wanted.items():
        loaded[(table, key, key_type)] = await store.load_related(
            conn, {"table": table, "key": key, "key_type": key_type}, sorted(keys)
        )
    for run in runs:
        context = contexts[run["id"]]
        for name, relation in relations_by_table.get(run["table_name"], {}).items():
            value = context[run["entity"]].get(relation["column"])
            related = loaded.get(_target(relation), {})
            context[name] = related.get(str(value)) if value is not None else None
    return contexts
