"""Commands that run Herald or its database: up, daemon, worker, dashboard,
migrate, demo and psql."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

from config.errors import HeraldConfigError
from config.settings import Settings, export_worker_settings
from daemon.cli.common import (
    add_data_dir,
    require_herald_here,
    require_own_environment,
    with_database,
)

log = structlog.get_logger("herald")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="run everything: servers (embedded default), daemon, worker, dashboard")
    add_data_dir(up)
    up.add_argument("--port", type=int, help="dashboard port (default 8080)")
    up.add_argument("--no-demo", action="store_true", help="do not load the demo on first start")
    up.set_defaults(handler=cmd_up)

    for name, text, handler in (
        ("migrate", "apply Herald's missing database migrations", cmd_migrate),
        ("demo", "load the field-service demo (tables, sample rows, workflow) into the database", cmd_demo),
        ("daemon", "run the daemon: LISTEN, dispatch, sweep, heartbeat", cmd_daemon),
        ("worker", "run the Dramatiq workers that carry out workflows", cmd_worker),
    ):
        parser = sub.add_parser(name, help=text)
        add_data_dir(parser)
        parser.set_defaults(handler=handler)

    dashboard = sub.add_parser("dashboard", help="run the dashboard web server")
    add_data_dir(dashboard)
    dashboard.add_argument("--port", type=int, help="port (default 8080)")
    dashboard.set_defaults(handler=cmd_dashboard)

    psql = sub.add_parser("psql", help="run psql against Herald's database; arguments pass through")
    add_data_dir(psql)
    psql.set_defaults(handler=cmd_psql, passes_arguments=True)


def check_port_free(host: str, port: int) -> None:
    """The dashboard's port must be free before `up` starts anything: otherwise
    the demo is loaded and "Herald is up" points at whatever holds the port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise HeraldConfigError(f"dashboard host {host!r} cannot be resolved: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise HeraldConfigError(
                    f"port {port} on {host} is in use (another Herald, or another program):"
                    " choose another with --port or HERALD_DASHBOARD_PORT") from None
            raise HeraldConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.embedded import EmbeddedServers, hold_up_lock
    from daemon.supervisor import Supervisor

    require_own_environment()
    # Held for as long as this runs: it tells other commands that the servers are ours.
    lock = hold_up_lock(settings.data_dir)
    if lock is None:
        print(f"herald: Herald is already running on {settings.data_dir}", file=sys.stderr)
        return 1
    try:
        check_port_free(settings.dashboard_host, settings.dashboard_port)
    except HeraldConfigError:
        lock.close()
        raise
    servers = EmbeddedServers(settings.layout, supervised=True) if settings.embedded else None
    supervisor = Supervisor(settings, servers)
    supervisor.install_signal_handlers()
    try:
        supervisor.stop_leftovers()
        if servers is not None:
            servers.start()
        applied = asyncio.run(_migrate(settings))
        if settings.embedded and applied and not args.no_demo:
            # First start of the embedded default: bring the demo along.
            asyncio.run(_demo(settings))
        supervisor.start()

        def ready() -> None:
            url = f"http://{settings.dashboard_host}:{settings.dashboard_port}/"
            if not asyncio.run(_has_users(settings)):
                print("\nNo dashboard users yet. Create the first admin (in another terminal):\n"
                      "  herald users add you@example.com --role admin", flush=True)
            print(f"\nHerald is up. Dashboard: {url}\n"
                  f"Try: herald psql -c \"UPDATE jobs SET status='completed' WHERE id=1\"\n"
                  "Press Ctrl-C to stop.\n", flush=True)

        return supervisor.run(on_ready=ready)
    except KeyboardInterrupt:  # a signal during the start-up
        log.info("stopping Herald during its start-up")
        return 0
    finally:
        supervisor.stop()
        lock.close()


async def _has_users(settings: Settings) -> bool:
    from config.database import connection
    from daemon.accounts import count_users

    async with connection(settings.database_url) as conn:
        return await count_users(conn) > 0


async def _migrate(settings: Settings) -> list[str]:
    from config.database import connection, migrate

    async with connection(settings.database_url) as conn:
        return await migrate(conn)


async def _load_demo(conn: asyncpg.Connection) -> bool:
    from daemon.demo import load_demo

    loaded = await load_demo(conn)
    print("demo loaded: organizations, clients, jobs and invoices, watched, with the"
          " 'Job Completed' workflow" if loaded else "demo already present; nothing changed")
    return loaded


