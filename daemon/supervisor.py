"""`herald up`: run the Procfile's processes and the embedded servers, restart
whatever fails, stop them all together.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only
Herald, which then stops the children in order (and the embedded servers
after them). Children, and the redis-server Herald starts, get SIGTERM if
Herald itself dies, so none is left behind; the PostgreSQL server, which
pg_ctl daemonises, is taken over by the next ``herald up`` (see
:mod:`daemon.embedded`), and so are children a killed one left, which are
stopped before new ones start.

A child or server that exits is restarted after a delay that doubles with
each failure (:class:`RestartPolicy`: 0.5 s up to 30 s, back to 0.5 s once it
has stayed up a minute). Five failures of the same one within five minutes
mean something is wrong that a restart will not fix: Herald then stops
everything and exits non-zero, for its own supervisor (or the person who ran
it) to look at.
"""

from __future__ import annotations

import collections
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog

from config.settings import Settings
from daemon.embedded import EmbeddedServers, die_with_this_process

log = structlog.get_logger(__name__)

# The Procfile, as `herald up` runs it (tests check the two agree).
PROCESSES: dict[str, list[str]] = {
    "daemon": ["daemon"],
    "worker": ["worker"],
    "dashboard": ["dashboard"],
}
# Longer than a worker process gives itself to stop (actors.middleware.lifecycle),
# so a stopping worker exits by itself before it is killed.
STOP_TIMEOUT_S = 20.0
# Only PostgreSQL (not Herald's child) is watched by polling; the others wake Herald by SIGCHLD.
POLL_INTERVAL_S = 0.5
READY_WARNING_S = 60.0
# Pids of the current children, for the next `herald up` if this one is killed.
STATE_FILE = "up.pids"


@dataclass(frozen=True)
class RestartPolicy:
    """When a failed process is restarted, and when Herald gives up on it."""

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    # A process that stayed up this long before failing starts over from first_delay_s.
    stable_after_s: float = 60.0
    # This many failures of one process within crash_window_s: stop Herald.
    max_crashes: int = 5
    crash_window_s: float = 300.0


class Backoff:
    """One supervised process's failures: how long to wait before its restart."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.crashes: collections.deque[float] = collections.deque()
        self.next_delay_s = policy.first_delay_s

    def crashed(self, now: float, uptime_s: float) -> float | None:
        """Record a failure; return the delay before the restart, or None to give up."""
        policy = self.policy
        if uptime_s >= policy.stable_after_s:
            self.next_delay_s = policy.first_delay_s
        self.crashes.append(now)
        while now - self.crashes[0] > policy.crash_window_s:
            self.crashes.popleft()
        if len(self.crashes) >= policy.max_crashes:
            return None
        delay = self.next_delay_s
        self.next_delay_s = min(delay * 2, policy.max_delay_s)
        return delay


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``herald ARGS`` as a child in its own session that dies with this process."""
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_this_process(signal.SIGTERM),
    )


