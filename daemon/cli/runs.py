"""`herald retry` and `herald trigger`: runs started or started again by hand."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import asyncpg

from config.errors import HeraldConfigError, WorkflowValidationError
from config.settings import Settings
from daemon.cli.common import (
    add_data_dir,
    one_line,
    plural,
    read_json_file,
    timestamp,
    whoami,
    with_database,
)

WORKFLOW_HELP = "the workflow: its document id, its name (with --tenant) or its uuid"

# How long `herald trigger` waits, by default, for a worker to match the event.
TRIGGER_WAIT_S = 5.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    retry = sub.add_parser("retry", help="retry a failed run, or every failed run a filter selects")
    add_data_dir(retry)
    retry.add_argument("run_id", nargs="?", type=int, help="the run to retry")
    retry.add_argument("--failed", action="store_true", help="retry failed runs matching the filters")
    retry.add_argument("--tenant", help="only this tenant's runs")
    retry.add_argument("--workflow", help=f"only runs of this workflow ({WORKFLOW_HELP})")
    retry.add_argument("--error", help="only runs whose error contains this text")
    retry.add_argument("--since", type=timestamp, help="failed at or after (ISO time)")
    retry.add_argument("--until", type=timestamp, help="failed before (ISO time)")
    retry.add_argument("--dry-run", action="store_true", help="say what a retry would touch; change nothing")
    retry.add_argument("--as-run", action="store_true",
                       help="send the steps as the run had them, not with the workflow's current version")
    retry.add_argument("--force", action="store_true",
                       help="retry runs that would fail again (failed permanently, workflow unchanged since)")
    retry.add_argument("--reason", default="retried from the command line", help="recorded with the retry")
    retry.add_argument("--by", default=whoami(), help="who is retrying (recorded)")
    retry.set_defaults(handler=cmd_retry, reads_input=True)

    trigger = sub.add_parser("trigger", help="fire an event by hand, with a JSON payload as the record")
    add_data_dir(trigger)
    trigger.add_argument("type", help="a trigger name, e.g. job_status_changed or crm/appointment.created")
    trigger.add_argument("--payload", required=True, help="a JSON file: the record the event is about")
    trigger.add_argument("--tenant", required=True, help="the tenant (organization) id")
    trigger.add_argument("--workflow", help=f"run only this workflow ({WORKFLOW_HELP})")
    trigger.add_argument("--wait", type=float, default=TRIGGER_WAIT_S, metavar="SECONDS",
                         help=f"how long to wait for a worker to match it (default {TRIGGER_WAIT_S:g}; 0: do not)")
    trigger.set_defaults(handler=cmd_trigger, reads_input=True)


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.retries import (
        RetryFilter,
        RetryRefused,
        retry_failed,
        retry_one,
        why_not_retried,
    )

    if (args.run_id is None) == (not args.failed):
        raise HeraldConfigError("give a run id, or --failed with filters")
    _check_retry_args(args)

    def send_step(queue: str, step_id: int) -> None:
        send(queue, [step_id])

    async def run(conn: asyncpg.Connection) -> int:
        if args.run_id is not None and args.dry_run:
            return await _dry_run_one(conn, args)
        if args.run_id is not None:
            try:
                retried = await retry_one(conn, args.run_id, requested_by=args.by, reason=args.reason,
                                          send_step=send_step, tenant_id=args.tenant, as_run=args.as_run,
                                          force=args.force)
            except RetryRefused as exc:
                print(f"herald: {one_line(str(exc))}", file=sys.stderr)
                return 1
            if retried is None:
                print(f"herald: {await why_not_retried(conn, args.run_id, args.tenant)}", file=sys.stderr)
                return 1
            print(f"run {args.run_id}: retrying {_retried_text(retried)}")
            return 0
        where = RetryFilter(args.tenant, args.workflow, args.error, args.since, args.until)
        summary = await retry_failed(conn, where, requested_by=args.by, reason=args.reason,
                                     send_step=send_step, dry_run=args.dry_run, as_run=args.as_run,
                                     force=args.force)
        verb = "would retry" if args.dry_run else "retried"
        print(f"{verb} {plural(summary.runs, 'run')}: {plural(summary.messages_to_resend, 'step')} to send"
              f" again, {summary.already_delivered} already delivered (kept)")
        for error, runs in summary.by_error.items():
            print(f"  {_grouped(error, runs)}")
        if summary.not_retried:
            print(f"not retried (changed meanwhile): {summary.not_retried}")
        for why, runs in summary.refused.items():
            print(f"not retried without --force: {_grouped(why, runs)}", file=sys.stderr)
        return 1 if summary.refused and not summary.runs else 0

    from actors.broker import send, setup_broker

    setup_broker(settings)  # the retry's first message goes through it
    return with_database(settings, run, redis=True, migrate=False)


def _grouped(text: str, runs: list[int]) -> str:
    """``3 runs: job.titel is undefined... (runs 4, 7, 9)``."""
    text = " ".join(text.split())
    text = text if len(text) <= 160 else f"{text[:160]}..."
    shown = ", ".join(map(str, runs[:20])) + (f" and {len(runs) - 20} more" if len(runs) > 20 else "")
    return f"{plural(len(runs), 'run')}: {one_line(text)} ({'run' if len(runs) == 1 else 'runs'} {shown})"


def _retried_text(retried: Any) -> str:
    """What a retry sends: the steps, with which version of the workflow."""
    steps = plural(retried.steps_reset, "step")
    if retried.version is None:
        how = "as the run had them"
    elif retried.previous_version == retried.version:
        how = f"with version {retried.version} (the version it ran)"
    else:
        ran = "a version from before versions were kept" if retried.previous_version is None else (
            f"it ran version {retried.previous_version}")
        how = f"with version {retried.version} ({ran})"
    text = f"{steps} {how}; {retried.steps_kept} delivered kept"
    if retried.kept_as_run:
        text += f"; not in version {retried.version}, sent as it ran: {', '.join(retried.kept_as_run)}"
    return text


async def _dry_run_one(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    from daemon.retries import FAILED_RUNS, refusal, why_not_retried

    row = await conn.fetchrow(FAILED_RUNS, args.tenant, None, None, None, None, args.run_id)
    if row is None:
        print(f"herald: {await why_not_retried(conn, args.run_id, args.tenant)}", file=sys.stderr)
        return 1
    why = refusal(row, as_run=args.as_run, force=args.force)
    if why is not None:
        print(f"herald: {one_line(why)}", file=sys.stderr)
        return 1
    version = "as the run had them" if args.as_run else f"with version {row['current_version']}"
    print(f"would retry run {args.run_id}: {plural(row['to_resend'], 'step')} to send again {version},"
          f" {row['delivered']} already delivered (kept)")
    print(f"  {_grouped(row['error'] or '(no error recorded)', [row['id']])}")
    return 0


def _check_retry_args(args: argparse.Namespace) -> None:
    """Refuse, before any server is touched, what PostgreSQL could not take."""
    from daemon.retries import MAX_RUN_ID
    from daemon.triggering import check_text

    if args.run_id is not None and not 1 <= args.run_id <= MAX_RUN_ID:
        raise HeraldConfigError(f"the run id must be from 1 to {MAX_RUN_ID} (got {str(args.run_id)[:40]})")
    for option in ("tenant", "workflow", "error", "reason", "by"):
        if getattr(args, option) is not None:
            check_text(getattr(args, option), f"--{option}")
    if args.workflow is not None and args.tenant is None:
        from daemon.retries import (
            workflow_uuid,  # a uuid needs no database; an id or a name, a tenant
        )

        args.workflow = workflow_uuid(args.workflow)


def cmd_trigger(settings: Settings, args: argparse.Namespace) -> int:
    from actors.model.triggers import TIME_TRIGGERS, parse_trigger
    from daemon.triggering import (
        check_storable,
        check_text,
        fire_event,
        wait_for_outcome,
    )

    # Everything that can be judged without the database is, before any server starts.
    check_text(args.tenant, "--tenant")
    check_text(args.type, "the trigger")
    if args.workflow is not None:
        check_text(args.workflow, "--workflow")
    if not 0 <= args.wait <= 600:
        raise HeraldConfigError(f"--wait must be from 0 to 600 seconds (got {args.wait:g})")
    if args.type not in TIME_TRIGGERS:
        try:
            parse_trigger(args.type, "trigger")
        except WorkflowValidationError as exc:
            raise HeraldConfigError(exc.message) from None
    payload = read_json_file(args.payload)
    if not isinstance(payload, dict):
        raise HeraldConfigError(f"{args.payload}: the payload must be a JSON object")
    check_storable(payload, args.payload)

    async def run(conn: asyncpg.Connection) -> int:
        event_id = await fire_event(conn, tenant_id=args.tenant, trigger_type=args.type, payload=payload,
                                    workflow_id=args.workflow)
        print(f"event {event_id} fired ({args.type}, tenant {args.tenant})", flush=True)
        if args.wait == 0:
            return 0
        outcome = await wait_for_outcome(conn, event_id, timeout_s=args.wait)
        return _report(outcome, args)

    return int(with_database(settings, run, migrate=False))


def _report(outcome: Any, args: argparse.Namespace) -> int:
    """Say what became of the fired event, per workflow of the tenant."""
    if outcome.waiting:
        print(f"event {outcome.event_id} is waiting to be matched after {args.wait:g} s: is a worker running?"
              " (`herald up`, or `herald daemon` and `herald worker`); it runs once one is")
        return 0
    if outcome.state == "failed":
        print(f"herald: event {outcome.event_id} could not be matched: {one_line(outcome.error or '?')}",
              file=sys.stderr)
        return 1
    if not outcome.verdicts:
        print(f"not matched: tenant {args.tenant} has no active workflows")
        return 0
    verdicts = outcome.verdicts
    if args.workflow is not None:  # the others were not asked
        verdicts = [v for v in verdicts if v.reason != "the event was fired for another workflow"]
    matched = [v for v in verdicts if v.matched]
    if not matched:
        print(f"nothing matched ({plural(len(verdicts), 'active workflow')} of tenant {args.tenant}):")
    for verdict in verdicts:
        name = one_line(verdict.workflow)
        if not verdict.matched:
            print(f"{name!r}: not matched: {one_line(verdict.reason)}")
        elif verdict.run_id is None:
            print(f"{name!r}: matched: no run (one already exists for this event)")
        elif verdict.run_status == "skipped":
            print(f"{name!r}: matched: run {verdict.run_id}, skipped: {one_line(verdict.run_error or '')}")
        else:
            print(f"{name!r}: matched: run {verdict.run_id}")
    return 0
