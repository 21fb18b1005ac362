"""The worker's workflow cache under change: a tenant whose entry is dropped while
another tenant's workflows load (a workflow saved, or the listening connection
lost, as when PostgreSQL restarts) still gets its workflows in that batch, and
a load that raced the change is not kept."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from actors.workflows_cache import WorkflowCache
from daemon.workflows import import_workflow
from tests.conftest import wait_until


def sms_workflow(name: str) -> dict[str, Any]:
    return {"name": name, "trigger_type": "job_completed", "steps": [{
        "id": "sms", "type": "action", "config": {
            "actionType": "sms", "message": "Job {{job.title}} completed", "recipient": "{{client.phone}}"}}]}


class ChangeDuringLoad:
    """A real connection whose next ``fetch`` first runs ``change`` (the race, made certain)."""

    def __init__(self, conn: asyncpg.Connection, change: Any) -> None:
        self._conn, self._change = conn, change

    async def fetch(self, *args: Any) -> Any:
        await self._change()
        return await self._conn.fetch(*args)


async def test_a_tenant_whose_entry_is_dropped_by_a_notification_mid_load_keeps_its_workflows(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await conn.execute("UPDATE herald.workflows SET is_active = false")
    await import_workflow(conn, "1", sms_workflow("one's sms"))
    await import_workflow(conn, "2", sms_workflow("two's sms"))
    first = await cache.for_tenants(conn, ["1"])
    assert [w.name for w in first["1"]] == ["one's sms"]

    async def save_tenant_ones_workflow() -> None:
        before = cache._generation["1"]
        async with pool.acquire() as other:  # another session saves; its NOTIFY reaches the cache
            await other.execute("UPDATE herald.workflows SET updated_at = now() WHERE tenant_id = '1'")
        await wait_until(lambda: _async(cache._generation["1"] > before), timeout=10,
                         message="the cache to hear tenant 1's change")

    both = await cache.for_tenants(ChangeDuringLoad(conn, save_tenant_ones_workflow), ["1", "2"])

    assert [w.name for w in both["1"]] == ["one's sms"]
    assert [w.name for w in both["2"]] == ["two's sms"]
    assert "1" not in cache._entries  # dropped by the change, loaded again next time
    again = await cache.for_tenants(conn, ["1"])
    assert [w.name for w in again["1"]] == ["one's sms"]


async def test_a_lost_listener_mid_load_keeps_every_tenants_workflows_and_caches_none(
    conn: asyncpg.Connection, cache: WorkflowCache
) -> None:
    await conn.execute("UPDATE herald.workflows SET is_active = false")
    await import_workflow(conn, "1", sms_workflow("one's sms"))
    await import_workflow(conn, "2", sms_workflow("two's sms"))
    await cache.for_tenants(conn, ["1"])

    async def lose_the_listener() -> None:
        assert cache._listener is not None
        await conn.execute("SELECT pg_terminate_backend($1)", cache._listener.get_server_pid())
        await wait_until(lambda: _async(not cache._entries), timeout=10,
                         message="the cache to drop its entries")

    both = await cache.for_tenants(ChangeDuringLoad(conn, lose_the_listener), ["1", "2"])

    assert [w.name for w in both["1"]] == ["one's sms"]
    assert [w.name for w in both["2"]] == ["two's sms"]
    assert "2" not in cache._entries  # loaded while the change landed: not kept


async def _async(value: bool) -> bool:
    return value


async def test_batches_arriving_together_share_one_listening_connection(
    conn: asyncpg.Connection, db_url: str, cache: WorkflowCache
) -> None:
    workers = [await asyncpg.connect(db_url) for _ in range(4)]
    try:
        await asyncio.gather(*(cache.for_tenants(worker, [str(n % 3 + 1)]) for n, worker in enumerate(workers)))
    finally:
        for worker in workers:
            await worker.close()

    listeners = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'herald-worker-cache'")
    assert listeners == 1
