"""Herald's processes under systemd's notify protocol, for real: each is started
as systemd starts a unit's main process (NOTIFY_SOCKET, WATCHDOG_USEC, and
WATCHDOG_PID naming it) with the test's socket standing in for systemd.

- the daemon says READY=1 only once its LISTEN connection is up, feeds the
  watchdog while its loops make progress and stops feeding when one is stuck;
- the worker's processes (not Dramatiq's parent) say READY=1 once they reach
  PostgreSQL and Redis, and feed the watchdog while their event loops answer;
  a worker process whose event loop is stuck stops feeding it;
- the dashboard says READY=1 once it listens and feeds the watchdog from its loop;
- each says STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from actors.middleware.lifecycle import EXIT_WATCHDOG
from config.embedded_layout import EmbeddedLayout
from daemon.embedded import redis_server_bin
from tests.conftest import REPO, wait_until
from tests.e2e.conftest import Processes, free_port
from tests.e2e.test_supervision import descendants
from tests.notify_socket import NotifySocket

WATCHDOG_S = 2.0  # systemd's WatchdogSec for these tests: WATCHDOG=1 every second
FEED_S = WATCHDOG_S / 2


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def start_as_systemd_would(processes: Processes, name: str, notify: NotifySocket, *args: str,
                           **env: str) -> subprocess.Popen[bytes]:
    """``herald ARGS`` with systemd's variables; WATCHDOG_PID is the process's own pid
    (the shell exports its pid, then becomes Herald)."""
    child_env = processes.env | notify.env | {"WATCHDOG_USEC": str(int(WATCHDOG_S * 1_000_000))} | env
    with open(processes.log_dir / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh",
             sys.executable, "-m", "daemon", *args],
            env=child_env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    processes.running[name] = process
    return process


async def arrives(notify: NotifySocket, key: str, value: str | None = None, *, since: float = 0.0,
                  count: int = 1, timeout: float = 30.0, what: str = "", matching: str = "") -> list:
    """Wait for ``count`` notifications with ``key`` (= ``value``; or containing ``matching``)."""
    async def enough() -> list | None:
        found = [n for n in notify.with_field(key, value, since=since) if matching in n.fields[key]]
        return found if len(found) >= count else None

    return await wait_until(enough, timeout=timeout, interval=0.05,
                            message=what or f"{count} x {key}={value or '*'}")


async def exits(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    async def gone() -> bool:
        return process.poll() is not None

    await wait_until(gone, timeout=timeout, interval=0.05, message="the process to exit")
    return process.returncode


async def observe(seconds: float) -> None:
    """An observation window: what must NOT arrive has this long to show up."""
    await asyncio.sleep(seconds)


# -- the daemon -----------------------------------------------------------------


class ListenerHoldingProxy:
    """A TCP proxy to the embedded PostgreSQL that holds back the daemon's LISTEN
    connection (application_name herald-listener) until :meth:`release`, and
    lets every other connection through."""

    def __init__(self, upstream: Path) -> None:
        self.upstream = upstream
        self.released = asyncio.Event()
        self.held = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ListenerHoldingProxy:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def release(self) -> None:
        self.released.set()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
            pumps = [asyncio.ensure_future(self._pump(reader, up_writer, inspect=True)),
                     asyncio.ensure_future(self._pump(up_reader, writer, inspect=False))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                up_writer.close()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, inspect: bool) -> None:
        seen = b""
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if inspect:
                    seen += data  # the start-up packet names the application
                    if b"herald-listener" in seen:
                        self.held += 1
                        await self.released.wait()
                        inspect = False
                    elif len(seen) > 4096:
                        inspect = False
                writer.write(data)
                await writer.drain()


async def test_the_daemon_is_ready_once_listening_and_feeds_the_watchdog_while_its_loops_progress(
    processes: Processes, notify: NotifySocket, layout: EmbeddedLayout, db_url: str,
) -> None:
    database = urlsplit(db_url).path.lstrip("/")
    async with ListenerHoldingProxy(layout.socket_dir / ".s.PGSQL.5432") as proxy:
        daemon = start_as_systemd_would(
            processes, "daemon", notify, "daemon",
            HERALD_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}",
            HERALD_WATCHDOG="2",  # a loop with no pass for its interval + 2 s is stuck
        )

        async def listener_held() -> bool:
            return proxy.held > 0

        # Its pool is up (the LISTEN connection is opened after it) and it is alive:
        await wait_until(listener_held, timeout=30, message="the daemon's LISTEN connection")
        first_feed = await arrives(notify, "WATCHDOG", "1", what="a WATCHDOG=1 while not yet listening")
        assert {n.pid for n in first_feed} == {daemon.pid}  # its own pid: WATCHDOG_PID's
        await arrives(notify, "WATCHDOG", "1", since=first_feed[0].at, what="a second WATCHDOG=1")
        assert notify.with_field("READY") == [], "READY=1 before the LISTEN connection was up"

        released_at = time.monotonic()
        proxy.release()
        [ready] = await arrives(notify, "READY", "1", what="READY=1 once listening")
        assert ready.at > released_at and ready.pid == daemon.pid
        assert ready.fields["STATUS"] == "running"
        await arrives(notify, "WATCHDOG", "1", since=ready.at, count=3, what="WATCHDOG=1 while running")

        # Wedge one loop: the heartbeat's write waits on a lock for as long as the test holds it.
        async with contextlib.AsyncExitStack() as stack:
            conn = await asyncpg.connect(db_url)
            stack.push_async_callback(conn.close)
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("LOCK TABLE herald.heartbeats IN SHARE MODE")  # blocks writers only
            [stuck] = await arrives(notify, "STATUS", since=ready.at, timeout=20, matching="stuck: heartbeat",
                                    what="STATUS naming the stuck heartbeat loop")
            assert stuck.fields["STATUS"].startswith("stuck: heartbeat (no pass for")
            await observe(2 * FEED_S)
            assert notify.with_field("WATCHDOG", since=stuck.at) == [], "fed the watchdog while stuck"
            assert daemon.poll() is None  # alive: it is systemd's watchdog that would restart it
            await transaction.rollback()
            unstuck_at = time.monotonic()

        [running] = await arrives(notify, "STATUS", "running", since=unstuck_at, what="STATUS=running again")
        await arrives(notify, "WATCHDOG", "1", since=running.at, what="WATCHDOG=1 once unstuck")

        daemon.send_signal(signal.SIGTERM)
        await arrives(notify, "STOPPING", "1", what="STOPPING=1 on SIGTERM")
        assert await exits(daemon) == 0


# -- the worker -----------------------------------------------------------------


@pytest.fixture
def redis_socket() -> Iterator[Path]:
    """Where the test's own redis-server will listen (a short path, for the socket)."""
    directory = Path(tempfile.mkdtemp(prefix="herald-sd-"))
    yield directory / "redis.sock"
    for leftover in directory.iterdir():
        leftover.unlink()
    directory.rmdir()


