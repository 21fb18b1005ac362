"""Matching and enriching against a real PostgreSQL (issue 9): an event that fails
to match fails alone; duplicate keys have a fixed size; related rows come only
from the event's tenant; lists of runs send bounded values.

The match and enrich actors' work is called directly (``match_events``,
``enrich_runs``); the Redis side is the e2e tests' business.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from actors import dedupe
from actors.enrich import enrich_runs
from actors.match import match_events
from actors.triggers import parse_trigger
from actors.workflows_cache import WorkflowCache
from daemon.capture import Relation, watch_table
from daemon.workflows import import_workflow
from dashboard import queries

ANY_JOB_CHANGE = {"name": "any change", "trigger_type": "job_updated", "steps": [
    {"id": "sms", "type": "action", "config": {"actionType": "sms", "message": "hi", "recipient": "+15550101001"}}]}


@pytest.fixture
async def cache(db_url: str) -> AsyncIterator[WorkflowCache]:
    """The worker's workflow cache, whose listening connection is closed afterwards."""
    workflows = WorkflowCache(db_url)
    yield workflows
    if workflows._listener is not None:  # the cache has no close of its own
        await workflows._listener.close()


async def job_event(conn: asyncpg.Connection, tenant: str, new: Any) -> int:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, old, new)"
        " VALUES ($1, 'job', 'public.jobs', '1', 'UPDATE', 'job.updated', '{}', $2) RETURNING id",
        tenant, new)


