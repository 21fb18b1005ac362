"""Running a test file's cases: each event through the workflow, every step in preview."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from actors.actions.records import as_text
from actors.model.naming import AmbiguousName, column_for
from actors.model.triggers import TIME_TRIGGERS, parse_trigger
from actors.model.workflow import (
    WorkflowSpec,
    evaluate,
    event_context,
)
from config.settings import Settings
from daemon.dry_run import (
    FAILED,
    NOT_RUN,
    WAITING,
    StepPreview,
    Target,
    preview_steps,
    watched_entity,
)
from daemon.workflow_tests.files import (
    OPERATIONS,
    Case,
    StepCheck,
    TestFileError,
    TextCheck,
    discover,
    display_path,
    load_test_file,
)
from daemon.workflow_tests.results import CaseResult, FileResult, Mismatch, TestSession


def build_event(case: Case, spec: WorkflowSpec, target: Target | None, at: dt.datetime) -> dict[str, Any]:
    """The event a case describes, as the capture trigger (or `herald trigger`) would write it."""
    raw = case.event
    record = dict(raw["record"])
    if "trigger" in raw:
        name = raw["trigger"]
        entity = raw.get("entity") or (TIME_TRIGGERS[name][0] if name in TIME_TRIGGERS else parse_trigger(name).entity)
        operation, kind, old, new = "MANUAL", name, None, record
    else:
        entity = raw.get("entity") or spec.trigger.entity
        operation = OPERATIONS[raw["operation"]]
        kind = f"{entity}.{ {'INSERT': 'created', 'UPDATE': 'updated', 'DELETE': 'deleted'}[operation] }"
        old = new = None
        if operation == "UPDATE":
            old = {**record, **{c: v["from"] for c, v in raw["changes"].items()}}
            new = {**record, **{c: v["to"] for c, v in raw["changes"].items()}}
        elif operation == "INSERT":
            new = record
        else:
            old = record
    id_column = (target.id_column if target else None) or "id"
    row = new if new is not None else old or {}
    row_id = row.get(id_column)
    return {
        "id": None, "tenant_id": raw.get("tenant", "default"), "entity": entity,
        "table_name": raw.get("table") or (target.table_name if target else None) or entity,
        "row_id": None if row_id is None else str(row_id), "operation": operation, "type": kind,
        "old": old, "new": new, "created_at": at, "workflow_id": None, "origin_run_id": None,
    }


async def run_test_file(
    path: str | Path, *, conn: asyncpg.Connection | None = None, settings: Settings | None = None,
    select: str | None = None, shown_as: str | None = None,
) -> FileResult:
    """Run the cases of one test file; never raises for a bad file or a failing case.

    ``conn``: a database whose watched tables give create_task / create_note /
    update_record their target tables and columns (read only; see
    :func:`daemon.dry_run.preview_steps`); without one their rows are the keys
    as written. ``select``: only cases whose ``FILE::NAME`` contains it.
    """
    started = time.perf_counter()
    shown = shown_as or display_path(path)
    result = FileResult(shown)
    try:
        test_file = load_test_file(path)
    except TestFileError as exc:
        result.error = str(exc)
        result.seconds = time.perf_counter() - started
        return result
    result.workflow = display_path(test_file.workflow_path)
    for case in test_file.cases:
        if select and select not in f"{shown}::{case.name}":
            continue
        result.cases.append(await run_case(test_file.spec, case, conn=conn, settings=settings))
    result.seconds = time.perf_counter() - started
    return result


async def run_case(
    spec: WorkflowSpec, case: Case, *, conn: asyncpg.Connection | None = None, settings: Settings | None = None,
) -> CaseResult:
    started = time.perf_counter()
    at = case.event.get("at") or dt.datetime.now(dt.UTC)
    result = CaseResult(case.name, False, 0.0, at=at)
    try:
        await _run_case(spec, case, result, at, conn, settings)
    except Exception as exc:  # a case never takes the others down
        result.mismatches.append(Mismatch("case", "to run", f"{type(exc).__name__}: {exc}", how="outcome"))
    result.passed = not result.mismatches
    result.seconds = time.perf_counter() - started
    return result


async def _run_case(spec: WorkflowSpec, case: Case, result: CaseResult, at: dt.datetime,
                    conn: asyncpg.Connection | None, settings: Settings | None) -> None:
    entity = case.event.get("entity") or spec.trigger.entity
    target = None
    if conn is not None:
        async with conn.transaction():  # a savepoint: reading the table's setup changes nothing
            target = await watched_entity(conn, entity)
    event = build_event(case, spec, target, at)
    verdict = evaluate(spec, event)
    result.matched, result.reason = verdict.matched, verdict.reason
    if verdict.matched != case.matched:
        result.mismatches.append(Mismatch("match", "matched" if case.matched else "not matched",
                                          f"{'matched' if verdict.matched else 'not matched'}: {verdict.reason}",
                                          how="outcome"))
    if case.reason is not None and case.reason not in verdict.reason:
        result.mismatches.append(Mismatch("match reason", case.reason, verdict.reason, how="contain"))
    if not verdict.matched:
        return
    context = event_context(event)
    for name, row in (case.event.get("related") or {}).items():
        context[name] = row
    result.steps = await preview_steps(spec, context, event, target or Target(), settings=settings,
                                       conn=conn, clock=at)
    checks = {check.key: check for check in case.steps}
    for step in result.steps:
        check = checks.get(step.key)
        result.mismatches += _compare_step(step, check, at)


def _label(step: StepPreview) -> str:
    return f"{step.key} ({step.action})"


def _compare_step(step: StepPreview, check: StepCheck | None, at: dt.datetime) -> list[Mismatch]:
    label = _label(step)
    if step.status == FAILED:
        if check is not None and check.error is not None:
            if check.error in (step.error or ""):
                return []
            return [Mismatch(f"{label} error", check.error, step.error, how="contain")]
        return [Mismatch(label, "to succeed", f"failed: {step.error}", how="outcome")]
    if check is None:
        return []
    if step.status == NOT_RUN:
        return [Mismatch(label, "to run", "not run: an earlier step failed", how="outcome")]
    if check.error is not None:
        return [Mismatch(label, f"to fail with {check.error!r}", "the step succeeded", how="outcome")]
    got = _observed(step, at)
    mismatches = []
    for name, expected in check.checks.items():
        where = f"{label} {name}"
        value = got.get(name)
        if isinstance(expected, TextCheck):
            mismatches += _compare_text(where, expected, value)
        elif isinstance(expected, dict):
            mismatches += _compare_subset(where, expected, value)
        elif isinstance(expected, dt.timedelta):
            if not isinstance(value, dt.timedelta) or abs((value - expected).total_seconds()) >= 1:
                mismatches.append(Mismatch(where, expected, "no wait (the time has passed)" if value is None else value))
        elif isinstance(expected, dt.datetime):
            if value is None or abs((value - expected).total_seconds()) >= 1:
                mismatches.append(Mismatch(where, expected.isoformat(),
                                           "no wait (the time has passed)" if value is None else value.isoformat()))
    return mismatches


def _observed(step: StepPreview, at: dt.datetime) -> dict[str, Any]:
    """What a step produced, under the names a test checks."""
    result, rendered = step.result, step.rendered
    if step.action in ("delay", "delay_seconds"):
        until = step.until if step.status == WAITING else None
        return {"until": until, "wait": None if until is None else until - at}
    if step.action in ("draft_email", "draft_sms"):
        return {"recipient": result.get("recipient"), "subject": rendered.get("subject"),
                "body": rendered.get("message")}
    return {"recipient": result.get("recipient"), "subject": result.get("subject"), "body": result.get("body"),
            "html": result.get("html_body"), "url": result.get("url"), "payload": result.get("payload"),
            "row": result.get("row"), "fields": result.get("fields"), "table": result.get("table")}


def _compare_text(where: str, expected: TextCheck, got: Any) -> list[Mismatch]:
    if expected.exact is not None:
        return [] if got == expected.exact else [Mismatch(where, expected.exact, got)]
    text = got if isinstance(got, str) else ""
    return [Mismatch(where, part, got, how="contain") for part in expected.contains if part not in text]


def _same(expected: Any, got: Any) -> bool:
    """Equal, or the same text once sent to PostgreSQL (templates render text: 1 is "1")."""
    if expected == got:
        return True
    scalars = (str, int, float, bool)
    return (isinstance(expected, scalars) and isinstance(got, scalars)
            and not isinstance(expected, bool) and not isinstance(got, bool)
            and as_text(expected) == as_text(got))


def _compare_subset(where: str, expected: Any, got: Any) -> list[Mismatch]:
    """The keys ``expected`` names must hold its values (recursively); other keys are not checked."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [Mismatch(where, expected, got)]
        mismatches = []
        for key, value in expected.items():
            try:
                found = column_for(key, got)
            except AmbiguousName:
                found = key if key in got else None
            if found is None:
                mismatches.append(Mismatch(f"{where}.{key}", value, "(missing)"))
            else:
                mismatches += _compare_subset(f"{where}.{key}", value, got[found])
        return mismatches
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return [Mismatch(where, expected, got)]
        return [m for i, (e, g) in enumerate(zip(expected, got)) for m in _compare_subset(f"{where}[{i}]", e, g)]
    return [] if _same(expected, got) else [Mismatch(where, expected, got)]



async def run_tests(
    paths: Sequence[str | Path], *, conn: asyncpg.Connection | None = None, settings: Settings | None = None,
    select: str | None = None,
) -> TestSession:
    """Run every test file under ``paths`` (see :func:`discover`)."""
    started = time.perf_counter()
    files = [await run_test_file(path, conn=conn, settings=settings, select=select) for path in discover(paths)]
    return TestSession(files, time.perf_counter() - started)
