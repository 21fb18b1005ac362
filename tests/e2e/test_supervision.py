"""Supervision, with real processes: `herald up` restarts a child or an
embedded server that dies, gives up only on repeated failures, leaves nothing
behind when it is killed, and never fights another command over its servers;
a Dramatiq worker process never outlives its parent nor hangs while stopping."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from actors.middleware.lifecycle import EXIT_SHUTDOWN_TIMEOUT, EXIT_WATCHDOG
from config.embedded_layout import EmbeddedLayout
from daemon.embedded import redis_server_bin
from daemon.supervisor import Backoff, RestartPolicy, alive
from tests.conftest import REPO, wait_until
from tests.e2e.conftest import Processes, free_port
from tests.e2e.test_herald_up import Up, herald, processes_mentioning

# -- /proc --------------------------------------------------------------------


def parents() -> dict[int, int]:
    """pid -> parent pid, for every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return found


def descendants(pid: int) -> set[int]:
    tree = parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in tree.items() if parent in frontier} - found
        found |= frontier
    return found


def herald_children(up_pid: int) -> dict[str, int]:
    """`herald up`'s live children by name (daemon, worker, dashboard)."""
    found = {}
    for pid, parent in parents().items():
        if parent != up_pid or not alive(pid):
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "daemon" in args and args.index("daemon") + 1 < len(args):
            found[args[args.index("daemon") + 1]] = pid
    return found


def log_events_all(log: Path) -> list[dict[str, Any]]:
    """Every JSON record of a process's log."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def log_events(log: Path, event: str) -> list[dict[str, Any]]:
    return [record for record in log_events_all(log) if record.get("event") == event]


def postmaster_pid(layout: EmbeddedLayout) -> int | None:
    try:
        pid = int((layout.pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return None
    return pid if alive(pid) else None


def redis_pid(layout: EmbeddedLayout) -> int | None:
    try:
        pid = int(layout.redis_pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def psql(data_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    return subprocess.run(herald("psql", "--data-dir", str(data_dir), *args), env=env,
                          capture_output=True, text=True, timeout=timeout)


# -- herald up -----------------------------------------------------------------


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    """`herald up`s a test started; any still running at the end is killed, with its children."""
    started: list[Up] = []
    yield started
    for up in started:
        if up.process.poll() is None:
            for pid in descendants(up.process.pid):
                os.kill(pid, signal.SIGKILL)
            up.process.kill()
            up.process.wait()
        stop_postgres_left_in(up.data_dir)


def stop_postgres_left_in(data_dir: Path) -> None:
    """A test that failed half-way may leave its PostgreSQL running: stop it."""
    pid = postmaster_pid(EmbeddedLayout.for_dir(data_dir))
    if pid is not None:
        os.kill(pid, signal.SIGQUIT)


def start_up(ups: list[Up], tmp_path: Path, name: str, data_dir: Path, port: int | None = None,
             **env: str) -> Up:
    up = Up(data_dir, port or free_port(), tmp_path / f"{name}.log", **env)
    ups.append(up)
    return up


async def runs(up: Up) -> list[dict[str, Any]] | None:
    """The dashboard's runs, or None while it does not answer (it may be restarting)."""
    try:
        return await up.runs(timeout=5)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def complete_job(up: Up, job_id: int, timeout: float = 45) -> None:
    """Complete a demo job and wait for its run to be completed, as seen on the dashboard."""
    result = psql(up.data_dir, "-c", f"UPDATE jobs SET status='completed' WHERE id={job_id}")
    assert result.returncode == 0 and "UPDATE 1" in result.stdout, result.stderr

    async def completed() -> bool:
        assert up.process.poll() is None, up.log.read_text()
        return any(r["status"] == "completed" and str(r["event"]["row_id"]) == str(job_id)
                   for r in await runs(up) or [])

    await wait_until(completed, timeout=timeout, interval=0.2, message=f"job {job_id}'s completed run")


def assert_stops_cleanly(up: Up) -> None:
    assert up.interrupt() == 0, up.log.read_text()[-3000:]
    layout = EmbeddedLayout.for_dir(up.data_dir)
    assert processes_mentioning(str(up.data_dir), str(layout.socket_dir)) == []


def restarts(up: Up, process: str) -> list[dict[str, Any]]:
    return [e for e in log_events(up.log, "process exited; restarting it") if e["process"] == process]


