"""`herald test` (workflow test files) and `herald workflows test` (a dry run on a real record).

Neither sends nor writes anything, whatever providers are configured: every
step runs in preview mode (see :mod:`daemon.dry_run`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import asyncpg

from config.errors import HeraldConfigError, WorkflowValidationError
from config.settings import Settings
from daemon.cli.common import add_data_dir, one_line, read_json_file, with_database


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = sub.add_parser(
        "test", help="run workflow test files (*.test.json next to the workflows); sends nothing")
    test.add_argument("paths", nargs="*", metavar="PATH",
                      help="test files, or directories searched for *.test.json (default: the current directory)")
    test.add_argument("--junit-xml", metavar="PATH", help="also write the results as JUnit XML (for CI)")
    test.add_argument("-k", dest="select", metavar="TEXT", help="only the cases whose FILE::NAME contains TEXT")
    test.add_argument("-v", "--verbose", action="store_true", help="show each case's match and rendered steps")
    test.add_argument("--database", action="store_true",
                      help="read the tables create_task, create_note and update_record write from Herald's"
                           " database (read only); without it their rows are the keys as written")
    add_data_dir(test)
    test.set_defaults(handler=cmd_test, reads_input=True)



def register_dry_run(workflows_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`herald workflows test`, registered by the workflows group."""
    dry = workflows_sub.add_parser(
        "test", help="dry-run a workflow against a real record: the match, context and rendered steps;"
                     " sends and writes nothing")
    add_data_dir(dry)
    dry.add_argument("workflow", help="a workflow file, or one of the tenant's stored workflows (its id, name or uuid)")
    dry.add_argument("--tenant", required=True, help="the tenant (organization) id")
    dry.add_argument("--record", required=True, metavar="TABLE:ID", help="the watched table's row, e.g. jobs:1")
    dry.add_argument("--change", action="append", default=[], metavar="COLUMN=OLD:NEW",
                     help="an update of the record from OLD to NEW (repeatable); without it, the row's insert")
    dry.add_argument("--json", action="store_true", help="print the dry run as JSON")
    dry.set_defaults(handler=cmd_dry_run, reads_input=True)


def cmd_test(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.workflow_tests import (
        TestSession,
        discover,
        junit_xml,
        report_lines,
        run_test_file,
    )

    files = discover(args.paths)  # a missing path: one line, exit 1

    async def run(conn: asyncpg.Connection | None) -> TestSession:
        started = time.perf_counter()
        results = []
        for path in files:
            result = await run_test_file(path, conn=conn, settings=settings, select=args.select)
            results.append(result)
            for line in report_lines(result, verbose=args.verbose):
                print(line, flush=True)
        return TestSession(results, time.perf_counter() - started)

    if args.database:
        session = with_database(settings, lambda conn: _rolled_back(conn, run(conn)), migrate=False)
    else:
        session = asyncio.run(run(None))
    print(session.summary())
    if args.junit_xml:
        try:
            Path(args.junit_xml).write_text(junit_xml(session), encoding="utf-8")
        except OSError as exc:
            raise HeraldConfigError(f"--junit-xml {args.junit_xml}: {exc.strerror}") from None
    return session.exit_code


async def _rolled_back(conn: asyncpg.Connection, work: object) -> object:
    """``work`` in a READ ONLY transaction that is rolled back: nothing it does can stay."""
    transaction = conn.transaction(readonly=True)
    await transaction.start()
    try:
        return await work  # type: ignore[misc]
    finally:
        await transaction.rollback()


def cmd_dry_run(settings: Settings, args: argparse.Namespace) -> int:
    from actors.model.workflow import parse_workflow
    from daemon.dry_run import Change, dry_run, format_dry_run, stored_workflow
    from daemon.triggering import check_text

    check_text(args.tenant, "--tenant")
    table, sep, row_id = args.record.partition(":")
    if not (sep and table and row_id):
        raise HeraldConfigError(f"--record {args.record!r} must look like TABLE:ID, e.g. jobs:1")
    changes = [Change.parse(spec) for spec in args.change]
    from_file = Path(args.workflow).is_file()
    document = None
    if from_file:
        document = read_json_file(args.workflow)
        try:
            parse_workflow(document)
        except WorkflowValidationError as exc:
            print(f"{args.workflow}: invalid: {one_line(str(exc))}", file=sys.stderr)
            return 2

    async def run(conn: asyncpg.Connection) -> object:
        definition = document if from_file else await stored_workflow(conn, args.workflow, args.tenant)
        return await dry_run(conn, parse_workflow(definition), args.tenant, table, row_id, changes,
                             settings=settings)

    result = with_database(settings, run, migrate=False)
    if args.json:
        print(json.dumps(result.as_json(), indent=2, default=str))  # type: ignore[attr-defined]
    else:
        print(format_dry_run(result, args.workflow))  # type: ignore[arg-type]
    return 0 if result.ok else 1  # type: ignore[attr-defined]
