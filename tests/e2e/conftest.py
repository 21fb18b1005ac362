"""Real Herald processes (daemon, Dramatiq worker) against the session's servers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.database import connection
from config.embedded_layout import EmbeddedLayout
from config.settings import Settings
from daemon.demo import load_demo
from tests.conftest import fresh_database
from tests.fakes import FakeSMTPServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Herald child processes whose output is kept for failure reports."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "daemon", *args], env=self.env, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.running[name] = process
        return process

    def output(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """The process's JSON log lines, parsed (other output is skipped)."""
        events = []
        for line in self.output(name).splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def stop_all(self, timeout: float = 20.0) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def running_herald(database_url: str, redis_url: str, log_dir: Path, **env: str) -> Iterator[Processes]:
    """A daemon and a worker on this database, with quick sweeps and ``env`` on top."""
    settings = Settings(database_url=database_url, redis_url=redis_url, embedded=False)
    processes = Processes(settings.child_env() | {
        "HERALD_SWEEP_INTERVAL": "0.5", "HERALD_LEASE": "3", "HERALD_LOG_FORMAT": "json", **env}, log_dir)
    processes.start("daemon", "daemon")
    processes.start("worker", "worker")
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
def herald_env(settings: Settings) -> dict[str, str]:
    env = settings.child_env()
    env.update({
        "HERALD_SWEEP_INTERVAL": str(settings.sweep_interval_s),
        "HERALD_LEASE": str(settings.lease_s),
        "HERALD_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval_s),
        "HERALD_LOG_FORMAT": "json",
    })
    return env


@pytest.fixture
def processes(herald_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    started = Processes(herald_env, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
def smtp() -> Iterator[FakeSMTPServer]:
    """An SMTP server that records what it got, for a module's Herald."""
    with FakeSMTPServer() as server:
        yield server


@pytest.fixture(scope="module")
async def db(template_database: str, layout: EmbeddedLayout) -> AsyncIterator[str]:
    """A database with the demo app, for a module (modules that need more define their own)."""
    async with fresh_database(layout) as url:
        async with connection(url) as conn:
            await load_demo(conn)
        yield url
