"""Herald's speed on this machine, with everything running (PostgreSQL, Redis, daemon, worker).

    .venv/bin/python -m tests.bench.throughput [--events 2000] [--rate 50] [--runs 3] [--processes 1]

Throughput: N jobs complete in one transaction; events/s until every run has
delivered its email and SMS (capture provider). Latency: jobs complete one at
a time at --rate per second; time from the job's commit (the outbox row's
created_at) to its first message row. Reports medians over --runs runs.

This is the quick, older check (capture providers, no network, all jobs in one
transaction). The project's benchmark is ``python -m tests.bench.run``: one job
per transaction, open-loop rate and max modes, HTTP providers answering after a
fixed delay, per-channel latency measured at the provider, CPU and memory per
process group, and the capture trigger's write overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from config.database import connection, migrate
from config.embedded_layout import EmbeddedLayout
from daemon.demo import load_demo
from daemon.embedded import EmbeddedServers
from tests.e2e.conftest import running_herald

DONE = "SELECT count(*) FROM herald.runs WHERE status = 'completed'"


async def fresh(layout: EmbeddedLayout, name: str) -> str:
    async with connection(layout.database_url) as admin:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    url = layout.database_url.replace("/herald?", f"/{name}?")
    async with connection(url) as conn:
        await migrate(conn)
        await load_demo(conn)
        await conn.execute("UPDATE herald.workflows SET definition = definition || '{\"dedupe\": {\"window_s\": 0}}'")
    return url


async def wait_for(url: str, count: int, timeout: float) -> None:
    async with connection(url) as conn:
        deadline = time.monotonic() + timeout
        while await conn.fetchval(DONE) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{await conn.fetchval(DONE)} of {count} runs completed")
            await asyncio.sleep(0.05)


async def warm_up(url: str) -> int:
    """Complete one demo job and wait for its run: the worker is up and connected."""
    async with connection(url) as conn:
        await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")
    await wait_for(url, 1, timeout=60)
    return 1


async def throughput(layout: EmbeddedLayout, events: int, log_dir: Path, processes: int) -> float:
    url = await fresh(layout, "bench_throughput")
    async with connection(url) as conn:
        await conn.execute("INSERT INTO jobs (organization_id, client_id, title) SELECT 1, 1 + g % 3, 'B' || g"
                           " FROM generate_series(1, $1) g", events)
    with running_herald(url, layout.redis_url, log_dir, HERALD_RECIPIENT_LIMIT="0", HERALD_LOG_LEVEL="WARNING",
                        HERALD_WORKER_PROCESSES=str(processes)):
        warm = await warm_up(url)
        async with connection(url) as conn:
            started = time.monotonic()
            await conn.execute("UPDATE jobs SET status = 'completed' WHERE title LIKE 'B%'")
        await wait_for(url, events + warm, timeout=600)
        return events / (time.monotonic() - started)


async def latency(
    layout: EmbeddedLayout, rate: float, seconds: float, log_dir: Path, processes: int
) -> tuple[float, float]:
    url = await fresh(layout, "bench_latency")
    count = int(rate * seconds)
    async with connection(url) as conn:
        await conn.execute("INSERT INTO jobs (organization_id, client_id, title) SELECT 1, 1 + g % 3, 'L' || g"
                           " FROM generate_series(1, $1) g", count)
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM jobs WHERE title LIKE 'L%' ORDER BY id")]
    with running_herald(url, layout.redis_url, log_dir, HERALD_RECIPIENT_LIMIT="0", HERALD_LOG_LEVEL="WARNING",
                        HERALD_WORKER_PROCESSES=str(processes)):
        warm = await warm_up(url)
        async with connection(url) as conn:
            start = time.monotonic()
            for i, job in enumerate(ids):
                # Pacing the load at --rate, not waiting on Herald.
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job)
        await wait_for(url, count + warm, timeout=120)
        async with connection(url) as conn:
            rows = await conn.fetch(
                "SELECT extract(epoch FROM min(m.created_at) - e.created_at) * 1000 AS ms FROM herald.messages m"
                " JOIN herald.runs r ON r.id = m.run_id JOIN herald.events e ON e.id = r.event_id"
                " JOIN jobs j ON j.id::text = e.row_id WHERE j.title LIKE 'L%' GROUP BY e.id")
    values = sorted(float(r["ms"]) for r in rows)
    return statistics.median(values), values[int(len(values) * 0.99) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="Dramatiq worker processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as tmp:
        layout = EmbeddedLayout.for_dir(Path(tmp))
        servers = EmbeddedServers(layout)
        servers.start()
        try:
            rates, p50s, p99s = [], [], []
            for run in range(args.runs):
                rates.append(await throughput(layout, args.events, Path(tmp), args.processes))
                p50, p99 = await latency(layout, args.rate, args.seconds, Path(tmp), args.processes)
                p50s.append(p50)
                p99s.append(p99)
                print(f"run {run + 1}: {rates[-1]:.0f} events/s; first message p50 {p50:.1f} ms, p99 {p99:.1f} ms",
                      flush=True)
        finally:
            servers.stop()
    print(f"median of {args.runs}: {statistics.median(rates):.0f} events/s ({args.events} events, email + SMS each);"
          f" first message at {args.rate:g} events/s: p50 {statistics.median(p50s):.1f} ms,"
          f" p99 {statistics.median(p99s):.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
