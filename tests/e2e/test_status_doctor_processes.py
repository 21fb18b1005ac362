"""`herald status` and `herald doctor` as an operator runs them, beside a real daemon and
Dramatiq worker: all well (exit 0), then the worker stopped (status exit 1)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from typing import Any

import asyncpg

from daemon.demo import load_demo
from tests.conftest import REPO, wait_until
from tests.e2e.conftest import Processes

# Delivering providers with their credentials, and an actor time limit below the tests'
# short lease: nothing for doctor to warn about.
WELL_SET = {
    "HERALD_ACTOR_TIME_LIMIT": "1.5",
    "HERALD_EMAIL_PROVIDER": "smtp", "HERALD_SMTP_HOST": "127.0.0.1", "HERALD_SMTP_PORT": "2525",
    "HERALD_EMAIL_FROM": "Acme <ops@acme.example>",
    "HERALD_SMS_PROVIDER": "telnyx", "HERALD_TELNYX_API_KEY": "telnyx-key-SECRET-5521",
    "HERALD_SMS_FROM": "+15550001111",
}


def herald(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


async def status_json(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = await asyncio.to_thread(herald, env, "status", "--json")
    return done.returncode, json.loads(done.stdout)


async def test_status_and_doctor_beside_a_running_daemon_and_worker(
    conn: asyncpg.Connection, processes: Processes
) -> None:
    await load_demo(conn)
    processes.env.update(WELL_SET)
    processes.start("daemon", "daemon")
    worker = processes.start("worker", "worker")
    # The processes beat every 0.5 s; the commands allow the default 15 s of silence, so a
    # heartbeat delayed on a busy machine does not make a process look dead.
    cli = {**processes.env, "HERALD_HEARTBEAT_INTERVAL": "5"}

    async def healthy() -> bool:
        return (await status_json(cli))[0] == 0

    await wait_until(healthy, timeout=60, interval=0.5, message="herald status to exit 0")
    done = herald(cli, "status")
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert done.stdout.startswith("Herald is healthy\n")
    lines = done.stdout.splitlines()
    assert any(line.startswith("daemon ") and " live " in line for line in lines)
    assert any(line.startswith("worker ") and " live " in line for line in lines)

    done = herald(cli, "doctor")
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("herald doctor: all ")
    assert "telnyx-key-SECRET-5521" not in done.stdout

    # The worker stops: its processes say so as they go (or fall silent), and status turns unhealthy.
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 30) is not None

    async def unhealthy() -> dict[str, Any] | None:
        code, report = await status_json(cli)
        return report if code == 1 else None

    report = await wait_until(unhealthy, timeout=45, interval=0.5, message="herald status to exit 1")
    assert (report["state"], report["failing"]) == ("unhealthy", ["workers"])
    assert report["checks"]["daemon"]["ok"] and report["checks"]["workers"]["live"] == 0
    done = herald(cli, "status")
    assert done.returncode == 1 and done.stdout.startswith("Herald is unhealthy (workers)\n")
    # Doctor is about the set-up, not the processes: still all OK.
    assert herald(cli, "doctor").returncode == 0
