"""The `herald` command: one entry point for every Herald process and task.

Each group of commands is a module here that registers its parsers, each with
its handler; :mod:`daemon.cli.common` holds what they share (reaching the
database, reading a person's files, one-line errors).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import structlog

from config.errors import HeraldError, WorkflowValidationError
from config.logging import configure_logging
from config.settings import Settings, current, set_for_process
from daemon.cli import (
    maintenance,
    ops,
    processes,
    runs,
    tables,
    tenants,
    testing,
    users,
    workflows,
)
from daemon.cli.common import one_line

log = structlog.get_logger("herald")

GROUPS = (processes, tables, workflows, runs, tenants, testing, users, ops, maintenance)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herald",
        description="Herald turns changes in PostgreSQL into emails, SMS and other actions.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def command_names() -> list[str]:
    """Every `herald` command, sorted."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_arguments", False):
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
        return int(args.handler(settings, args))
    except WorkflowValidationError as exc:
        print(f"herald: invalid workflow: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except HeraldError as exc:
        print(f"herald: {one_line(str(exc))}", file=sys.stderr)
        # status and doctor keep 1 for "look at this" and 2 for "cannot check" (daemon.cli.ops).
        return int(getattr(args, "error_status", 1))
    except Exception as exc:
        # Commands that read what a person typed or wrote: input Herald's own checks missed
        # is still reported in one line, not as a traceback (HERALD_LOG_LEVEL=DEBUG shows it).
        reason = _bad_input(exc) if getattr(args, "reads_input", False) else None
        if reason is None:
            raise
        if settings is not None and settings.log_level == "DEBUG":
            log.debug("command failed on its input", exc_info=True)
        print(f"herald: {reason}", file=sys.stderr)
        return 2


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
