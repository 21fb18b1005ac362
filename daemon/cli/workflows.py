"""`herald workflows ...`: validate, import, export, list, show, version history,
enable, disable and delete a tenant's workflows.

WORKFLOW is a workflow's document ``id``, its name, or its uuid (as `list` shows).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import asyncpg

from config.errors import HeraldConfigError, WorkflowValidationError
from config.settings import Settings
from daemon.cli import testing
from daemon.cli.common import (
    add_data_dir,
    one_line,
    plural,
    read_json_file,
    whoami,
    with_database,
)

WORKFLOW_HELP = "the workflow: its document id, its name or its uuid"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    workflows = sub.add_parser("workflows", help="validate, import, export and manage workflow definitions")
    workflows.set_defaults(handler=cmd_workflows, reads_input=True)
    workflows_sub = workflows.add_subparsers(dest="workflows_command", required=True, metavar="ACTION")
    validate = workflows_sub.add_parser("validate", help="check workflow files (needs no database)")
    validate.add_argument("files", nargs="+")
    importing = workflows_sub.add_parser(
        "import", help="validate and save workflow files for a tenant (a document, or what export writes)")
    add_data_dir(importing)
    importing.add_argument("files", nargs="+")
    importing.add_argument("--tenant", required=True, help="the tenant (organization) id")
    importing.add_argument("--force", action="store_true",
                           help="save templates that read columns the tables lack (every run would fail on them)")
    importing.add_argument("--by", default=whoami(), help="who saves it (recorded with the version)")
    exporting = workflows_sub.add_parser("export", help="print stored workflows as JSON (what import reads)")
    add_data_dir(exporting)
    exporting.add_argument("--tenant", help="only this tenant's workflows")
    listing = workflows_sub.add_parser("list", help="a tenant's workflows: version, whether active, runs")
    add_data_dir(listing)
    listing.add_argument("--tenant", help="only this tenant's workflows (default: every tenant's)")
    show = workflows_sub.add_parser("show", help="a workflow's current definition (or --version N) as JSON")
    history = workflows_sub.add_parser("history", help="a workflow's versions, newest first")
    enable = workflows_sub.add_parser("enable", help="let a workflow run again")
    disable = workflows_sub.add_parser("disable", help="stop a workflow from starting runs (runs under way go on)")
    delete = workflows_sub.add_parser(
        "delete", help="delete a workflow: it stops, leaves lists and exports, and its runs stay readable")
    for parser in (show, history, enable, disable, delete):
        add_data_dir(parser)
        parser.add_argument("workflow", metavar="WORKFLOW", help=WORKFLOW_HELP)
        parser.add_argument("--tenant", required=True, help="the tenant (organization) id")
    show.add_argument("--version", type=int, help="this version instead of the current one")
    delete.add_argument("--force", action="store_true", help="cancel its runs under way (refused otherwise)")
    delete.add_argument("--by", default=whoami(), help="who deletes it (recorded on cancelled runs)")
    testing.register_dry_run(workflows_sub)


def cmd_workflows(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.triggering import check_text

    for option in ("tenant", "workflow", "by"):
        if getattr(args, option, None) is not None:
            check_text(getattr(args, option), f"--{option}" if option != "workflow" else "WORKFLOW")
    command = args.workflows_command
    if command == "export":
        return _export_workflows(settings, args)
    if command == "list":
        return _list_workflows(settings, args)
    if command in ("show", "history", "enable", "disable", "delete"):
        return _one_workflow(settings, args)
    entries = _read_files(args.files, one_tenant=command == "import")
    if entries is None:
        return 2
    if command == "validate":
        for entry, spec in entries:
            # What the trigger was read as: without the database, an ambiguous name lists its readings.
            print(f"{entry.label}: valid ({spec.name}: {spec.trigger.name} -> {spec.trigger.describe()};"
                  f" {plural(len(spec.steps), 'step')}{_together(spec)})")
        if not entries:
            print(f"{', '.join(args.files)}: no workflows")
        return 0
    return _import_workflows(settings, args, entries)


def _together(spec: Any) -> str:
    """", 2 starting together": how many steps share a stage with another (``with_previous``)."""
    from actors.model.workflow import stages

    stage_of = stages(spec.steps)
    together = sum(1 for stage in stage_of if stage_of.count(stage) > 1)
    return f", {together} starting together" if together else ""


def _read_files(paths: list[str], *, one_tenant: bool) -> list[tuple[Any, Any]] | None:
    """Every workflow of the files, parsed: (entry, spec); None when any is invalid (each said so).
    ``one_tenant``: an export of several tenants' workflows is refused (import saves them for one)."""
    from actors.model.workflow import parse_workflow
    from daemon.triggering import check_storable
    from daemon.workflows import workflow_entries

    parsed: list[tuple[Any, Any]] = []
    failed = 0
    for path in paths:
        # Each workflow gets one line: what is wrong with it, never a traceback.
        try:
            entries = workflow_entries(path, read_json_file(path))
            tenants = sorted({entry.tenant_id for entry in entries if entry.tenant_id is not None})
            if one_tenant and len(tenants) > 1:
                raise HeraldConfigError(f"holds workflows of tenants {', '.join(tenants)}: export and import"
                                        " one tenant's at a time (export --tenant T)")
        except HeraldConfigError as exc:
            print(f"{path}: invalid: {one_line(str(exc).removeprefix(f'{path}: '))}", file=sys.stderr)
            failed += 1
            continue
        except RecursionError:
            print(f"{path}: invalid: nested too deeply", file=sys.stderr)
            failed += 1
            continue
        for entry in entries:
            try:
                check_storable(entry.document, "the workflow")
                parsed.append((entry, parse_workflow(entry.document)))
            except (WorkflowValidationError, HeraldConfigError) as exc:
                print(f"{entry.label}: invalid: {one_line(str(exc).removeprefix(f'{path}: '))}", file=sys.stderr)
                failed += 1
            except RecursionError:
                print(f"{entry.label}: invalid: nested too deeply", file=sys.stderr)
                failed += 1
            except ValueError as exc:  # UnicodeError among them
                print(f"{entry.label}: invalid: {one_line(str(exc))[:300]}", file=sys.stderr)
                failed += 1
    return None if failed else parsed


