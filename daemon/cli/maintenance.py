"""`herald prune`: delete Herald's old rows now, in batches, or count them (--dry-run).

The leader daemon prunes on its own (HERALD_RETENTION); this is for a first
clean-up of a large database, a tighter one-off, or to see what would go.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from config.errors import HeraldConfigError
from config.settings import VARIABLES, Settings, parse_recipient_limit, parse_retention
from daemon.cli.common import add_data_dir, with_database


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prune = sub.add_parser(
        "prune", help="delete runs, events and other rows older than an age, in small batches",
        description="Delete finished runs (with their steps, messages and retries), matched events, old"
                    " heartbeats and replaced schedule fires older than --older-than; failed runs once"
                    " older than --failed-older-than. What is still in flight, parked or counted by a"
                    " rate limit is kept.")
    add_data_dir(prune)
    prune.add_argument("--older-than", metavar="AGE",
                       help=f"e.g. 30d, 12h, 90m (s, m, h, d, w; at least 1h; default {VARIABLES['retention']})")
    prune.add_argument("--failed-older-than", metavar="AGE",
                       help=f"failed runs: e.g. 90d, or off to keep them (default {VARIABLES['retention_failed']},"
                            " never less than --older-than)")
    prune.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
    prune.add_argument("--batch-size", type=int, default=1000, metavar="N",
                       help="rows per transaction (default 1000)")
    prune.set_defaults(handler=cmd_prune)


def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.retention import TABLES, RetentionPolicy, label, prune

    try:
        keep_text = args.older_than or settings.retention
        keep_name = "--older-than" if args.older_than else VARIABLES["retention"]
        keep = parse_retention(keep_text, keep_name)
        if keep is None:
            raise HeraldConfigError(f"{keep_name} is {keep_text!r}, so nothing is pruned: give an age such as"
                                    " --older-than 30d")
        failed_text = args.failed_older_than or settings.retention_failed
        failed_name = "--failed-older-than" if args.failed_older_than else VARIABLES["retention_failed"]
        keep_failed = parse_retention(failed_text, failed_name)
        if not 1 <= args.batch_size <= 100_000:
            raise HeraldConfigError(f"--batch-size must be a whole number from 1 to 100000 (got {args.batch_size})")
    except HeraldConfigError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    policy = RetentionPolicy(keep, max(keep_failed, keep) if keep_failed is not None else None,
                             rate_window=parse_recipient_limit(settings.recipient_limit)[1],
                             batch_size=args.batch_size)
    now = dt.datetime.now(dt.UTC)
    failed = (f"failed runs older than {now - policy.keep_failed:%Y-%m-%d %H:%M} UTC"
              if policy.keep_failed is not None else "failed runs kept")
    print(f"{'dry run: counting' if args.dry_run else 'pruning'} rows older than {now - keep:%Y-%m-%d %H:%M} UTC"
          f" ({failed}), {args.batch_size:,} per batch", flush=True)
    verb = "would delete" if args.dry_run else "deleted"

    def progress(table: str, count: int) -> None:
        print(f"  {verb} {label(table, count)}", flush=True)

    report = with_database(settings, lambda conn: prune(conn, policy, dry_run=args.dry_run, now=now,
                                                       on_batch=progress))
    print(f"{verb} in all:")
    for table in TABLES:
        print(f"  {label(table, report.deleted[table])}")
    if args.dry_run:
        print("nothing was deleted (dry run)")
    return 0
