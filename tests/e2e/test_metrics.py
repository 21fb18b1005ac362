"""/metrics after a real run: a job completed with SQL, its email and SMS delivered
through fake SMTP and Telnyx servers by the real daemon and worker processes,
then the dashboard's, the worker's and the daemon's /metrics read and parsed."""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from config.settings import Settings
from daemon.demo import load_demo
from dashboard.app import create_app
from tests.conftest import wait_until
from tests.e2e.conftest import Processes, free_port
from tests.fakes import FakeSMTPServer, FakeTelnyx

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def fetch(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return answer.read().decode()
    except (urllib.error.URLError, OSError):
        return None


async def test_metrics_after_a_job_completed_through_fake_providers(
        conn: asyncpg.Connection, processes: Processes, settings: Settings, aiohttp_client: Any) -> None:
    await load_demo(conn)
    worker_port, daemon_port = free_port(), free_port()
    with FakeSMTPServer() as smtp:
        async with FakeTelnyx() as telnyx:
            processes.env.update({
                "HERALD_EMAIL_PROVIDER": "smtp", "HERALD_SMTP_HOST": "127.0.0.1",
                "HERALD_SMTP_PORT": str(smtp.port), "HERALD_SMS_PROVIDER": "telnyx",
                "HERALD_TELNYX_BASE_URL": telnyx.url, "HERALD_TELNYX_API_KEY": "telnyx-key",
                "HERALD_SMS_FROM": "+15550000000",
                "HERALD_WORKER_METRICS_PORT": str(worker_port), "HERALD_DAEMON_METRICS_PORT": str(daemon_port),
            })
            processes.start("daemon", "daemon")
            worker = processes.start("worker", "worker")
            await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")

            async def run_finished() -> Any:
                return await conn.fetchrow("SELECT status, error FROM herald.runs"
                                           " WHERE status IN ('completed', 'failed')")

            run = await wait_until(run_finished, timeout=30, message="the job-1 run to finish")
            assert run["status"] == "completed", run["error"]
            assert len(smtp.messages) == 1 and len(telnyx.delivered) == 1

            # The worker group's /metrics: Herald's counters summed over its processes.
            async def worker_metrics() -> Samples | None:
                text = fetch(worker_port)
                return parse(text) if text else None

            work = await wait_until(worker_metrics, timeout=30, message="the worker's /metrics")
            assert value(work, "herald_provider_requests_total", channel="email", provider="smtp",
                         outcome="sent") == 1
            assert value(work, "herald_provider_requests_total", channel="sms", provider="telnyx",
                         outcome="sent") == 1
            assert not any(name == "herald_provider_requests_total" and dict(labels)["outcome"] != "sent"
                           for name, labels in work)
            for channel in ("email", "sms"):
                assert value(work, "herald_commit_to_provider_seconds_count", channel=channel) == 1
                assert 0 < value(work, "herald_commit_to_provider_seconds_sum", channel=channel) < 30
            assert value(work, "herald_steps_total", action="email", outcome="sent") == 1
            assert value(work, "herald_steps_total", action="sms", outcome="sent") == 1
            assert value(work, "herald_runs_total", status="completed") == 1
            assert value(work, "herald_run_duration_seconds_count", status="completed") == 1
            # Tenant labels are off by default: no per-tenant series at all.
            assert "herald_workflow_runs_total" not in names(work)
            # Dramatiq's own message metrics, from the same multiprocess directory.
            assert value(work, "dramatiq_messages_total", queue_name="match", actor_name="match") >= 1

            daemon_text = fetch(daemon_port)
            assert daemon_text is not None
            run_daemon = parse(daemon_text)
            assert value(run_daemon, "herald_events_dispatched_total") >= 1
            # Shown from the start (a slow machine may have needed a re-send, so not == 0).
            assert value(run_daemon, "herald_sweeper_resent_total", kind="event") >= 0

            # The dashboard's /metrics: the state in PostgreSQL and Redis.
            client = await aiohttp_client(create_app(settings))
            answer = await client.get("/metrics")
            assert answer.status == 200, await answer.text()
            state = parse(await answer.text())
            assert value(state, "herald_metrics_source_up", source="database") == 1
            assert value(state, "herald_metrics_source_up", source="redis") == 1
            assert value(state, "herald_events_captured_total") == 1
            assert value(state, "herald_outbox_backlog", state="pending") == 0
            assert value(state, "herald_outbox_backlog", state="dispatched") == 0
            assert value(state, "herald_outbox_oldest_age_seconds") == 0
            assert value(state, "herald_processes_live", kind="daemon") == 1
            assert value(state, "herald_processes_live", kind="worker") >= 1
            assert value(state, "herald_steps_parked_unknown") == 0
            for queue in ("match", "enrich", "email", "sms", "webhook", "records"):
                for depth in ("ready", "unacked", "delayed", "dead"):
                    assert value(state, "herald_queue_messages", queue=queue, state=depth) == 0
            assert "telnyx-key" not in await answer.text() + daemon_text

            directory = Path(tempfile.gettempdir()) / f"herald-worker-metrics-{worker.pid}"
            assert directory.is_dir()
            processes.stop_all()
            assert worker.returncode == 0
            assert not directory.exists()
            assert fetch(worker_port) is None