class _Refused(Exception):
    """Some workflow of the import was refused: nothing is saved."""


def _import_workflows(settings: Settings, args: argparse.Namespace, entries: list[tuple[Any, Any]]) -> int:
    from daemon.workflows import save_workflow

    async def run(conn: asyncpg.Connection) -> int:
        said: list[tuple[str, str]] = []  # (stream, line), printed once the outcome is known
        refused = 0
        try:
            async with conn.transaction():  # all of them, or none
                for entry, _ in entries:
                    try:
                        async with conn.transaction():
                            saved = await save_workflow(conn, args.tenant, entry.document, force=args.force,
                                                        active=entry.is_active, saved_by=args.by)
                    except (WorkflowValidationError, HeraldConfigError) as exc:
                        said.append(("err", f"{entry.label}: refused: {one_line(str(exc))}"))
                        refused += 1
                        continue
                    said.append(("out", f"{entry.label}: imported as {saved.workflow_id} for tenant {args.tenant}"
                                        f" ({_saved_state(saved)})"))
                    said += [("err", f"{entry.label}: warning: {one_line(warning)}") for warning in saved.warnings]
                if refused:
                    raise _Refused
        except _Refused:
            for stream, line in said:
                if stream == "err" and ": refused: " in line:
                    print(line, file=sys.stderr)
            if len(entries) > 1:
                print(f"nothing imported: {plural(refused, 'workflow')} of {len(entries)} refused",
                      file=sys.stderr)
            return 2
        for stream, line in said:
            print(line, file=sys.stderr if stream == "err" else sys.stdout)
        if not entries:
            print("nothing to import")
        return 0

    return with_database(settings, run)


