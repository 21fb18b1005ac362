"""`herald up` on the embedded default, as a user runs it: it starts its own
PostgreSQL and Redis, loads the demo, runs a completed job, stops without
leaving a process behind, and keeps its data for the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from config.embedded_layout import EmbeddedLayout
from tests.conftest import wait_until
from tests.e2e.conftest import free_port


def herald(*args: str) -> list[str]:
    return [sys.executable, "-m", "daemon", *args]


def processes_mentioning(*needles: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(needle in cmdline for needle in needles) and int(entry.name) != os.getpid():
            found.append(f"{entry.name}: {cmdline}")
    return found


class Up:
    def __init__(self, data_dir: Path, port: int, log: Path, **env: str) -> None:
        self.data_dir, self.port, self.log = data_dir, port, log
        base = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        self.env = base | {"HERALD_LOG_FORMAT": "json"} | env
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                herald("up", "--data-dir", str(data_dir), "--port", str(port)),
                env=self.env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            )

    async def ready(self) -> None:
        async def up() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            return "Herald is up" in self.log.read_text()

        await wait_until(up, timeout=60, interval=0.1, message="herald up")

    async def runs(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}/api/runs") as response:
                return (await response.json())["runs"]  # type: ignore[no-any-return]

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)


async def test_up_runs_a_completed_job_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "herald-data"
    layout = EmbeddedLayout.for_dir(data_dir)
    port = free_port()
    up = Up(data_dir, port, tmp_path / "up.log")
    try:
        await up.ready()
        assert "demo loaded" in up.log.read_text()
        psql = subprocess.run(
            herald("psql", "--data-dir", str(data_dir), "-c",
                   "UPDATE jobs SET status='completed' WHERE id=1"),
            env=up.env, capture_output=True, text=True, timeout=30,
        )
        assert psql.returncode == 0 and "UPDATE 1" in psql.stdout, psql.stderr

        async def completed_run() -> list[dict[str, Any]]:
            return [r for r in await up.runs() if r["status"] == "completed"]

        [run] = await wait_until(completed_run, timeout=30, message="the run on the dashboard")
        assert [(s["action"], s["status"]) for s in run["steps"]] == [("email", "sent"), ("sms", "sent")]
        assert run["steps"][0]["rendered"]["subject"] == "Job Completed - Replace kitchen faucet"
        assert up.interrupt() == 0
    finally:
        if up.process.poll() is None:
            up.process.kill()
    assert processes_mentioning(str(data_dir), str(layout.socket_dir)) == []
    assert "Traceback" not in up.log.read_text()

    # The data survives: the run is still there, and the demo is not loaded again.
    again = Up(data_dir, port, tmp_path / "up2.log")
    try:
        await again.ready()
        assert [r["id"] for r in await again.runs()] == [run["id"]]
        assert "demo loaded" not in again.log.read_text()
        assert again.interrupt() == 0
    finally:
        if again.process.poll() is None:
            again.process.kill()
    assert processes_mentioning(str(data_dir), str(layout.socket_dir)) == []
