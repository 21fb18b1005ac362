"""Real servers for Herald's tests: one embedded PostgreSQL and Redis per session,
a template database with Herald's schema, and a fresh database per test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import redis

# The suite owns the environment it depends on: a developer's HERALD_* or
# dramatiq_* settings, or a local time zone, must not change what Herald does
# under test (the child processes the tests start inherit this environment).
for _name in [name for name in os.environ if name.startswith(("HERALD_", "dramatiq_"))]:
    del os.environ[_name]
os.environ["TZ"] = "UTC"
time.tzset()

from config.database import connection, create_pool, migrate, quote_ident  # noqa: E402
from config.embedded_layout import EmbeddedLayout  # noqa: E402
from config.logging import configure_logging  # noqa: E402
from config.settings import Settings  # noqa: E402
from daemon.demo import load_demo  # noqa: E402
from daemon.embedded import EmbeddedServers  # noqa: E402

# Before anything imports the actors (whose broker module would claim "worker").
configure_logging(Settings.from_env({"HERALD_LOG_FORMAT": "console"}), process="tests")

T = TypeVar("T")
TEMPLATE = "herald_template"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def layout(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedLayout:
    return EmbeddedLayout.for_dir(tmp_path_factory.mktemp("herald"))


@pytest.fixture(scope="session")
def servers(layout: EmbeddedLayout) -> Iterator[EmbeddedServers]:
    embedded = EmbeddedServers(layout)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


def database_url(layout: EmbeddedLayout, name: str) -> str:
    return layout.database_url.replace("/herald?", f"/{name}?")


@pytest.fixture(scope="session")
async def template_database(servers: EmbeddedServers, layout: EmbeddedLayout) -> str:
    async with connection(layout.database_url) as admin:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    async with connection(database_url(layout, TEMPLATE)) as conn:
        await migrate(conn)
    return TEMPLATE


@contextlib.asynccontextmanager
async def fresh_database(layout: EmbeddedLayout) -> AsyncIterator[str]:
    """A new database with Herald's schema (from the template), dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    async with connection(layout.database_url) as admin:
        await admin.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {TEMPLATE}")
    try:
        yield database_url(layout, name)
    finally:
        async with connection(layout.database_url) as admin:
            # A replication slot (capture from the WAL) would keep the database from being dropped.
            await admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                                " WHERE database = $1", name)
            await admin.execute(f"DROP DATABASE {quote_ident(name)} WITH (FORCE)")


@pytest.fixture
async def db_url(template_database: str, layout: EmbeddedLayout) -> AsyncIterator[str]:
    """A fresh database for one test."""
    async with fresh_database(layout) as url:
        yield url


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with connection(db_url) as connection_:
        yield connection_


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the test's database."""
    pool = await create_pool(db_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def a_run(conn: asyncpg.Connection, status: str = "running") -> int:
    """The demo, job 1 completed, and a run of tenant 1's workflow for its event in ``status``."""
    await load_demo(conn)
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")
    workflow = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '1'")
    event_id = await conn.fetchval("SELECT id FROM herald.events ORDER BY id LIMIT 1")
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, context)"
        " VALUES ('1', $1, $2, $3, '{}') RETURNING id", workflow, event_id, status)


@pytest.fixture
def redis_url(servers: EmbeddedServers, layout: EmbeddedLayout) -> str:
    client = redis.Redis.from_url(layout.redis_url)
    client.flushall()
    client.close()
    return layout.redis_url


@pytest.fixture
def settings(db_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db_url, redis_url=redis_url, embedded=False, data_dir=tmp_path,
        sweep_interval_s=0.5, lease_s=2.0, heartbeat_interval_s=0.5,
    )


async def wait_until(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 15.0, interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
