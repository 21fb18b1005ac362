"""The `herald` command: one entry point for every Herald process and task."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import math
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from config.errors import HeraldConfigError, HeraldError, WorkflowValidationError
from config.logging import configure_logging
from config.settings import Settings, current, export_worker_settings, set_for_process

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
    watch.add_argument("--id-column", help="the column identifying a row (default: the primary key)")
    watch.add_argument("--relation", action="append", default=[], metavar="NAME=TABLE:COLUMN[:KEY]",
                       help="a related row templates can use, e.g. client=clients:client_id")
    watch.add_argument("--tasks-table", help="where create_task writes for this table's events")
    watch.add_argument("--notes-table", help="where create_note writes for this table's events")
    watch.add_argument("--updatable", default="", metavar="COL,COL",
                       help="columns update_record may change")
    watch.add_argument("--fill", action="append", default=[], metavar="COLUMN=KIND",
                       help="what Herald fills in the rows it writes when a workflow does not:"
                            " now, uuid, cuid or none (repeatable)")
    unwatch = sub.add_parser("unwatch", help="stop capturing a table's changes")
    _common(unwatch)
    unwatch.add_argument("table")

    workflows = sub.add_parser("workflows", help="validate, import or export workflow definitions")
    workflows_sub = workflows.add_subparsers(dest="workflows_command", required=True, metavar="ACTION")
    validate = workflows_sub.add_parser("validate", help="check workflow files (needs no database)")
    validate.add_argument("files", nargs="+")
    importing = workflows_sub.add_parser("import", help="validate and save workflow files for a tenant")
    _common(importing)
    importing.add_argument("files", nargs="+")
    importing.add_argument("--tenant", required=True, help="the tenant (organization) id")
    exporting = workflows_sub.add_parser("export", help="print stored workflows as JSON")
    _common(exporting)
    exporting.add_argument("--tenant", help="only this tenant's workflows")

    retry = sub.add_parser("retry", help="retry a failed run, or every failed run a filter selects")
    _common(retry)
    retry.add_argument("run_id", nargs="?", type=int, help="the run to retry")
    retry.add_argument("--failed", action="store_true", help="retry failed runs matching the filters")
    retry.add_argument("--tenant", help="only this tenant's runs")
    retry.add_argument("--workflow", help="only runs of this workflow id")
    retry.add_argument("--error", help="only runs whose error contains this text")
    retry.add_argument("--since", type=_timestamp, help="failed at or after (ISO time)")
    retry.add_argument("--until", type=_timestamp, help="failed before (ISO time)")
    retry.add_argument("--dry-run", action="store_true", help="say what a retry would touch; change nothing")
    retry.add_argument("--reason", default="retried from the command line", help="recorded with the retry")
    retry.add_argument("--by", default=_whoami(), help="who is retrying (recorded)")

    trigger = sub.add_parser("trigger", help="fire an event by hand, with a JSON payload as the record")
    _common(trigger)
    trigger.add_argument("type", help="a trigger name, e.g. job_completed or crm/appointment.created")
    trigger.add_argument("--payload", required=True, help="a JSON file: the record the event is about")
    trigger.add_argument("--tenant", required=True, help="the tenant (organization) id")
    trigger.add_argument("--workflow", help="run only this workflow (its id)")

    limit = sub.add_parser("rate-limit", help="set a tenant's per-recipient message limit")
    _common(limit)
    limit.add_argument("--tenant", required=True)
    limit.add_argument("--per-recipient", type=int, required=True, help="messages per channel per window (0: none)")
    limit.add_argument("--window", default="1h", help="e.g. 1h, 1d")
    limit.add_argument("--over-limit", choices=("wait", "skip"), default="wait")

    psql = sub.add_parser("psql", help="run psql against Herald's database; arguments pass through")
    _common(psql)
    return parser


def _timestamp(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _whoami() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


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
    settings: Settings | None = None
    try:
        settings = current()
        configure_logging(settings, process=args.command)
        return COMMANDS[args.command](settings, args)
    except WorkflowValidationError as exc:
        print(f"herald: invalid workflow: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except HeraldError as exc:
        print(f"herald: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:
        # Commands that read what a person typed or wrote: input Herald's own checks missed
        # is still reported in one line, not as a traceback (HERALD_LOG_LEVEL=DEBUG shows it).
        reason = _bad_input(exc) if args.command in INPUT_COMMANDS else None
        if reason is None:
            raise
        if settings is not None and settings.log_level == "DEBUG":
            log.debug("command failed on its input", exc_info=True)
        print(f"herald: {reason}", file=sys.stderr)
        return 2


# Commands whose arguments and files come from a person; see main().
INPUT_COMMANDS = frozenset({"trigger", "retry", "workflows", "rate-limit"})


def one_line(text: str) -> str:
    """``text`` on one line: line breaks and other control characters escaped."""
    return "".join(char if char.isprintable() or char == " " else char.encode("unicode_escape").decode()
                   for char in text)


def _bad_input(exc: Exception) -> str | None:
    """One line about an error that bad input causes, or None for any other error."""
    import asyncpg

    if isinstance(exc, RecursionError):
        return "the input is nested too deeply"
    if isinstance(exc, UnicodeError):
        return f"the input is not valid Unicode text ({one_line(str(exc))[:200]})"
    if isinstance(exc, (ValueError, OverflowError)):
        return f"invalid input: {one_line(str(exc))[:300]}"
    if isinstance(exc, asyncpg.DataError):
        return f"the database refused the input: {one_line(str(exc))[:300]}"
    return None


# -- commands ------------------------------------------------------------------


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.embedded import EmbeddedServers, hold_up_lock
    from daemon.supervisor import Supervisor

    # Held for as long as this runs: it tells other commands that the servers are ours.
    lock = hold_up_lock(settings.data_dir)
    if lock is None:
        print(f"herald: Herald is already running on {settings.data_dir}", file=sys.stderr)
        return 1
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

    with servers_for(settings, redis=False):
        applied = asyncio.run(_migrate(settings))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.embedded import servers_for

    with servers_for(settings, redis=False):
        asyncio.run(_migrate(settings))
        asyncio.run(_demo(settings))
    return 0


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    from config.database import connection
    from daemon.capture import Relation, Watched, parse_fills, watch_table
    from daemon.embedded import servers_for

    relations = tuple(Relation.parse(spec) for spec in args.relation)
    fills = parse_fills(args.fill)

    async def run() -> Watched:
        await _migrate(settings)
        async with connection(settings.database_url) as conn:
            return await watch_table(conn, args.table, tenant_column=args.tenant_column,
                                     entity=args.entity, id_column=args.id_column,
                                     relations=relations, tasks_table=args.tasks_table,
                                     notes_table=args.notes_table,
                                     updatable=tuple(c for c in args.updatable.split(",") if c),
                                     fills=fills)

    with servers_for(settings, redis=False):
        watched = asyncio.run(run())
    print(f"watching {watched.table} as entity {watched.entity} (rows identified by {watched.id_column}):"
          " its inserts, updates and deletes are now Herald events")
    for warning in watched.warnings:
        print(f"herald: warning: {one_line(warning)}", file=sys.stderr)
    return 0


def cmd_unwatch(settings: Settings, args: argparse.Namespace) -> int:
    from config.database import connection
    from daemon.capture import unwatch_table
    from daemon.embedded import servers_for

    async def run() -> tuple[str, int]:
        await _migrate(settings)
        async with connection(settings.database_url) as conn:
            return await unwatch_table(conn, args.table)

    with servers_for(settings, redis=False):
        table, workflows = asyncio.run(run())
    print(f"no longer watching {table}: its triggers are removed; its events so far are kept")
    if workflows:
        print(f"herald: warning: {workflows} active workflow(s) trigger on its entity and will not run"
              " until it is watched again", file=sys.stderr)
    return 0


def cmd_psql(settings: Settings, args: argparse.Namespace) -> int:
    import signal
    import subprocess

    from daemon.embedded import postgres_bin, servers_for

    url, env = _without_password(settings.database_url)
    command = [str(postgres_bin("psql")), url, *args.args]
    if not settings.embedded:
        os.execve(command[0], command, env)
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


def _read_json_file(path: str) -> Any:
    """A JSON document read from ``path``; HeraldConfigError saying in one line why not
    (unreadable, not UTF-8 text, not JSON, nested too deeply, a number out of range)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise HeraldConfigError(f"{path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HeraldConfigError(f"{path}: not UTF-8 text (byte {exc.start}): is it a binary file?") from None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise HeraldConfigError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise HeraldConfigError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer of thousands of digits, 1e999, NaN
        raise HeraldConfigError(f"{path}: not valid JSON ({one_line(str(exc))[:200]})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def cmd_workflows(settings: Settings, args: argparse.Namespace) -> int:
    from actors.workflow import WorkflowSpec, parse_workflow
    from daemon.triggering import check_storable, check_text

    if args.workflows_command == "export":
        if args.tenant is not None:
            check_text(args.tenant, "--tenant")
        return _export_workflows(settings, args)
    if args.workflows_command == "import":
        check_text(args.tenant, "--tenant")
    documents: list[tuple[str, Any, WorkflowSpec]] = []
    failed = 0
    for path in args.files:
        # Each file gets one line: what is wrong with it, never a traceback.
        try:
            document = _read_json_file(path)
            check_storable(document, "the workflow")
            documents.append((path, document, parse_workflow(document)))
        except (WorkflowValidationError, HeraldConfigError) as exc:
            print(f"{path}: invalid: {one_line(str(exc).removeprefix(f'{path}: '))}", file=sys.stderr)
            failed += 1
        except RecursionError:
            print(f"{path}: invalid: nested too deeply", file=sys.stderr)
            failed += 1
        except ValueError as exc:  # UnicodeError among them
            print(f"{path}: invalid: {one_line(str(exc))[:300]}", file=sys.stderr)
            failed += 1
    if failed:
        return 2
    if args.workflows_command == "validate":
        for path, _, spec in documents:
            # What the trigger was read as: without the database, an ambiguous name lists its readings.
            print(f"{path}: valid ({spec.name}: {spec.trigger.name} -> {spec.trigger.describe()};"
                  f" {len(spec.steps)} steps)")
        return 0
    return _import_workflows(settings, args, documents)


def _import_workflows(settings: Settings, args: argparse.Namespace, documents: list[tuple[str, Any, Any]]) -> int:
    from config.database import connection
    from daemon.embedded import servers_for
    from daemon.workflows import save_workflow

    async def run() -> None:
        await _migrate(settings)
        async with connection(settings.database_url) as conn:
            for path, document, _ in documents:
                saved = await save_workflow(conn, args.tenant, document)
                print(f"{path}: imported as {saved.workflow_id} for tenant {args.tenant}")
                for warning in saved.warnings:
                    print(f"{path}: warning: {warning}", file=sys.stderr)

    with servers_for(settings, redis=False):
        asyncio.run(run())
    return 0


def _export_workflows(settings: Settings, args: argparse.Namespace) -> int:
    from config.database import connection
    from daemon.embedded import servers_for
    from daemon.workflows import export_workflows

    async def run() -> list[dict[str, Any]]:
        async with connection(settings.database_url) as conn:
            return await export_workflows(conn, args.tenant)

    with servers_for(settings, redis=False):
        print(json.dumps(asyncio.run(run()), indent=2))
    return 0


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    from config.database import connection
    from daemon.embedded import servers_for
    from daemon.retries import RetryFilter, retry_failed, retry_run

    if (args.run_id is None) == (not args.failed):
        raise HeraldConfigError("give a run id, or --failed with filters")
    _check_retry_args(args)

    def send_step(action: str, step_id: int) -> None:
        dramatiq.get_broker().get_actor(ACTIONS[action].actor).send([step_id])

    async def run() -> int:
        async with connection(settings.database_url) as conn:
            if args.run_id is not None:
                if await retry_run(conn, args.run_id, requested_by=args.by, reason=args.reason,
                                   send_step=send_step, tenant_id=args.tenant):
                    print(f"run {args.run_id}: retrying")
                    return 0
                print(f"run {args.run_id}: not retried (it is not failed, or is being retried already)",
                      file=sys.stderr)
                return 1
            where = RetryFilter(args.tenant, args.workflow, args.error, args.since, args.until)
            summary = await retry_failed(conn, where, requested_by=args.by, reason=args.reason,
                                         send_step=send_step, dry_run=args.dry_run)
            verb = "would retry" if args.dry_run else "retried"
            print(f"{verb} {summary.runs} runs: {summary.messages_to_resend} steps to send again,"
                  f" {summary.already_delivered} already delivered (kept)")
            if summary.not_retried:
                print(f"not retried (changed meanwhile): {summary.not_retried}")
            return 0

    import dramatiq

    from actors.actions import ACTIONS  # sets up the broker the retry's first message goes to

    with servers_for(settings):
        return asyncio.run(run())


def _check_retry_args(args: argparse.Namespace) -> None:
    """Refuse, before any server is touched, what PostgreSQL could not take."""
    from daemon.retries import MAX_RUN_ID
    from daemon.triggering import check_text, check_workflow_id

    if args.run_id is not None and not 1 <= args.run_id <= MAX_RUN_ID:
        raise HeraldConfigError(f"the run id must be from 1 to {MAX_RUN_ID} (got {str(args.run_id)[:40]})")
    if args.workflow is not None:
        args.workflow = check_workflow_id(args.workflow)
    for option in ("tenant", "error", "reason", "by"):
        if getattr(args, option) is not None:
            check_text(getattr(args, option), f"--{option}")


def cmd_trigger(settings: Settings, args: argparse.Namespace) -> int:
    from actors.triggers import TIME_TRIGGERS, parse_trigger
    from config.database import connection
    from daemon.embedded import servers_for
    from daemon.triggering import check_storable, check_text, check_workflow_id, fire_event

    # Everything that can be judged without the database is, before any server starts.
    check_text(args.tenant, "--tenant")
    check_text(args.type, "the trigger")
    if args.type not in TIME_TRIGGERS:
        try:
            parse_trigger(args.type, "trigger")
        except WorkflowValidationError as exc:
            raise HeraldConfigError(exc.message) from None
    if args.workflow is not None:
        args.workflow = check_workflow_id(args.workflow)
    payload = _read_json_file(args.payload)
    if not isinstance(payload, dict):
        raise HeraldConfigError(f"{args.payload}: the payload must be a JSON object")
    check_storable(payload, args.payload)

    async def run() -> int:
        async with connection(settings.database_url) as conn:
            return await fire_event(conn, tenant_id=args.tenant, trigger_type=args.type,
                                    payload=payload, workflow_id=args.workflow)

    with servers_for(settings, redis=False):
        event_id = asyncio.run(run())
    print(f"event {event_id} fired ({args.type}, tenant {args.tenant})")
    return 0


def cmd_rate_limit(settings: Settings, args: argparse.Namespace) -> int:
    from config.database import connection
    from daemon.embedded import servers_for
    from daemon.tenants import check_rate_limit, set_rate_limit
    from daemon.triggering import check_text

    check_text(args.tenant, "--tenant")
    rate_limit = {"per_recipient": args.per_recipient, "window": args.window, "over_limit": args.over_limit}
    try:
        check_rate_limit(rate_limit)  # before any server starts; 0 to 1,000,000, at most 10 years
    except WorkflowValidationError as exc:
        option = "--" + exc.field.rsplit(".", 1)[-1].replace("_", "-")
        raise HeraldConfigError(f"{option}: {exc.message}") from None

    async def run() -> None:
        await _migrate(settings)
        async with connection(settings.database_url) as conn:
            await set_rate_limit(conn, args.tenant, rate_limit)

    with servers_for(settings, redis=False):
        asyncio.run(run())
    print(f"tenant {args.tenant}: at most {args.per_recipient} messages per channel per recipient"
          f" per {args.window}, then {args.over_limit}")
    return 0


def cmd_daemon(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.service import run_daemon

    return asyncio.run(run_daemon(settings))


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    export_worker_settings(settings)  # before Dramatiq is imported
    import dramatiq.cli

    sys.argv = [
        "dramatiq", "actors",
        "--processes", str(settings.worker_processes),
        "--threads", str(settings.worker_threads),
        "--skip-logging",
    ]
    # Dramatiq's parent process exits with its worker processes' worst status:
    # non-zero when one died abnormally (killed: 1; a lifecycle exit, see
    # actors.middleware.lifecycle: its code), so `Restart=on-failure` and
    # `herald up` restart it. The worker processes never outlive it.
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
    "unwatch": cmd_unwatch,
    "psql": cmd_psql,
    "daemon": cmd_daemon,
    "worker": cmd_worker,
    "dashboard": cmd_dashboard,
    "workflows": cmd_workflows,
    "retry": cmd_retry,
    "trigger": cmd_trigger,
    "rate-limit": cmd_rate_limit,
}

if __name__ == "__main__":
    sys.exit(main())