def _saved_state(saved: Any) -> str:
    if saved.previous_version is None:
        state = f"{saved.spec.name!r}, version 1, new"
    elif saved.changed:
        state = f"{saved.spec.name!r}, version {saved.version}, was {saved.previous_version}"
    else:
        state = f"{saved.spec.name!r}, version {saved.version}, unchanged"
    if saved.restored:
        state += ", restored after being deleted"
    return state if saved.is_active else f"{state}, disabled"


def _export_workflows(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.workflows import export_workflows

    exported = with_database(settings, lambda conn: export_workflows(conn, args.tenant), migrate=False)
    print(json.dumps(exported, indent=2, ensure_ascii=False))
    return 0


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned, as `herald workflows list` prints them."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def _list_workflows(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.workflows import list_workflows

    rows = with_database(settings, lambda conn: list_workflows(conn, args.tenant))
    if not rows:
        print(f"tenant {args.tenant} has no workflows" if args.tenant else "no workflows")
        return 0
    header = ["ID", "SOURCE ID", "NAME", "TRIGGER", "VERSION", "ACTIVE", "RUNS", "FAILED"]
    cells = [[str(row["id"]), row["source_id"] or "-", one_line(row["name"]), one_line(row["trigger_type"]),
              str(row["version"]), "yes" if row["is_active"] else "no", str(row["runs"]), str(row["failed"])]
             for row in rows]
    if args.tenant is None:
        header.insert(0, "TENANT")
        cells = [[one_line(row["tenant_id"]), *cell] for row, cell in zip(rows, cells)]
    print(table(header, cells))
    return 0


def _one_workflow(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.workflows import (
        delete_workflow,
        describe,
        find_workflow,
        set_active,
        workflow_definition,
        workflow_history,
    )

    async def run(conn: asyncpg.Connection) -> int:
        workflow = await find_workflow(conn, args.tenant, args.workflow)
        label = f"workflow {describe(workflow)} of tenant {args.tenant}"
        command = args.workflows_command
        if command == "show":
            version = await workflow_definition(conn, workflow, args.version)
            shown = {
                "workflow_id": str(workflow["id"]), "tenant_id": workflow["tenant_id"],
                "source_id": workflow["source_id"], "name": workflow["name"],
                "version": args.version or workflow["version"], "current_version": workflow["version"],
                "is_active": workflow["is_active"],
                "saved_at": version["saved_at"].isoformat() if version["saved_at"] else None,
                "saved_by": version["saved_by"], "definition": version["definition"],
            }
            print(json.dumps(shown, indent=2, ensure_ascii=False))
        elif command == "history":
            versions = await workflow_history(conn, workflow["id"])
            print(f"{label}: {plural(len(versions), 'version')}")
            print(table(["VERSION", "SAVED AT", "SAVED BY", "RUNS", ""], [
                [str(v["version"]), f"{v['saved_at']:%Y-%m-%d %H:%M:%S} UTC", one_line(v["saved_by"] or "-"),
                 str(v["runs"]), "current" if v["version"] == workflow["version"] else ""]
                for v in versions]))
        elif command in ("enable", "disable"):
            changed = await set_active(conn, workflow, command == "enable")
            print(f"{label} {command}d" if changed else f"{label} was {command}d already")
        else:
            deleted = await delete_workflow(conn, workflow, force=args.force, by=args.by)
            cancelled = f"; cancelled {plural(len(deleted.cancelled), 'run')} under way" if deleted.cancelled else ""
            stay = "stays" if deleted.runs_kept == 1 else "stay"
            print(f"{label} deleted{cancelled}; its {plural(deleted.runs_kept, 'run')} {stay} readable"
                  " (importing its document again brings it back)")
        return 0

    return with_database(settings, run)
