"""`herald watch` and `herald unwatch`: which application tables Herald captures."""

from __future__ import annotations

import argparse
import sys

from config.settings import Settings
from daemon.cli.common import add_data_dir, one_line, plural, with_database


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = sub.add_parser("watch", help="capture a table's changes as Herald events")
    add_data_dir(watch)
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
    watch.add_argument("--capture", choices=("trigger", "wal"), default="trigger",
                       help="trigger (default): a trigger writes each change in the application's transaction;"
                            " wal: the daemon reads the changes from the write-ahead log (needs wal_level ="
                            " logical and a role with REPLICATION; the application's writes cost about what"
                            " they cost unwatched)")
    watch.set_defaults(handler=cmd_watch)

    unwatch = sub.add_parser("unwatch", help="stop capturing a table's changes")
    add_data_dir(unwatch)
    unwatch.add_argument("table")
    unwatch.set_defaults(handler=cmd_unwatch)


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.capture import Relation, parse_fills, watch_table

    relations = tuple(Relation.parse(spec) for spec in args.relation)
    fills = parse_fills(args.fill)
    watched = with_database(settings, lambda conn: watch_table(
        conn, args.table, tenant_column=args.tenant_column, entity=args.entity, id_column=args.id_column,
        relations=relations, tasks_table=args.tasks_table, notes_table=args.notes_table,
        updatable=tuple(c for c in args.updatable.split(",") if c), fills=fills, capture=args.capture))
    how = " (read from the write-ahead log)" if args.capture == "wal" else ""
    print(f"watching {watched.table} as entity {watched.entity} (rows identified by {watched.id_column}):"
          f" its inserts, updates and deletes are now Herald events{how}")
    for warning in watched.warnings:
        print(f"herald: warning: {one_line(warning)}", file=sys.stderr)
    return 0


def cmd_unwatch(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.capture import unwatch_table

    table, workflows = with_database(settings, lambda conn: unwatch_table(conn, args.table))
    print(f"no longer watching {table}: its triggers are removed; its events so far are kept")
    if workflows:
        print(f"herald: warning: {plural(workflows, 'active workflow')} trigger on its entity and will not"
              " run until it is watched again", file=sys.stderr)
    return 0