async def test_a_crashed_child_comes_back_and_herald_keeps_working(
    ups: list[Up], tmp_path: Path
) -> None:
    up = start_up(ups, tmp_path, "up", tmp_path / "data")
    await up.ready()
    for name in ("dashboard", "daemon", "worker"):
        old = herald_children(up.process.pid)[name]
        os.kill(old, signal.SIGKILL)

        async def replaced(name: str = name, old: int = old) -> bool:
            assert up.process.poll() is None, up.log.read_text()
            pid = herald_children(up.process.pid).get(name)
            return pid is not None and pid != old

        await wait_until(replaced, timeout=20, interval=0.05, message=f"a new {name}")
        [restart] = restarts(up, name)
        assert restart["returncode"] == -signal.SIGKILL and restart["restart_in_s"] == 0.5
    # The killed worker's own worker processes went with it.
    await complete_job(up, 1)
    assert_stops_cleanly(up)


async def test_dead_embedded_servers_are_restarted(ups: list[Up], tmp_path: Path) -> None:
    up = start_up(ups, tmp_path, "up", tmp_path / "data")
    layout = EmbeddedLayout.for_dir(up.data_dir)
    await up.ready()

    old_redis = redis_pid(layout)
    assert old_redis is not None
    os.kill(old_redis, signal.SIGKILL)

    async def new_redis() -> bool:
        pid = redis_pid(layout)
        return pid is not None and pid != old_redis and layout.redis_socket.exists()

    await wait_until(new_redis, timeout=20, interval=0.05, message="a new redis-server")
    [restart] = restarts(up, "redis")
    assert restart["returncode"] == -signal.SIGKILL
    await complete_job(up, 1)

    old_postgres = postmaster_pid(layout)
    assert old_postgres is not None
    os.kill(old_postgres, signal.SIGKILL)

    async def new_postgres() -> bool:
        pid = postmaster_pid(layout)
        return pid is not None and pid != old_postgres

    await wait_until(new_postgres, timeout=30, interval=0.1, message="a new postmaster")
    assert restarts(up, "postgres")
    await complete_job(up, 2, timeout=60)
    assert_stops_cleanly(up)


@pytest.mark.parametrize("restart", ["after its processes exited", "at once"])
async def test_kill_9_of_up_leaves_nothing_running_and_the_next_up_starts(
    ups: list[Up], tmp_path: Path, restart: str
) -> None:
    data_dir = tmp_path / "data"
    layout = EmbeddedLayout.for_dir(data_dir)
    first = start_up(ups, tmp_path, "up1", data_dir)
    await first.ready()
    doomed = descendants(first.process.pid)  # children, Dramatiq's worker processes, redis-server
    postgres = postmaster_pid(layout)
    assert redis_pid(layout) in doomed and postgres is not None and postgres not in doomed

    first.process.kill()
    first.process.wait()

    async def all_gone() -> bool:
        return not any(alive(pid) for pid in doomed)

    if restart == "after its processes exited":
        # They die with it: children and Redis by the signal the kernel sends them.
        await wait_until(all_gone, timeout=30, interval=0.1, message="the killed herald up's processes to exit")
    # PostgreSQL, which pg_ctl daemonises, is still there: the next herald up takes it over.
    assert alive(postgres)

    second = start_up(ups, tmp_path, "up2", data_dir)
    await second.ready()
    assert await all_gone()
    assert [e["pid"] for e in log_events(second.log, "embedded postgresql already running; taking it over")] == [
        postgres]
    await complete_job(second, 1)
    assert_stops_cleanly(second)
    assert not alive(postgres)


