"""Herald's connection pools: set up once per connection, so that no event pays
for a connection's first use."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from config.database import create_pool


@pytest.mark.parametrize("generic_plans, mode", [(True, "force_generic_plan"), (False, "auto")])
async def test_the_workers_pool_plans_each_statement_once(db_url: str, generic_plans: bool, mode: str) -> None:
    pool = await create_pool(db_url, min_size=1, max_size=1, generic_plans=generic_plans)
    try:
        for _ in range(2):  # still so after the connection went back to the pool
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW plan_cache_mode") == mode
    finally:
        await pool.close()


async def test_a_new_pooled_connection_knows_the_array_types_herald_uses(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg looks up a type it does not know (three round trips and a catalog query)
    # the first time a statement uses it; a pooled connection does that when it opens.
    looked_up: list[list[int]] = []
    introspect = asyncpg.Connection._introspect_types

    async def counting(self: asyncpg.Connection, typeoids: Any, timeout: Any) -> Any:
        looked_up.append(sorted(typeoids))
        return await introspect(self, typeoids, timeout)

    monkeypatch.setattr(asyncpg.Connection, "_introspect_types", counting)
    pool = await create_pool(db_url, min_size=1, max_size=1, generic_plans=True)
    try:
        opened = len(looked_up)
        assert opened == 1  # once, all together
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM unnest($1::bigint[], $2::int[], $3::uuid[], $4::jsonb[]) AS u(a, b, c, d)",
                [1], [2], ["00000000-0000-0000-0000-000000000001"], [{"x": 1}])
            assert [tuple(row) for row in rows][0][:2] == (1, 2)
            assert await conn.fetchval("SELECT array_agg(id) FROM herald.events") is None
        assert len(looked_up) == opened, looked_up
    finally:
        await pool.close()


async def test_the_worker_process_pool_is_the_one_planning_once(
    db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's pool as actors.db builds it, on this test's database.
    from actors import db
    from config.settings import current

    monkeypatch.setenv("HERALD_DATABASE_URL", db_url)
    monkeypatch.setenv("HERALD_REDIS_URL", redis_url)
    current.cache_clear()
    try:
        worker_pool = await db._pool._factory()
    finally:
        current.cache_clear()
    try:
        async with worker_pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    finally:
        await worker_pool.close()