class _Unit:
    """Something supervised: a child process or an embedded server."""

    def __init__(self, name: str, policy: RestartPolicy) -> None:
        self.name = name
        self.backoff = Backoff(policy)
        self.started_at = time.monotonic()
        self.restart_at: float | None = None

    def start(self) -> None:
        raise NotImplementedError

    def exited(self) -> tuple[bool, int | None]:
        """(whether it is gone, its exit status if known)."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        raise NotImplementedError


class _Child(_Unit):
    def __init__(self, name: str, args: list[str], env: dict[str, str], policy: RestartPolicy,
                 on_spawn: Callable[[int], None]) -> None:
        super().__init__(name, policy)
        self.args, self.env, self.on_spawn = args, env, on_spawn
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.process = spawn(self.args, self.env)
        self.on_spawn(self.process.pid)

    def exited(self) -> tuple[bool, int | None]:
        if self.process is None:
            return True, None
        code = self.process.poll()
        return code is not None, code

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


class _Server(_Unit):
    def __init__(self, name: str, servers: EmbeddedServers, policy: RestartPolicy) -> None:
        super().__init__(name, policy)
        self.servers = servers

    def start(self) -> None:
        self.started_at = time.monotonic()
        if self.name == "postgres":
            self.servers.ensure_postgres()
        else:
            self.servers.ensure_redis()

    def exited(self) -> tuple[bool, int | None]:
        if self.pid is not None:
            return False, None
        # PostgreSQL is not Herald's child: its exit status is unknown.
        return True, self.servers.redis_returncode if self.name == "redis" else None

    @property
    def pid(self) -> int | None:
        return self.servers.postgres_pid() if self.name == "postgres" else self.servers.redis_pid()


class Supervisor:
    """Runs and watches `herald up`'s children and embedded servers.

    Use: :meth:`install_signal_handlers`, :meth:`stop_leftovers`, start the
    servers, :meth:`start`, :meth:`run` until it returns, and always
    :meth:`stop`. A first SIGINT/SIGTERM stops Herald in order (during the
    start-up it raises KeyboardInterrupt); a second one kills everything at once.
    """

    def __init__(self, settings: Settings, servers: EmbeddedServers | None = None,
                 policy: RestartPolicy | None = None) -> None:
        self.settings = settings
        self.servers = servers
        self.policy = policy or RestartPolicy()
        self.children: list[_Child] = []
        self.units: list[_Unit] = []
        if servers is not None:
            # Servers first: a dead server is restarted before the children that need it.
            self.units += [_Server("postgres", servers, self.policy), _Server("redis", servers, self.policy)]
        self._groups: set[int] = set()  # process groups of every child ever started
        self._phase = "starting"
        self._stop_signal: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._state_file = settings.data_dir / STATE_FILE

    # -- signals ------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Any signal with a Python handler (SIGCHLD included) wakes the loop at once.
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop_signal is not None or self._phase == "stopping":
            log.warning("second signal: killing processes now")
            self._kill_groups()
            os._exit(1)
        self._stop_signal = signum
        if self._phase == "starting":
            raise KeyboardInterrupt

    # -- start / run / stop --------------------------------------------------

    def stop_leftovers(self) -> None:
        """Stop the children of a `herald up` on this data directory that was killed."""
        try:
            state = json.loads(self._state_file.read_text())
            pids = [int(pid) for pid in state.get("children", [])]
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            return
        leftovers = [pid for pid in pids if _is_herald_child(pid, self.settings.data_dir)]
        if leftovers:
            # They got SIGTERM when their parent died, and are stopping: a
            # second one would make Dramatiq's workers exit hard. Wait for them.
            log.warning("waiting for processes left by an earlier herald up to stop", pids=leftovers)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while any(alive(pid) for pid in leftovers) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in leftovers:  # and whatever they left in their process groups
                _signal(pid, signal.SIGKILL, group=True)
        self._state_file.unlink(missing_ok=True)

    def start(self) -> None:
        env = self.settings.child_env()
        for name, args in PROCESSES.items():
            child = _Child(name, args, env, self.policy, self._spawned)
            child.start()
            self.children.append(child)
            self.units.append(child)
            log.info("process started", process=name, pid=child.pid)

    def _spawned(self, pid: int) -> None:
        self._groups.add(pid)
        pids = sorted({c.pid for c in self.children if c.pid is not None} | {pid})
        state = {"pid": os.getpid(), "children": pids}
        partial = self._state_file.with_suffix(".tmp")
        partial.write_text(json.dumps(state))
        partial.replace(self._state_file)

    def run(self, on_ready: Callable[[], None]) -> int:
        """Watch and restart until a signal (0) or a process keeps failing (1)."""
        self._phase = "running"
        began, ready, warned = time.monotonic(), False, False
        try:
            while self._stop_signal is None:
                now = time.monotonic()
                for unit in self.units:
                    if not self._tend(unit, now):
                        return 1
                if not ready and self._dashboard_answers():
                    ready = True
                    on_ready()
                elif not ready and not warned and now - began > READY_WARNING_S:
                    log.warning("the dashboard is not answering yet", port=self.settings.dashboard_port)
                    warned = True
                self._sleep(now)
            log.info("stopping Herald", signal=signal.Signals(self._stop_signal).name)
            return 0
        finally:
            self._phase = "stopping"

    def _tend(self, unit: _Unit, now: float) -> bool:
        """Notice a failure, or restart when its delay is over; False to give up."""
        if unit.restart_at is None:
            gone, code = unit.exited()
            if not gone:
                return True
            uptime = now - unit.started_at
            delay = unit.backoff.crashed(now, uptime)
            if delay is None:
                log.error("process keeps failing; stopping Herald", process=unit.name, returncode=code,
                          failures=len(unit.backoff.crashes), within_s=self.policy.crash_window_s)
                return False
            log.warning("process exited; restarting it", process=unit.name, returncode=code,
                        uptime_s=round(uptime, 1), restart_in_s=delay,
                        failures=len(unit.backoff.crashes))
            unit.restart_at = now + delay
            return True
        if now < unit.restart_at:
            return True
        unit.restart_at = None
        try:
            unit.start()
        except Exception:  # a failed start counts as a failure; never stops the supervisor
            log.error("restart failed", process=unit.name, exc_info=True)
            return True
        log.info("process restarted", process=unit.name, pid=unit.pid)
        return True

    def _sleep(self, now: float) -> None:
        timeout = POLL_INTERVAL_S
        for unit in self.units:
            if unit.restart_at is not None:
                timeout = min(timeout, max(0.0, unit.restart_at - now))
        select.select([self._wake_r], [], [], timeout)
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def _dashboard_answers(self) -> bool:
        dashboard = next((c for c in self.children if c.name == "dashboard"), None)
        if dashboard is None or dashboard.exited()[0]:
            return False
        try:
            with socket.create_connection((self.settings.dashboard_host, self.settings.dashboard_port),
                                          timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the children (SIGTERM, then SIGKILL after STOP_TIMEOUT_S), then the servers."""
        self._phase = "stopping"
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            # The process itself, not its group: Dramatiq's master stops its
            # own workers, and a second SIGTERM would make them exit hard.
            child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("process did not stop in time; killing it", process=child.name)
                _signal(child.process.pid, signal.SIGKILL, group=True)
                child.process.wait()
            log.info("process stopped", process=child.name, returncode=child.process.returncode)
        self._kill_groups()  # anything a child, of any generation, left in its process group
        self._state_file.unlink(missing_ok=True)
        if self.servers is not None:
            self.servers.stop()

    def _kill_groups(self) -> None:
        for group in self._groups:
            _signal(group, signal.SIGKILL, group=True)


def _signal(pid: int, signum: signal.Signals, *, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is dead: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")


def _is_herald_child(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a live `herald up` child (daemon, worker, dashboard) on ``data_dir``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    names = {args[0].encode() for args in PROCESSES.values()}
    return (alive(pid) and b"daemon" in cmdline and any(name in cmdline for name in names)
            and f"HERALD_DATA_DIR={data_dir}".encode() in environ)