async def test_psql_during_the_start_of_up_on_a_fresh_directory(ups: list[Up], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    up = start_up(ups, tmp_path, "up", data_dir)

    async def made() -> bool:  # before, psql refuses: no Herald lives there (yet)
        return data_dir.exists()

    await wait_until(made, timeout=30, interval=0.01, message="herald up to make its data directory")
    # One psql after the other for as long as herald up is starting: each either
    # waits for the servers herald up is starting, or finds them running.
    results = []
    while "Herald is up" not in up.log.read_text():
        assert up.process.poll() is None, up.log.read_text()
        assert len(results) < 100
        results.append(psql(data_dir, "-tA", "-c", "SELECT 1"))
    assert results and all(r.returncode == 0 and r.stdout.strip() == "1" for r in results), results
    await up.ready()
    await complete_job(up, 1)
    assert "shutting down" not in up.log.read_text()
    assert_stops_cleanly(up)


async def test_up_takes_over_the_servers_a_psql_started(ups: list[Up], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()  # named by the user: psql starts Herald's servers there
    layout = EmbeddedLayout.for_dir(data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    # This psql starts PostgreSQL itself, and ends only once herald up is using it.
    waiting = subprocess.Popen(
        herald("psql", "--data-dir", str(data_dir), "-c",
               "DO $$ BEGIN FOR i IN 1..600 LOOP"
               " EXIT WHEN EXISTS (SELECT FROM pg_tables WHERE tablename = 'jobs');"
               " PERFORM pg_sleep(0.1); END LOOP; END $$"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        async def postgres_started() -> bool:
            assert waiting.poll() is None, waiting.communicate()
            return postmaster_pid(layout) is not None and (layout.socket_dir / ".s.PGSQL.5432").exists()

        await wait_until(postgres_started, timeout=60, interval=0.05, message="psql's PostgreSQL")
        postgres = postmaster_pid(layout)
        up = start_up(ups, tmp_path, "up", data_dir)
        output, _ = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, output
        assert "leaving the embedded servers running: herald up uses them" in output
    finally:
        if waiting.poll() is None:
            waiting.kill()
    await up.ready()
    assert [e["pid"] for e in log_events(up.log, "embedded postgresql already running; taking it over")] == [
        postgres]
    await complete_job(up, 1)
    assert postmaster_pid(layout) == postgres
    assert_stops_cleanly(up)


async def test_up_refuses_a_dashboard_port_in_use_before_starting_anything(ups: list[Up], tmp_path: Path) -> None:
    with socket.socket() as taken:  # another program holds the dashboard's port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        up = start_up(ups, tmp_path, "up", tmp_path / "data", port=taken.getsockname()[1])

        async def exited() -> bool:
            return up.process.poll() is not None

        await wait_until(exited, timeout=30, interval=0.1, message="herald up to refuse the port")
        port = taken.getsockname()[1]
    assert up.process.returncode == 1
    assert f"herald: port {port} on 127.0.0.1 is in use" in up.log.read_text()
    assert "embedded postgresql started" not in up.log.read_text()
    assert not (tmp_path / "data" / "postgres").exists()


async def test_up_gives_up_on_a_process_that_keeps_failing(ups: list[Up], tmp_path: Path) -> None:
    up = start_up(ups, tmp_path, "up", tmp_path / "data")

    async def servers_started() -> bool:
        return "embedded postgresql started" in up.log.read_text()

    # Past its port check, another program takes the dashboard's port.
    await wait_until(servers_started, timeout=60, interval=0.05, message="herald up to start its servers")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", up.port))
        taken.listen()

        async def exited() -> bool:
            return up.process.poll() is not None

        await wait_until(exited, timeout=90, interval=0.2, message="herald up to give up")
    assert up.process.returncode == 1
    assert [e["restart_in_s"] for e in restarts(up, "dashboard")] == [0.5, 1.0, 2.0, 4.0]
    [gave_up] = log_events(up.log, "process keeps failing; stopping Herald")
    assert gave_up["process"] == "dashboard" and gave_up["failures"] == 5
    layout = EmbeddedLayout.for_dir(up.data_dir)
    assert processes_mentioning(str(up.data_dir), str(layout.socket_dir)) == []


def test_backoff_doubles_to_a_cap_resets_when_stable_and_gives_up() -> None:
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=3.0, stable_after_s=60, max_crashes=5,
                           crash_window_s=300)
    backoff = Backoff(policy)
    assert [backoff.crashed(now, uptime_s=1) for now in (0, 10, 20, 30)] == [0.5, 1.0, 2.0, 3.0]
    assert backoff.crashed(40, uptime_s=1) is None  # the fifth failure within five minutes

    backoff = Backoff(policy)
    assert [backoff.crashed(now, uptime_s=1) for now in (0, 10, 20)] == [0.5, 1.0, 2.0]
    assert backoff.crashed(100, uptime_s=70) == 0.5  # it had stayed up: start over
    # Failures older than the window no longer count.
    assert [backoff.crashed(now, uptime_s=1) for now in (400, 410, 420, 430)] == [1.0, 2.0, 3.0, 3.0]
    assert backoff.crashed(440, uptime_s=1) is None


# -- herald worker -----------------------------------------------------------


def worker_pids(log: Path) -> list[int]:
    return [e["pid"] for e in log_events(log, "worker process running")]


def dramatiq_booted(log: Path) -> bool:
    """Whether Dramatiq's parent process has seen its worker processes start and watches them."""
    return any(str(e.get("event", "")).startswith("Dramatiq ") and str(e["event"]).endswith(" is booting up.")
               for e in log_events_all(log))


async def wait_for_workers(processes: Processes, count: int) -> list[int]:
    """The pids of the worker processes, once all ``count`` run and their parent watches them."""
    async def running() -> list[int]:
        assert processes.running["worker"].poll() is None, processes.output("worker")
        log = processes.log_dir / "worker.log"
        pids = worker_pids(log)
        # Before that line, the parent would not notice a worker process's death for 30 s.
        return pids if len(pids) >= count and dramatiq_booted(log) else []

    return await wait_until(running, timeout=30, interval=0.05, message="the worker processes")


async def wait_for_exit(process: subprocess.Popen[bytes], timeout: float) -> int:
    async def exited() -> bool:
        return process.poll() is not None

    await wait_until(exited, timeout=timeout, interval=0.05, message="the worker to exit")
    return process.returncode


async def test_worker_processes_die_with_their_parent(processes: Processes) -> None:
    # HERALD_WATCHDOG bounds how long a worker process takes to stop (here 5 s).
    processes.env.update({"HERALD_WORKER_PROCESSES": "2", "HERALD_WATCHDOG": "5"})
    worker = processes.start("worker", "worker")
    pids = await wait_for_workers(processes, 2)
    assert set(pids) <= descendants(worker.pid)

    async def whole_family() -> set[int]:  # the two worker processes and the metrics listener
        family = descendants(worker.pid)
        return family if len(family) >= 3 else set()

    family = await wait_until(whole_family, timeout=15, interval=0.05, message="the metrics listener's process")
    worker.kill()  # kill -9 of Dramatiq's parent process
    worker.wait()

    async def gone() -> bool:
        return not any(alive(pid) for pid in family)

    await wait_until(gone, timeout=15, interval=0.05, message="the orphaned worker processes to exit")


async def test_herald_worker_exits_non_zero_when_a_worker_process_dies(processes: Processes) -> None:
    worker = processes.start("worker", "worker")
    [pid] = await wait_for_workers(processes, 1)
    os.kill(pid, signal.SIGKILL)
    assert await wait_for_exit(worker, timeout=30) == 1  # Dramatiq's "killed"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, which it may kill."""
    sock = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [str(redis_server_bin()), "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        yield f"unix://{sock}", server
    finally:
        server.kill()
        server.wait()


async def test_worker_exits_when_redis_is_gone_while_it_stops(
    processes: Processes, conn: asyncpg.Connection, own_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = own_redis
    client = redis.Redis.from_url(url)

    async def redis_up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    await wait_until(redis_up, message="the test's redis-server")
    # The match actor will wait on this lock: one message in progress, one prefetched.
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("LOCK TABLE herald.events IN ACCESS EXCLUSIVE MODE")
    processes.env.update({"HERALD_REDIS_URL": url, "HERALD_WORKER_THREADS": "1", "HERALD_WATCHDOG": "4"})
    worker = processes.start("worker", "worker")
    await wait_for_workers(processes, 1)
    broker = RedisBroker(client=client)
    for event_id in (1, 2):
        broker.enqueue(Message(queue_name="match", actor_name="match", args=([event_id],), kwargs={},
                               options={}))

    async def both_taken() -> bool:
        # The activity view is a snapshot taken once per transaction: take a new one.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'")
        return waiting == 1 and client.llen("dramatiq:match") == 0

    await wait_until(both_taken, message="the worker to take both messages")

    server.kill()  # Redis goes away...
    server.wait()
    worker.send_signal(signal.SIGTERM)  # ...as the worker is told to stop
    await transaction.rollback()  # the message in progress ends; its ack cannot reach Redis
    # Without a bound it would wait for Redis forever; with it, it exits, non-zero, after 4 s.
    assert await wait_for_exit(worker, timeout=30) == EXIT_SHUTDOWN_TIMEOUT
    assert log_events(processes.log_dir / "worker.log", "the worker process did not stop in time; exiting")
    client.close()


def test_watchdog_exits_when_the_event_loop_is_stuck(tmp_path: Path) -> None:
    script = """
import logging, time
from dramatiq.asyncio import EventLoopThread, set_event_loop_thread
from actors.middleware.lifecycle import WorkerLifecycle
from config.logging import configure_logging
from config.settings import current

configure_logging(current(), process="worker")  # as actors.worker does

loop_thread = EventLoopThread(logging.getLogger("test"))
loop_thread.start(timeout=5)
set_event_loop_thread(loop_thread)
lifecycle = WorkerLifecycle(watchdog_s=1.0)
lifecycle.after_process_boot(None)
lifecycle.after_worker_boot(None, None)
loop_thread.loop.call_soon_threadsafe(time.sleep, 60)  # an async actor that blocks the loop
time.sleep(60)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {"HERALD_DATA_DIR": str(tmp_path), "HERALD_LOG_FORMAT": "json"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == EXIT_WATCHDOG, result.stderr
    assert "the event loop has not answered" in result.stderr
