"""/metrics: Herald's state for Prometheus, read from PostgreSQL and Redis at scrape time.

What lives in PostgreSQL and Redis (the outbox backlog and its oldest age,
events captured, queue depths with delayed and dead-letter messages, live
daemons and workers, unfinished and parked steps) is read when Prometheus
asks, so the numbers are right however many processes and machines run
Herald: scrape one dashboard. What happens inside processes (provider
requests, latencies, retries, re-sends) is counted where it happens and
served by the worker's and the daemon's own listeners (actors.metrics,
daemon.metrics).

Reading it needs ``Authorization: Bearer <HERALD_METRICS_TOKEN>`` when that is
set, and otherwise a client on this machine (see actors.metrics_http). No
tenant, no secret: counts, ages, queue and process kinds only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.metrics_http import exposition, refusal
from config.database import DATABASE_ERRORS
from config.settings import Settings
from daemon import health_reads as health_queries
from daemon.health import QUEUES
from dashboard.auth import public
from dashboard.queries import metrics as queries
from dashboard.resources import POOL, REDIS, SETTINGS

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

# A scrape answers within about this long even when a server hangs; each query
# is also bounded by a statement timeout a little shorter.
SCRAPE_TIMEOUT_S = 2.0
PROCESS_KINDS = ("daemon", "worker")
STEP_STATES = ("pending", "sending", "waiting", "unknown")
RUN_STATES = ("pending", "running")
QUEUE_STATES = ("ready", "unacked", "delayed", "dead")


async def _database(pool: asyncpg.Pool, settings: Settings) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S), pool.acquire() as conn:
            return await queries.state(conn, liveness_s=settings.liveness_s,
                                       horizon_s=health_queries.HEARTBEAT_HORIZON_S,
                                       timeout_ms=int(SCRAPE_TIMEOUT_S * 1000 * 0.75))
    except (*DATABASE_ERRORS, TimeoutError) as exc:
        log.warning("metrics: database read failed", error=type(exc).__name__)
        return None


async def _redis(client: aioredis.Redis) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S):
            return await health_queries.queue_depths(client, QUEUES)
    except (aioredis.RedisError, OSError, TimeoutError) as exc:
        log.warning("metrics: redis read failed", error=type(exc).__name__)
        return None


class StateCollector(Collector):
    """One scrape's reads as metric families; a source that failed is reported
    by ``herald_metrics_source_up`` = 0 and its families are left out (no stale zeros)."""

    def __init__(self, database: dict[str, Any] | None, redis: dict[str, Any] | None, seconds: float) -> None:
        self.database = database
        self.redis = redis
        self.seconds = seconds

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("herald_metrics_source_up", "Whether this scrape could read the source"
                               " (database, redis); 0: its metrics are missing from this scrape.",
                               labels=["source"])
        up.add_metric(["database"], float(self.database is not None))
        up.add_metric(["redis"], float(self.redis is not None))
        yield up
        yield GaugeMetricFamily("herald_metrics_scrape_duration_seconds",
                                "How long this scrape's reads of PostgreSQL and Redis took.", value=self.seconds)
        if self.database is not None:
            yield from self._database(self.database)
        if self.redis is not None:
            yield from self._redis(self.redis)

    def _database(self, db: dict[str, Any]) -> Iterator[Metric]:
        yield CounterMetricFamily("herald_events_captured", "Changes captured into the outbox (ids the"
                                  " events sequence handed out; a rolled-back change also takes one).",
                                  value=db["captured"])
        backlog = GaugeMetricFamily("herald_outbox_backlog", "Events not yet matched: pending (not yet"
                                    " dispatched) and dispatched (sent to match, not yet matched).",
                                    labels=["state"])
        backlog.add_metric(["pending"], db["backlog"]["pending"])
        backlog.add_metric(["dispatched"], db["backlog"]["dispatched"])
        yield backlog
        oldest = db["backlog"]["oldest_s"]
        yield GaugeMetricFamily("herald_outbox_oldest_age_seconds", "Age of the oldest event not yet"
                                " matched (0 when there is none).", value=max(oldest or 0.0, 0.0))
        live = GaugeMetricFamily("herald_processes_live", "Daemon and worker processes whose heartbeat"
                                 " is recent (within 3 heartbeat intervals).", labels=["kind"])
        stale = GaugeMetricFamily("herald_processes_stale", "Daemon and worker processes that stopped"
                                  " beating without saying they stopped (in the last day).", labels=["kind"])
        for kind in PROCESS_KINDS:
            counts = db["processes"].get(kind, (0, 0))
            live.add_metric([kind], counts[0])
            stale.add_metric([kind], counts[1])
        yield live
        yield stale
        runs = GaugeMetricFamily("herald_runs_unfinished", "Runs not yet finished, by status.", labels=["status"])
        for status in RUN_STATES:
            runs.add_metric([status], db["runs"].get(status, 0))
        yield runs
        steps = GaugeMetricFamily("herald_steps_unfinished", "Steps by state: pending, sending, waiting"
                                  " (a delay), unknown (parked: the outcome is not known and a person decides).",
                                  labels=["status"])
        for status in STEP_STATES:
            steps.add_metric([status], db["steps"].get(status, 0))
        yield steps
        yield GaugeMetricFamily("herald_steps_parked_unknown", "Steps parked with an unknown outcome,"
                                " waiting for a person (herald runs / the failures page).",
                                value=db["steps"].get("unknown", 0))

    def _redis(self, depths: dict[str, Any]) -> Iterator[Metric]:
        queued = GaugeMetricFamily("herald_queue_messages", "Dramatiq messages per queue: ready (waiting),"
                                   " unacked (held by a worker), delayed (the queue's .DQ), dead (its .XQ).",
                                   labels=["queue", "state"])
        for queue, depth in depths["queues"].items():
            for state in QUEUE_STATES:
                queued.add_metric([queue, state], depth[state])
        yield queued
        yield GaugeMetricFamily("herald_redis_round_trip_seconds", "The scrape's Redis round trip.",
                                value=depths["round_trip_ms"] / 1000)


@routes.get("/metrics", name="metrics")
@public  # sign-in does not apply: the metrics token or a loopback client does (below)
async def metrics(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    refused = refusal(settings.metrics_token, request.headers, request.remote)
    if refused is not None:
        status, reason = refused
        headers = {"WWW-Authenticate": 'Bearer realm="herald-metrics"'} if status == 401 else {}
        return web.Response(status=status, text=reason, headers=headers)
    started = time.monotonic()
    database, redis = await asyncio.gather(_database(request.app[POOL], settings), _redis(request.app[REDIS]))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(database, redis, time.monotonic() - started))
    body, content_type = exposition(registry, request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