async def test_the_worker_processes_are_ready_once_connected_and_each_feeds_the_watchdog(
    processes: Processes, notify: NotifySocket, redis_socket: Path,
) -> None:
    # Redis is not there yet: the worker starts, but is not ready.
    worker = start_as_systemd_would(processes, "worker", notify, "worker",
                                    HERALD_REDIS_URL=f"unix://{redis_socket}", HERALD_WORKER_PROCESSES="2")

    async def two_feeders() -> set[int] | None:
        pids = {n.pid for n in notify.with_field("WATCHDOG", "1") if n.pid is not None}
        return pids if len(pids) >= 2 else None

    feeders = await wait_until(two_feeders, timeout=60, interval=0.05, message="two worker processes feeding")
    assert worker.pid not in feeders  # Dramatiq's parent handed the watchdog to its worker processes
    assert feeders <= descendants(worker.pid)
    await arrives(notify, "STATUS", matching="waiting for Redis", what="a status saying it waits for Redis")
    assert notify.with_field("READY") == [], "READY=1 without Redis"

    server = subprocess.Popen(
        [str(redis_server_bin()), "--port", "0", "--unixsocket", str(redis_socket), "--save", "",
         "--appendonly", "no", "--dir", str(redis_socket.parent)],
        stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        started_at = time.monotonic()
        ready = await arrives(notify, "READY", "1", what="READY=1 once Redis is up")
        assert ready[0].at > started_at and ready[0].pid in feeders
        assert ready[0].fields["STATUS"] == f"worker process {ready[0].pid} running"
        # Both go on feeding it.
        for pid in feeders:
            async def fed_by(pid: int = pid) -> bool:
                return len([n for n in notify.with_field("WATCHDOG", since=ready[0].at) if n.pid == pid]) >= 2

            await wait_until(fed_by, timeout=15, interval=0.05, message=f"worker process {pid} feeding")

        worker.send_signal(signal.SIGTERM)
        stopping = await arrives(notify, "STOPPING", "1", count=2, what="STOPPING=1 from each worker process")
        assert {n.pid for n in stopping} == feeders
        assert await exits(worker) == 0
    finally:
        server.kill()
        server.wait()


def test_a_worker_process_whose_event_loop_is_stuck_stops_feeding_the_watchdog(
    tmp_path: Path, notify: NotifySocket,
) -> None:
    """The lifecycle watchdog's loop check is what feeds systemd: block the actors'
    event loop and the feeding stops, until the process exits for a restart."""
    script = """
import logging, sys, time, types
from dramatiq.asyncio import EventLoopThread, set_event_loop_thread
from actors.middleware.lifecycle import WorkerLifecycle
from actors.middleware.systemd import SystemdNotify
from config.logging import configure_logging
from config.settings import current

configure_logging(current(), process="worker")
loop_thread = EventLoopThread(logging.getLogger("test"))
loop_thread.start(timeout=5)
set_event_loop_thread(loop_thread)
lifecycle, notify = WorkerLifecycle(watchdog_s=3.0), SystemdNotify()
broker = types.SimpleNamespace(middleware=[lifecycle, notify])  # no heartbeat, no Redis to wait for
for middleware in broker.middleware:
    middleware.after_process_boot(broker)
for middleware in broker.middleware:
    middleware.after_worker_boot(broker, None)
sys.stdin.readline()
loop_thread.loop.call_soon_threadsafe(time.sleep, 60)  # an async actor that blocks the loop
time.sleep(60)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {"HERALD_DATA_DIR": str(tmp_path), "HERALD_LOG_FORMAT": "json", "WATCHDOG_USEC": "1000000",
            **notify.env}
    log = tmp_path / "worker.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdin=subprocess.PIPE,
                                   stdout=output, stderr=output)
    try:
        asyncio.run(arrives(notify, "READY", "1", timeout=30))
        asyncio.run(arrives(notify, "WATCHDOG", "1", count=3, timeout=30))
        assert process.stdin is not None
        process.stdin.write(b"wedge\n")
        process.stdin.flush()
        wedged_at = time.monotonic()
        # It exits by itself (the lifecycle watchdog) 3 s after its loop stopped answering.
        assert process.wait(timeout=30) == EXIT_WATCHDOG
        exited_at = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdin is not None
        process.stdin.close()
    assert "the event loop has not answered" in log.read_text()
    assert exited_at - wedged_at > 2.5
    # At most one feed was already on its way as the loop blocked; none after that.
    late = [n for n in notify.with_field("WATCHDOG") if n.at > wedged_at + 0.6]
    assert late == [], f"fed the watchdog {len(late)} times with a stuck event loop"


# -- the dashboard --------------------------------------------------------------


async def test_the_dashboard_is_ready_once_listening_and_feeds_the_watchdog_from_its_loop(
    processes: Processes, notify: NotifySocket,
) -> None:
    port = free_port()
    dashboard = start_as_systemd_would(processes, "dashboard", notify, "dashboard",
                                       HERALD_DASHBOARD_PORT=str(port))
    [ready] = await arrives(notify, "READY", "1", timeout=60, what="the dashboard's READY=1")
    assert ready.pid == dashboard.pid
    assert ready.fields["STATUS"] == f"listening on 127.0.0.1:{port}"
    # Ready means listening, with its database pool up: /health answers at once.
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/health") as response:
        checks = await response.json()
    assert checks["checks"]["database"]["ok"], checks

    await arrives(notify, "WATCHDOG", "1", since=ready.at, count=2, what="WATCHDOG=1 while running")

    dashboard.send_signal(signal.SIGSTOP)  # a process that does not run feeds nothing
    stopped_at = time.monotonic()
    try:
        await observe(2 * FEED_S)
        assert notify.with_field("WATCHDOG", since=stopped_at + 0.1) == []
    finally:
        dashboard.send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    await arrives(notify, "WATCHDOG", "1", since=resumed_at, what="WATCHDOG=1 once it runs again")

    dashboard.send_signal(signal.SIGTERM)
    await arrives(notify, "STOPPING", "1", what="the dashboard's STOPPING=1")
    assert await exits(dashboard) == 0
