"""Who may read /metrics (token, loopback, proxies), what the dashboard's /metrics
reports from a real database and Redis, and that label sets stay bounded."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics import OTHER, TenantLabels
from actors.metrics_http import refusal, serve_in_thread
from config.settings import Settings
from dashboard.app import create_app
from tests.e2e.conftest import free_port

TOKEN = "metrics-token-for-tests"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_the_dashboards_metrics_answer_loopback_clients_only_without_a_token(
        settings: Settings, aiohttp_client: Any, conn: asyncpg.Connection) -> None:
    client = await aiohttp_client(create_app(settings))
    answer = await client.get("/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    # Through a proxy on this machine, the client is somewhere else.
    for header in ("X-Forwarded-For", "Forwarded"):
        refused = await client.get("/metrics", headers={header: "203.0.113.9"})
        assert refused.status == 403
        assert "HERALD_METRICS_TOKEN" in await refused.text()


async def test_with_a_token_the_dashboards_metrics_need_it(settings: Settings, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(settings.replace(metrics_token=TOKEN)))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        refused = await client.get("/metrics", headers=headers)
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in await refused.text()
    answer = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}",
                                                   "X-Forwarded-For": "203.0.113.9"})
    assert answer.status == 200
    assert TOKEN not in await answer.text()


def test_the_rule_refuses_other_machines_without_a_token() -> None:
    assert refusal("", {}, "127.0.0.1") is None
    assert refusal("", {}, "::1") is None
    assert refusal("", {}, "::ffff:127.0.0.1") is None
    assert refusal("", {}, "10.0.0.5")[0] == 403  # type: ignore[index]
    assert refusal("", {}, None)[0] == 403  # type: ignore[index]
    assert refusal(TOKEN, {"Authorization": f"Bearer {TOKEN}"}, "10.0.0.5") is None
    assert refusal(TOKEN, {}, "127.0.0.1")[0] == 401  # type: ignore[index]


async def test_the_dashboards_metrics_report_the_outbox_and_queues(
        settings: Settings, aiohttp_client: Any, conn: asyncpg.Connection) -> None:
    from tests.conftest import a_run

    await a_run(conn)  # the demo, and job 1 completed: one event, left pending
    await conn.execute("UPDATE herald.events SET created_at = clock_timestamp() - interval '90 seconds'")
    await conn.execute("UPDATE jobs SET title = title || '!' WHERE id = 2")
    await conn.execute(
        "INSERT INTO herald.heartbeats (instance, hostname, pid, started_at, last_seen_at, kind)"
        " VALUES ('h:1:a', 'h', 1, now(), clock_timestamp(), 'daemon'),"
        "        ('h:2:b', 'h', 2, now(), clock_timestamp() - interval '1 hour', 'worker')")
    client = await aiohttp_client(create_app(settings))
    found = samples(await (await client.get("/metrics")).text())
    assert found[("herald_outbox_backlog", (("state", "pending"),))] == 2
    assert found[("herald_events_captured_total", ())] == 2
    assert 90 <= found[("herald_outbox_oldest_age_seconds", ())] < 200
    assert found[("herald_processes_live", (("kind", "daemon"),))] == 1
    assert found[("herald_processes_live", (("kind", "worker"),))] == 0
    assert found[("herald_processes_stale", (("kind", "worker"),))] == 1
    assert found[("herald_runs_unfinished", (("status", "running"),))] == 1
    assert found[("herald_queue_messages", (("queue", "match"), ("state", "ready")))] == 0


async def test_a_source_that_is_down_is_reported_not_hidden(settings: Settings, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(settings.replace(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)))
    answer = await client.get("/metrics")
    assert answer.status == 200
    found = samples(await answer.text())
    assert found[("herald_metrics_source_up", (("source", "redis"),))] == 0
    assert found[("herald_metrics_source_up", (("source", "database"),))] == 1
    assert not any(name == "herald_queue_messages" for name, _ in found)


def test_a_processs_own_listener_follows_the_same_rule(settings: Settings) -> None:
    registry = CollectorRegistry()
    Counter("herald_example", "An example.", registry=registry).inc()
    port = free_port()
    stop = serve_in_thread(lambda: registry, settings.replace(metrics_token=TOKEN), port, what="daemon")
    try:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
            raise AssertionError("answered without the token")
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert samples(answer.read().decode())[("herald_example_total", ())] == 1
    finally:
        stop()
    # Port 0: no listener at all.
    assert serve_in_thread(lambda: registry, settings.replace(daemon_metrics_port=0), 0, what="daemon")() is None


def test_tenant_labels_stay_bounded() -> None:
    # Off (the default): no tenant or workflow label, however many tenants.
    off = TenantLabels(0)
    assert all(off.labels(f"tenant-{n}", "Job Completed") is None for n in range(1000))
    # On for 3 tenants: the 4th and later are "other"; a tenant's workflows are capped too.
    on = TenantLabels(3)
    seen = {on.labels(f"tenant-{n}", f"workflow-{n % 7}") for n in range(1000)}
    tenants = {tenant for tenant, _ in seen if tenant is not None}
    assert tenants == {"tenant-0", "tenant-1", "tenant-2", OTHER}
    assert on.labels("tenant-0", "workflow-0") == ("tenant-0", "workflow-0")
    many = {on.labels("tenant-1", f"w{n}") for n in range(500)}
    assert len(many) <= 51 and ("tenant-1", OTHER) in many


def test_runs_from_many_tenants_with_tenant_labels_off_add_no_series() -> None:
    from actors import metrics

    metrics._tenant_labels = TenantLabels(0)
    try:
        for n in range(200):
            metrics.record_run_finished("completed", 0.5, f"tenant-{n}", f"workflow-{n}")
    finally:
        metrics._tenant_labels = None
    exposed = samples(generate_latest(metrics.REGISTRY).decode())
    assert not any("tenant" in dict(labels) for _, labels in exposed)
    assert exposed[("herald_runs_total", (("status", "completed"),))] >= 200