async def _demo(settings: Settings) -> bool:
    from config.database import connection

    async with connection(settings.database_url) as conn:
        return await _load_demo(conn)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from config.database import migrate

    require_own_environment()
    applied = with_database(settings, migrate, migrate=False)
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    with_database(settings, _load_demo)
    return 0


def cmd_psql(settings: Settings, args: argparse.Namespace) -> int:
    import signal
    import subprocess

    from daemon.embedded import postgres_bin, servers_for

    url, env = _without_password(settings.database_url)
    command = [str(postgres_bin("psql")), url, *args.args]
    if not settings.embedded:
        os.execve(command[0], command, env)
    require_herald_here(settings)
    with servers_for(settings, redis=False) as servers:
        assert servers is not None
        if not servers.started_any:
            # Running already (another command's): psql takes this command's
            # place, keeping its claim on the servers (the users lock) open.
            servers.keep_claim_across_exec()
            os.execve(command[0], command, env)
        # Started here: wait for psql, then stop them (unless someone else uses them now).
        # Ctrl-C is psql's (it cancels a query); it must not end this process first.
        previous = signal.signal(signal.SIGINT, lambda _signum, _frame: None)
        try:
            return subprocess.run(command, env=env).returncode
        finally:
            signal.signal(signal.SIGINT, previous)


def _without_password(url: str) -> tuple[str, dict[str, str]]:
    """psql gets the password through its environment, never on its command line."""
    env = dict(os.environ)
    parts = urlsplit(url)
    if parts.password is None:
        return url, env
    env["PGPASSWORD"] = parts.password
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{parts.username}@{host}" if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc)), env


def cmd_daemon(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    from daemon.service import run_daemon

    require_herald_here(settings)
    # libuv's event loop, as the worker's (actors/worker.py): less CPU per socket operation.
    return uvloop.run(run_daemon(settings))


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from config.sd_notify import share_watchdog_with_children

    require_herald_here(settings)
    export_worker_settings(settings)  # before Dramatiq is imported
    # Under systemd the worker processes this one forks feed the watchdog (see
    # actors.middleware.systemd; the unit has NotifyAccess=all).
    share_watchdog_with_children()
    from actors.metrics_dir import prepare_multiprocess_dir, remove_multiprocess_dir

    # Before prometheus-client is imported (by the worker processes, which inherit it).
    metrics_dir = prepare_multiprocess_dir()
    import dramatiq.cli

    sys.argv = [
        "dramatiq", "actors.worker",
        "--processes", str(settings.worker_processes),
        "--threads", str(settings.worker_threads),
        "--skip-logging",
    ]
    if settings.worker_metrics_port:
        # The group's /metrics: a process Dramatiq's parent forks after the workers.
        sys.argv += ["--fork-function", "actors.metrics_dir:serve_worker_metrics"]
    # Dramatiq's parent process exits with its worker processes' worst status:
    # non-zero when one died abnormally (killed: 1; a lifecycle exit, see
    # actors.middleware.lifecycle: its code), so `Restart=on-failure` and
    # `herald up` restart it. The worker processes never outlive it.
    try:
        return int(dramatiq.cli.main() or 0)
    finally:
        remove_multiprocess_dir(metrics_dir)


def loopback_address(host: str) -> bool:
    """Whether listening on ``host`` keeps the dashboard on this machine."""
    import ipaddress

    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def cmd_dashboard(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from config.sd_notify import Notifier
    from dashboard.app import create_app
    from dashboard.notify import serving

    require_herald_here(settings)
    log.info("dashboard listening", host=settings.dashboard_host, port=settings.dashboard_port)
    if not loopback_address(settings.dashboard_host):
        log.warning("the dashboard listens beyond this machine: put it behind HTTPS (a proxy terminating TLS)"
                    " and set HERALD_DASHBOARD_ALLOWED_HOSTS to the names people reach it by",
                    host=settings.dashboard_host)
    app = create_app(settings)
    # aiohttp calls `print` once the site listens: READY=1 for systemd (nothing printed).
    listening = serving(app, Notifier.from_environ(), f"{settings.dashboard_host}:{settings.dashboard_port}")
    web.run_app(app, host=settings.dashboard_host, port=settings.dashboard_port,
                print=listening, access_log=None)
    return 0