async def test_an_event_that_cannot_be_matched_is_failed_and_the_rest_of_its_batch_matched(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    for tenant in ("a", "b"):
        await import_workflow(conn, tenant, ANY_JOB_CHANGE)
    before = await job_event(conn, "b", {"id": 1, "title": "Fix sink"})
    # Not a row: a bad outbox write that the matching code trips over (AttributeError).
    broken = await job_event(conn, "a", [1, 2])
    after = await job_event(conn, "b", {"id": 1, "title": "Fix tap"})

    async with pool.acquire() as worker:
        outcome = await match_events(worker, [before, broken, after], cache)
    assert outcome.failed == [broken] and len(outcome.started) == 2
    states = {row["id"]: row for row in await conn.fetch("SELECT id, state, match_report FROM herald.events")}
    assert states[broken]["state"] == "failed"
    assert states[broken]["match_report"]["error"].startswith("AttributeError: ")
    assert states[before]["state"] == states[after]["state"] == "matched"
    runs = await conn.fetch("SELECT event_id, status FROM herald.runs ORDER BY event_id")
    assert [(r["event_id"], r["status"]) for r in runs] == [(before, "pending"), (after, "pending")]

    # Final: a resent message finds nothing to do, and /health sees no backlog.
    async with pool.acquire() as worker:
        again = await match_events(worker, [broken], cache)
    assert (again.events, again.failed) == (0, [])
    assert (await queries.outbox_backlog(conn))["unmatched"] == 0


async def test_a_lone_event_that_cannot_be_matched_is_failed(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await import_workflow(conn, "a", ANY_JOB_CHANGE)
    broken = await job_event(conn, "a", [1, 2])
    async with pool.acquire() as worker:
        outcome = await match_events(worker, [broken], cache)
    assert outcome.failed == [broken]
    assert await conn.fetchval("SELECT state FROM herald.events WHERE id = $1", broken) == "failed"


async def test_a_change_of_any_size_gets_a_fixed_size_duplicate_key(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    trigger = parse_trigger("job_updated")

    def keys(title: str) -> tuple[str | None, str | None]:
        return dedupe.keys(trigger, {"operation": "UPDATE", "entity": "job", "row_id": "7",
                                     "old": {"title": "a"}, "new": {"title": title}})

    title = secrets.token_urlsafe(9000)  # about 12 KB that does not compress
    big, same, other = keys(title), keys(title), keys(title + "!")
    assert big == same and big[0] != other[0]
    assert big[0] is not None and len(big[0]) < 200 and big[0].startswith("job:7:UPDATE:")

    # The same change twice, big: the second run is a duplicate, and nothing overflows an index.
    await import_workflow(conn, "a", ANY_JOB_CHANGE)
    first = await job_event(conn, "a", {"id": 1, "title": title})
    second = await job_event(conn, "a", {"id": 1, "title": title})
    async with pool.acquire() as worker:
        outcome = await match_events(worker, [first, second], cache)
    assert (outcome.failed, len(outcome.started), outcome.skipped) == ([], 1, 1)


CRM = """
CREATE TABLE rooms (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE patients (id bigint PRIMARY KEY, practice_id text NOT NULL, email text, phone text);
CREATE TABLE appointments (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, practice_id text NOT NULL,
    patient_id bigint NOT NULL REFERENCES patients (id), room_id bigint REFERENCES rooms (id));
INSERT INTO rooms VALUES (1, 'Room 1');
INSERT INTO patients VALUES (1, 'p1', 'ann@example.com', '+15550100001'),
                            (2, 'p2', 'bob@example.com', '+15550100002');
"""


async def appointment_run(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache, patient: int
) -> int:
    """An appointment of practice p1 with ``patient``, matched and enriched; its run."""
    await conn.execute(
        "INSERT INTO appointments (practice_id, patient_id, room_id) VALUES ('p1', $1, 1)", patient)
    event = await conn.fetchval("SELECT max(id) FROM herald.events WHERE entity = 'appointment'")
    async with pool.acquire() as worker:
        outcome = await match_events(worker, [event], cache)
        [run_id] = outcome.started
        await enrich_runs(worker, [run_id])
    return run_id


async def test_a_related_row_of_another_tenant_is_not_loaded_and_its_run_sends_nothing(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await conn.execute(CRM)
    # patients is not watched: its practice_id (named like the event table's tenant column) says whose.
    # rooms has no tenant column: shared, loaded for anyone.
    await watch_table(conn, "appointments", tenant_column="practice_id", relations=(
        Relation("patient", "patients", "patient_id"), Relation("room", "rooms", "room_id")))
    await import_workflow(conn, "p1", {"name": "booked", "trigger_type": "appointment_created", "steps": [
        {"id": "note", "type": "action", "config": {
            "actionType": "email", "recipient": "office@example.com", "subject": "Booked",
            "message": "{{room.name}} booked"}},
        {"id": "text", "type": "action", "config": {
            "actionType": "sms", "recipient": "{{patient.phone}}", "message": "See you in {{room.name}}"}}]})

    foreign = await appointment_run(conn, pool, cache, patient=2)
    run = await conn.fetchrow("SELECT status, error, context FROM herald.runs WHERE id = $1", foreign)
    assert run["status"] == "failed"
    assert run["error"] == ("step 2 (text, sms): relation patient not loaded:"
                            " patient 2 belongs to another tenant")
    assert run["context"]["patient"] is None and run["context"]["room"]["name"] == "Room 1"
    assert "bob@example.com" not in json.dumps(run["context"])
    steps = await conn.fetch("SELECT status, error FROM herald.steps WHERE run_id = $1 ORDER BY position",
                             foreign)
    # The run fails before any of its steps: nothing of it is sent.
    assert [(s["status"], s["error"]) for s in steps] == [
        ("skipped", None), ("failed", "relation patient not loaded: patient 2 belongs to another tenant")]

    own = await appointment_run(conn, pool, cache, patient=1)
    run = await conn.fetchrow("SELECT status, context FROM herald.runs WHERE id = $1", own)
    assert run["status"] == "running" and run["context"]["patient"]["email"] == "ann@example.com"
    assert await conn.fetchval("SELECT status FROM herald.steps WHERE run_id = $1 AND position = 0",
                               own) == "pending"


async def test_a_watched_related_tables_own_tenant_column_decides(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await conn.execute(CRM)
    # Named differently from the event table's tenant column: only watching it tells Herald.
    await conn.execute("ALTER TABLE patients RENAME COLUMN practice_id TO clinic")
    await watch_table(conn, "patients", tenant_column="clinic")
    await watch_table(conn, "appointments", tenant_column="practice_id",
                      relations=(Relation("patient", "patients", "patient_id"),))
    await import_workflow(conn, "p1", {"name": "booked", "trigger_type": "appointment_created", "steps": [
        {"id": "mail", "type": "action", "config": {
            "actionType": "email", "recipient": "{{patient.email}}", "subject": "Booked", "message": "Hi"}}]})
    foreign = await appointment_run(conn, pool, cache, patient=2)
    assert "patient 2 belongs to another tenant" in await conn.fetchval(
        "SELECT error FROM herald.runs WHERE id = $1", foreign)
    own = await appointment_run(conn, pool, cache, patient=1)
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", own) == "running"


async def test_lists_of_runs_cut_long_values_and_one_run_has_them_whole(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    limit = queries.LIST_VALUE_CHARS
    await import_workflow(conn, "a", ANY_JOB_CHANGE)
    event = await job_event(conn, "a", {"id": 1})
    workflow = await conn.fetchval("SELECT id FROM herald.workflows")
    run_id = await conn.fetchval(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, error, match_reason)"
        " VALUES ('a', $1, $2, 'failed', $3, $4) RETURNING id",
        workflow, event, "e" * 3000, {"reason": "r" * limit})
    rendered = {"recipient": "+15550101001", "message": "m" * 50_000, "payload": {"big": "p" * 5000}}
    await conn.execute(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, config, status, rendered)"
        " VALUES ($1, 'a', 0, 'sms', 'sms', '{}', 'failed', $2)", run_id, rendered)

    [listed] = await queries.recent_runs(pool, tenant=None, status=None, limit=10)
    assert listed["error"] == "e" * limit + "… [truncated: 3,000 characters in all]"
    assert listed["match_reason"] == "r" * limit  # at the limit: whole
    step = listed["steps"][0]["rendered"]
    assert step["recipient"] == "+15550101001"
    assert step["message"] == "m" * limit + "… [truncated: 50,000 characters in all]"
    assert step["payload"].startswith('{"big": "ppp') and step["payload"].endswith("characters in all]")
    assert len(json.dumps(listed)) < 5 * (limit + 100)  # four long values, each cut

    [whole] = await queries.recent_runs(pool, tenant=None, status=None, limit=1, run_id=run_id, clip=None)
    assert whole["error"] == "e" * 3000 and whole["steps"][0]["rendered"] == rendered
    assert await queries.recent_runs(pool, tenant=None, status=None, limit=1, run_id=run_id + 1) == []
