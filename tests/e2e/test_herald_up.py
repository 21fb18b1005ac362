"""`herald up` on the embedded default, as a user runs it: it starts its own
PostgreSQL and Redis, loads the demo, runs a completed job, stops without
leaving a process behind, and keeps its data for the next start."""

from __future__ import annotations

import os
import re
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


ADMIN = "you@example.com"
PASSWORD = "a password for the first admin"


class Up:
    def __init__(self, data_dir: Path, port: int, log: Path, **env: str) -> None:
        self.data_dir, self.port, self.log = data_dir, port, log
        self.has_admin = False
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

    def add_admin(self) -> None:
        """What the README says to do first: `herald users add ... --role admin`
        (once per data directory: the user stays for the next `herald up`)."""
        added = subprocess.run(
            herald("users", "add", ADMIN, "--role", "admin", "--password-stdin", "--data-dir", str(self.data_dir)),
            env=self.env, input=PASSWORD + "\n", capture_output=True, text=True, timeout=30)
        assert (added.returncode == 0 and f"added {ADMIN}" in added.stdout
                or f"already a user {ADMIN}" in added.stderr), added.stderr
        self.has_admin = True

    async def runs(self, timeout: float | None = None) -> list[dict[str, Any]] | None:
        """The runs as /api/runs lists them to the admin, signed in through the login
        form; None when the dashboard does not answer (it may be restarting)."""
        if not self.has_admin:
            self.add_admin()
        base = f"http://127.0.0.1:{self.port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(f"{base}/login") as page:
                found = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
            if page.status != 200 or found is None:
                return None
            async with session.post(f"{base}/login", data={"email": ADMIN, "password": PASSWORD,
                                                           "csrf_token": found.group(1)}) as signed_in:
                assert signed_in.url.path == "/", (signed_in.status, await signed_in.text())
            async with session.get(f"{base}/api/runs") as response:
                if response.status != 200:
                    return None
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
        assert "No dashboard users yet" in up.log.read_text()
        up.add_admin()
        psql = subprocess.run(
            herald("psql", "--data-dir", str(data_dir), "-c",
                   "UPDATE jobs SET status='completed' WHERE id=1"),
            env=up.env, capture_output=True, text=True, timeout=30,
        )
        assert psql.returncode == 0 and "UPDATE 1" in psql.stdout, psql.stderr

        async def completed_run() -> list[dict[str, Any]]:
            return [r for r in await up.runs() or [] if r["status"] == "completed"]

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
        assert [r["id"] for r in await again.runs() or []] == [run["id"]]
        assert "demo loaded" not in again.log.read_text()
        assert "No dashboard users yet" not in again.log.read_text()
        assert again.interrupt() == 0
    finally:
        if again.process.poll() is None:
            again.process.kill()
    assert processes_mentioning(str(data_dir), str(layout.socket_dir)) == []
