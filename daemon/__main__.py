"""The `herald` command: one entry point for every Herald process and task."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import sys
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import structlog

from config.errors import HeraldError, WorkflowValidationError
from config.logging import configure_logging
from config.settings import Settings, current, set_for_process

log = structlog.get_logger("herald")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="where the embedded servers keep their data (default ./.herald)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herald",
        description="Herald turns changes in PostgreSQL into emails, SMS and other actions.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run everything: servers (embedded default), daemon, worker, dashboard")
    _common(up)
    up.add_argument("--port", type=int, help="dashboard port (default 8080)")
    up.add_argument("--no-demo", action="store_true", help="do not load the demo on first start")

    for name, text in (
        ("migrate", "apply Herald's missing database migrations"),
        ("demo", "load the field-service demo (tables, sample rows, workflow) into the database"),
        ("daemon", "run the daemon: LISTEN, dispatch, sweep, heartbeat"),
        ("worker", "run the Dramatiq workers that carry out workflows"),
    ):
        _common(sub.add_parser(name, help=text))

    dashboard = sub.add_parser("dashboard", help="run the dashboard web server")
    _common(dashboard)
    dashboard.add_argument("--port", type=int, help="port (default 8080)")

    watch = sub.add_parser("watch", help="capture a table's changes as Herald events")
    _common(watch)
    watch.add_argument("table")
    watch.add_argument("--tenant-column", help="the column holding the tenant (organization) id")
    watch.add_argument("--entity", help="event entity name (default: the table name, singular)")
    watch.add_argument("--id-column", default="id")
    watch.add_argument("--relation", action="append", default=[], metavar="NAME=TABLE:COLUMN",
                       help="a related row templates can use, e.g. client=clients:client_id")

    psql = sub.add_parser("psql", help="run psql against Herald's database; arguments pass through")
    _common(psql)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "psql":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.args = extra
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = os.path.abspath(args.data_dir)
    if getattr(args, "port", None):
        overrides["dashboard_port"] = str(args.port)
    set_for_process(**overrides)
    try:
        settings = current()
        configure_logging(settings, process=args.command)
        return COMMANDS[args.command](settings, args)
    except WorkflowValidationError as exc:
        print(f"herald: invalid workflow: {exc}", file=sys.stderr)
        return 2
    except HeraldError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 1


# -- commands ------------------------------------------------------------------


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.embedded import EmbeddedServers
    from daemon.supervisor import Supervisor

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(settings.data_dir / "up.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"herald: Herald is already running on {settings.data_dir}", file=sys.stderr)
        return 1
    servers = EmbeddedServers(settings.layout) if settings.embedded else None
    supervisor = Supervisor(settings)
    try:
        if servers is not None:
            servers.start()
        applied = asyncio.run(_migrate(settings))
        if settings.embedded and applied and not args.no_demo:
            # First start of the embedded default: bring the demo along.
            asyncio.run(_demo(settings))
        supervisor.start()
        if not supervisor.wait_for_dashboard():
            log.error("the dashboard did not come up")
            return 1
        url = f"http://{settings.dashboard_host}:{settings.dashboard_port}/"
        print(f"\nHerald is up. Dashboard: {url}\n"
              f"Try: herald psql -c \"UPDATE jobs SET status='completed' WHERE id=1\"\n"
              "Press Ctrl-C to stop.\n", flush=True)
        return supervisor.run_until_signal()
    finally:
        supervisor.stop()
        if servers is not None:
            servers.stop()
        lock.close()


async def _migrate(settings: Settings) -> list[str]:
    from config.database import connection, migrate

    async with connection(settings.database_url) as conn:
        return await migrate(conn)


async def _demo(settings: Settings) -> bool:
    from config.database import connection
    from daemon.demo import load_demo

    async with connection(settings.database_url) as conn:
        loaded = await load_demo(conn)
    print("demo loaded: organizations, clients, jobs and invoices, watched, with the"
          " 'Job Completed' workflow" if loaded else "demo already present; nothing changed")
    return loaded


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.embedded import servers_for

    with servers_for(settings):
        applied = asyncio.run(_migrate(settings))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.embedded import servers_for

    with servers_for(settings):
        asyncio.run(_migrate(settings))
        asyncio.run(_demo(settings))
    return 0


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    from config.database import connection
    from daemon.capture import Relation, watch_table
    from daemon.embedded import servers_for

    relations = tuple(Relation.parse(spec) for spec in args.relation)

    async def run() -> str:
        await _migrate(settings)
        async with connection(settings.database_url) as conn:
            return await watch_table(conn, args.table, tenant_column=args.tenant_column,
                                     entity=args.entity, id_column=args.id_column,
                                     relations=relations)

    with servers_for(settings):
        qualified = asyncio.run(run())
    print(f"watching {qualified}: its inserts, updates and deletes are now Herald events")
    return 0


def cmd_psql(settings: Settings, args: argparse.Namespace) -> int:
    import subprocess

    from daemon.embedded import EmbeddedServers, postgres_bin, servers_for

    url, env = _without_password(settings.database_url)
    command = [str(postgres_bin("psql")), url, *args.args]
    if settings.embedded and not EmbeddedServers(settings.layout).postgres_running():
        with servers_for(settings):
            return subprocess.run(command, env=env).returncode
    os.execve(command[0], command, env)
    return 0  # not reached


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
    from daemon.service import run_daemon

    asyncio.run(run_daemon(settings))
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    import dramatiq.cli

    sys.argv = [
        "dramatiq", "actors",
        "--processes", str(settings.worker_processes),
        "--threads", str(settings.worker_threads),
        "--skip-logging",
    ]
    return int(dramatiq.cli.main() or 0)


def cmd_dashboard(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from dashboard.app import create_app

    log.info("dashboard listening", host=settings.dashboard_host, port=settings.dashboard_port)
    web.run_app(create_app(settings), host=settings.dashboard_host, port=settings.dashboard_port,
                print=None, access_log=None)
    return 0


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "up": cmd_up,
    "migrate": cmd_migrate,
    "demo": cmd_demo,
    "watch": cmd_watch,
    "psql": cmd_psql,
    "daemon": cmd_daemon,
    "worker": cmd_worker,
    "dashboard": cmd_dashboard,
}

if __name__ == "__main__":
    sys.exit(main())
