"""Workflow tests: `herald test` runs the cases of ``*.test.json`` files kept next to the workflows.

A test file names its workflow (a path relative to the test file) and holds
cases; each case gives an event and what the workflow should make of it:
whether it matches (and why not), and what each step would send, write or
wait for. A case runs the production code paths (the workflow parser, the
trigger and condition evaluation with its reasons, each action's own
parameter handling and the template renderer with its limits) with every
step in preview mode (:mod:`daemon.dry_run`): nothing is sent and nothing is
written, whatever providers are configured.

The format (every key not listed is refused, with the field at fault)::

    {
      "workflow": "job-completed.workflow.json",
      "defaults": {EVENT FIELDS shared by every case; "record" and "related" merge per key},
      "cases": [
        {
          "name": "a completed job emails the client",
          "event": {
            "operation": "update",                  # insert | update | delete (default: update
                                                    #   with "changes", else insert)
            "trigger": "job_completed",             # instead: a manual event (`herald trigger`)
            "entity": "job",                        # default: the workflow trigger's entity
            "record": {"id": 1, "status": "completed", ...},   # the row
            "changes": {"status": {"from": "in_progress", "to": "completed"}},
            "related": {"client": {"first_name": "Maria", ...}},
            "tenant": "1",                          # default "default"
            "at": "2024-05-01T09:00:00Z"            # the event's time (default: now)
          },
          "expect": {
            "matched": true,                        # default true
            "reason": "status did not change",      # a part of the match reason
            "steps": {                              # by step id; steps not named are not checked
              "step-1": {"recipient": "maria@example.com", "subject": "Job Completed - ...",
                         "body": {"contains": "Dear Maria"}},
              "wait": {"wait": "3d"},                # ends 3 days after the event ("until": ISO time)
              "task": {"row": {"title": "Call Maria"}},     # the columns named must match
              "update": {"fields": {"status": "invoiced"}},
              "hook": {"url": "https://...", "payload": {"job": {"id": 1}}},
              "broken": {"error": "client.lastName is undefined"}  # the step fails with this
            }
          }
        }
      ]
    }
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from actors.actions.records import _as_text
from actors.model.durations import parse_duration
from actors.model.naming import AmbiguousName, column_for
from actors.model.triggers import TIME_TRIGGERS, parse_trigger
from actors.model.workflow import (
    StepSpec,
    WorkflowSpec,
    evaluate,
    event_context,
    parse_workflow,
)
from config.errors import HeraldConfigError, HeraldError, WorkflowValidationError
from config.settings import Settings
from daemon.dry_run import (
    FAILED,
    NOT_RUN,
    WAITING,
    StepPreview,
    Target,
    describe_step,
    human_duration,
    preview_steps,
    watched_entity,
)

SUFFIX = ".test.json"
# Directories never searched for test files.
SKIPPED_DIRECTORIES = frozenset({"node_modules", "__pycache__", "site-packages"})


class TestFileError(HeraldError):
    """A test file is invalid; ``field`` names the part at fault."""

    __test__ = False  # not a pytest class

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


# -- results -------------------------------------------------------------------


@dataclass
class Mismatch:
    """One expectation a case did not meet: where, what was expected, what came out."""

    where: str  # "match", "step-1 (email) subject"
    expected: Any
    got: Any
    how: str = "equal"  # equal | contain | outcome (matched or not, failed, not run)

    def as_json(self) -> dict[str, Any]:
        return {"where": self.where, "expected": _jsonable(self.expected), "got": _jsonable(self.got),
                "how": self.how}


@dataclass
class CaseResult:
    name: str
    passed: bool
    seconds: float
    matched: bool | None = None
    reason: str | None = None
    steps: list[StepPreview] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    at: dt.datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "seconds": round(self.seconds, 4),
                "matched": self.matched, "reason": self.reason,
                "steps": [step.as_json() for step in self.steps],
                "mismatches": [m.as_json() for m in self.mismatches]}


@dataclass
class FileResult:
    """A test file's outcome: its cases, or ``error`` when the file (or its workflow) is invalid."""

    path: str
    workflow: str | None = None
    cases: list[CaseResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(case.passed for case in self.cases)

    @property
    def failed(self) -> int:
        return sum(not case.passed for case in self.cases)

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "workflow": self.workflow, "error": self.error,
                "seconds": round(self.seconds, 4), "cases": [case.as_json() for case in self.cases]}


@dataclass
class TestSession:
    """Every file run by one `herald test`."""

    __test__ = False  # not a pytest class

    files: list[FileResult]
    seconds: float

    @property
    def passed(self) -> int:
        return sum(f.passed for f in self.files)

    @property
    def failed(self) -> int:
        return sum(f.failed for f in self.files)

    @property
    def errors(self) -> int:
        return sum(f.error is not None for f in self.files)

    @property
    def exit_code(self) -> int:
        """2: an invalid test file; 1: a case failed; 5: no case ran; 0: all passed."""
        if self.errors:
            return 2
        if self.failed:
            return 1
        if not self.passed:
            return 5
        return 0

    def summary(self) -> str:
        parts = [f"{count} {word}" for count, word in
                 ((self.passed, "passed"), (self.failed, "failed"), (self.errors, "error" if self.errors == 1 else "errors"))
                 if count]
        return f"{', '.join(parts) or 'no tests ran'} in {self.seconds:.2f}s"


# -- the file format ------------------------------------------------------------

TOP_KEYS = {"workflow", "defaults", "cases", "description"}
CASE_KEYS = {"name", "event", "expect", "description"}
EVENT_KEYS = {"operation", "trigger", "entity", "table", "record", "changes", "related", "tenant", "at"}
EXPECT_KEYS = {"matched", "reason", "steps"}
OPERATIONS = {"insert": "INSERT", "update": "UPDATE", "delete": "DELETE"}

# What each action's step may be checked for.
TEXT_CHECKS = {"recipient", "subject", "body", "html", "url", "table"}
STEP_CHECKS: dict[str, set[str]] = {
    "email": {"recipient", "subject", "body", "html"},
    "sms": {"recipient", "body"},
    "draft_email": {"recipient", "subject", "body"},
    "draft_sms": {"recipient", "body"},
    "webhook": {"url", "payload"},
    "create_task": {"row", "table"},
    "create_note": {"row", "table"},
    "update_record": {"fields", "table"},
    "delay": {"wait", "until"},
    "delay_seconds": {"wait", "until"},
}


@dataclass(frozen=True)
class TextCheck:
    """A rendered text: exactly ``exact``, or containing each of ``contains``."""

    exact: str | None = None
    contains: tuple[str, ...] = ()


@dataclass
class StepCheck:
    key: str
    action: str
    checks: dict[str, Any]  # name -> TextCheck, dict (row, fields, payload), timedelta (wait), datetime (until)
    error: str | None = None  # the step is expected to fail with this in its error


@dataclass
class Case:
    name: str
    field: str
    event: dict[str, Any]
    matched: bool = True
    reason: str | None = None
    steps: list[StepCheck] = field(default_factory=list)


@dataclass
class TestFile:
    __test__ = False  # not a pytest class

    path: Path
    workflow_path: Path
    spec: WorkflowSpec
    cases: list[Case]


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TestFileError(where, "must be an object")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TestFileError(where, "must be a non-empty string")
    return value


def _known(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in doc:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise TestFileError(f"{prefix}{key}", f"unknown key (expected one of: {', '.join(sorted(allowed))})")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def load_test_file(path: str | Path) -> TestFile:
    """Read and validate a test file and its workflow; TestFileError names the field at fault."""
    from daemon.cli.common import read_json_file

    path = Path(path)
    try:
        doc = read_json_file(str(path))
    except HeraldConfigError as exc:
        raise TestFileError("", str(exc).removeprefix(f"{path}: ")) from None
    doc = _object(doc, "(document)")
    _known(doc, TOP_KEYS, "")
    workflow_path = path.parent / _text(doc.get("workflow"), "workflow")
    try:
        spec = parse_workflow(read_json_file(str(workflow_path)))
    except HeraldConfigError as exc:
        raise TestFileError("workflow", f"{workflow_path}: {str(exc).removeprefix(f'{workflow_path}: ')}") from None
    except WorkflowValidationError as exc:
        raise TestFileError("workflow", f"{workflow_path} is an invalid workflow: {exc}") from None
    defaults = _event_fields(doc.get("defaults", {}), "defaults")
    raw_cases = doc.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise TestFileError("cases", "must be a non-empty list")
    cases = []
    names: set[str] = set()
    for i, raw in enumerate(raw_cases):
        case = _case(raw, f"cases[{i}]", spec, defaults)
        if case.name in names:
            raise TestFileError(f"cases[{i}].name", f"another case is named {case.name!r}")
        names.add(case.name)
        cases.append(case)
    return TestFile(path, workflow_path, spec, cases)


def _event_fields(raw: Any, where: str) -> dict[str, Any]:
    """The event keys of a case or of the defaults, each checked on its own."""
    event = dict(_object(raw, where))
    _known(event, EVENT_KEYS, where)
    for key in ("operation", "trigger", "entity", "table"):
        if key in event:
            _text(event[key], _join(where, key))
    if "operation" in event:
        operation = event["operation"].strip().lower()
        if operation not in OPERATIONS:
            raise TestFileError(_join(where, "operation"), f"must be one of {', '.join(OPERATIONS)}"
                                f" (got {event['operation']!r}); a manual event is given with \"trigger\"")
        event["operation"] = operation
    if "trigger" in event and event["trigger"] not in TIME_TRIGGERS:
        try:
            parse_trigger(event["trigger"], _join(where, "trigger"))
        except WorkflowValidationError as exc:
            raise TestFileError(exc.field, exc.message) from None
    if "tenant" in event:
        tenant = event["tenant"]
        if isinstance(tenant, int) and not isinstance(tenant, bool):
            event["tenant"] = str(tenant)
        else:
            _text(tenant, _join(where, "tenant"))
    if "record" in event:
        _object(event["record"], _join(where, "record"))
    if "related" in event:
        for name, row in _object(event["related"], _join(where, "related")).items():
            if row is not None:
                _object(row, _join(where, f"related.{name}"))
    if "changes" in event:
        for column, change in _object(event["changes"], _join(where, "changes")).items():
            at = _join(where, f"changes.{column}")
            if not isinstance(change, dict) or set(change) != {"from", "to"}:
                raise TestFileError(at, 'must be {"from": OLD, "to": NEW}')
            if change["from"] == change["to"]:
                raise TestFileError(at, "from and to are the same: an update that changes nothing makes no event")
    if "at" in event:
        event["at"] = _moment(event["at"], _join(where, "at"))
    return event


def _moment(value: Any, where: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(_text(value, where).replace("Z", "+00:00"))
    except ValueError:
        raise TestFileError(where, f"{value!r} is not an ISO time like 2024-05-01T09:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _merged(defaults: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **event}
    for key in ("record", "related"):
        if key in defaults and key in event:
            merged[key] = {**defaults[key], **event[key]}
    # A case that says what kind of event it is drops the defaults of another kind.
    if "trigger" in event and "operation" not in event:
        merged.pop("operation", None)
    if "operation" in event and "trigger" not in event:
        merged.pop("trigger", None)
    if "changes" not in event and ("trigger" in event or event.get("operation") in ("insert", "delete")):
        merged.pop("changes", None)
    return merged


def _case(raw: Any, where: str, spec: WorkflowSpec, defaults: dict[str, Any]) -> Case:
    raw = _object(raw, where)
    _known(raw, CASE_KEYS, where)
    name = _text(raw.get("name"), f"{where}.name")
    if "event" not in raw:
        raise TestFileError(f"{where}.event", "missing: the event the case is about")
    event = _merged(defaults, _event_fields(raw["event"], f"{where}.event"))
    at = f"{where}.event"
    if "record" not in event:
        raise TestFileError(f"{at}.record", "missing: the row the event is about")
    if "trigger" in event:
        if "operation" in event or "changes" in event:
            raise TestFileError(f"{at}.trigger", "a manual event (trigger) has no operation or changes")
    else:
        operation = event.setdefault("operation", "update" if "changes" in event else "insert")
        if operation == "update" and not event.get("changes"):
            raise TestFileError(f"{at}.changes", "an update needs the columns it changes:"
                                ' {"status": {"from": "scheduled", "to": "completed"}}')
        if operation != "update" and "changes" in event:
            raise TestFileError(f"{at}.changes", f"only an update has changes (this is an {operation})")
    case = Case(name, where, event)
    expect = _object(raw.get("expect", {}), f"{where}.expect")
    _known(expect, EXPECT_KEYS, f"{where}.expect")
    if "matched" in expect:
        if not isinstance(expect["matched"], bool):
            raise TestFileError(f"{where}.expect.matched", "must be true or false")
        case.matched = expect["matched"]
    if "reason" in expect:
        case.reason = _text(expect["reason"], f"{where}.expect.reason")
    if "steps" in expect:
        if not case.matched:
            raise TestFileError(f"{where}.expect.steps", "a case that expects no match runs no steps")
        by_key = {step.key: step for step in spec.steps}
        for key, checks in _object(expect["steps"], f"{where}.expect.steps").items():
            if key not in by_key:
                raise TestFileError(f"{where}.expect.steps.{key}", f"the workflow has no step {key!r}"
                                    f" (steps: {', '.join(by_key)})")
            case.steps.append(_step_check(checks, f"{where}.expect.steps.{key}", by_key[key]))
    return case


def _step_check(raw: Any, where: str, step: StepSpec) -> StepCheck:
    raw = _object(raw, where)
    allowed = STEP_CHECKS.get(step.action, set()) | {"error"}
    _known(raw, allowed, where)
    check = StepCheck(step.key, step.action, {})
    if "error" in raw:
        check.error = _text(raw["error"], f"{where}.error")
        if len(raw) > 1:
            raise TestFileError(f"{where}.error", "a step expected to fail has nothing else to check")
        return check
    for name, value in raw.items():
        at = f"{where}.{name}"
        if name in TEXT_CHECKS:
            check.checks[name] = _text_check(value, at)
        elif name in ("row", "fields", "payload"):
            check.checks[name] = _object(value, at)
        elif name == "wait":
            check.checks[name] = _wait(value, at)
        elif name == "until":
            check.checks[name] = _moment(value, at)
    return check


def _wait(value: Any, where: str) -> dt.timedelta:
    """A duration as workflows write them ("3d", "90s"), or as the runner shows them ("8d 6h")."""
    parts = value.split() if isinstance(value, str) and value.strip() else [value]
    try:
        return sum((parse_duration(part, where) for part in parts), dt.timedelta())
    except WorkflowValidationError as exc:
        raise TestFileError(exc.field, exc.message) from None


def _text_check(value: Any, where: str) -> TextCheck:
    if isinstance(value, str):
        return TextCheck(exact=value)
    if isinstance(value, dict) and set(value) == {"contains"}:
        parts = value["contains"]
        parts = [parts] if isinstance(parts, str) else parts
        if isinstance(parts, list) and parts and all(isinstance(p, str) and p for p in parts):
            return TextCheck(contains=tuple(parts))
    raise TestFileError(where, 'must be the exact text, or {"contains": TEXT or [TEXT, ...]}')


# -- running ---------------------------------------------------------------------


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
            and _as_text(expected) == _as_text(got))


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


# -- finding files and running them all ------------------------------------------


def display_path(path: str | Path) -> str:
    """``path`` relative to the current directory when it is under it."""
    relative = os.path.relpath(os.path.abspath(path))
    return str(path) if relative.startswith("..") else relative


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """The test files under ``paths`` (files as given, directories searched for
    ``*.test.json``, hidden directories skipped), each once, in order."""
    found: list[Path] = []
    for raw in paths or ["."]:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for directory, subdirectories, files in os.walk(path):
                subdirectories[:] = sorted(d for d in subdirectories
                                           if not d.startswith(".") and d not in SKIPPED_DIRECTORIES)
                found += [Path(directory) / name for name in sorted(files) if name.endswith(SUFFIX)]
        else:
            raise HeraldConfigError(f"{raw}: no such file or directory")
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values())


async def run_tests(
    paths: Sequence[str | Path], *, conn: asyncpg.Connection | None = None, settings: Settings | None = None,
    select: str | None = None,
) -> TestSession:
    """Run every test file under ``paths`` (see :func:`discover`)."""
    started = time.perf_counter()
    files = [await run_test_file(path, conn=conn, settings=settings, select=select) for path in discover(paths)]
    return TestSession(files, time.perf_counter() - started)


# -- reports ----------------------------------------------------------------------


def _shown(value: Any) -> str:
    if isinstance(value, dt.timedelta):
        return f"{human_duration(value)} after the event"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(_jsonable(value), default=str, sort_keys=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return human_duration(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def describe_mismatch(mismatch: Mismatch, indent: str = "    ") -> list[str]:
    """A mismatch as lines for people: expected against got, per field."""
    lines = [f"{indent}{mismatch.where}:"]
    inner = indent + "  "
    if mismatch.how == "outcome":
        lines.append(f"{inner}expected {mismatch.expected}, got: {mismatch.got}")
        return lines
    expected_label = "expected to contain:" if mismatch.how == "contain" else "expected:"
    if (mismatch.how == "equal" and isinstance(mismatch.expected, str) and isinstance(mismatch.got, str)
            and ("\n" in mismatch.expected or "\n" in mismatch.got)):
        lines += [f"{inner}{line}" for line in difflib.unified_diff(
            mismatch.expected.split("\n"), mismatch.got.split("\n"), "expected", "got", lineterm="", n=2)]
        return lines
    width = max(len(expected_label), len("got:")) + 1
    lines.append(f"{inner}{expected_label:<{width}}{_shown(mismatch.expected)}")
    lines.append(f"{inner}{'got:':<{width}}{_shown(mismatch.got)}")
    return lines


def describe_case(case: CaseResult, indent: str = "    ") -> list[str]:
    """What a case's workflow did: its match and each step (for -v)."""
    lines = [f"{indent}match: {'matched' if case.matched else 'did not match'}: {case.reason}"]
    for step in case.steps:
        lines += [indent + line for line in describe_step(step, since=case.at)]
    return lines


def report_lines(result: FileResult, *, verbose: bool = False) -> Iterable[str]:
    """One line per case (``PASS file::case`` / ``FAIL file::case``), the diff under a failure."""
    if result.error is not None:
        yield f"ERROR {result.path}: invalid: {result.error}"
        return
    for case in result.cases:
        yield f"{'PASS' if case.passed else 'FAIL'} {result.path}::{case.name}"
        for mismatch in case.mismatches:
            yield from describe_mismatch(mismatch)
        if verbose and case.matched is not None:
            yield from describe_case(case)


def junit_xml(session: TestSession) -> str:
    """The session as JUnit XML (one testsuite per file, one testcase per case; an invalid
    file is a testcase with an error), as CI servers read it."""
    suites = ET.Element("testsuites", name="herald test", tests=str(session.passed + session.failed + session.errors),
                        failures=str(session.failed), errors=str(session.errors), time=f"{session.seconds:.3f}")
    for result in session.files:
        suite = ET.SubElement(suites, "testsuite", name=result.path,
                              tests=str(len(result.cases) or (1 if result.error else 0)),
                              failures=str(result.failed), errors=str(int(result.error is not None)),
                              skipped="0", time=f"{result.seconds:.3f}")
        if result.error is not None:
            case_element = ET.SubElement(suite, "testcase", classname=result.path, name="(test file)", time="0")
            error = ET.SubElement(case_element, "error", message=result.error, type="invalid test file")
            error.text = result.error
            continue
        for case in result.cases:
            case_element = ET.SubElement(suite, "testcase", classname=result.path, name=case.name,
                                         time=f"{case.seconds:.3f}")
            if not case.passed:
                details = [line for m in case.mismatches for line in describe_mismatch(m, indent="")]
                first = case.mismatches[0]
                failure = ET.SubElement(case_element, "failure", type="mismatch",
                                        message=f"{first.where}: expected {_shown(first.expected)},"
                                                f" got {_shown(first.got)}")
                failure.text = "\n".join(details)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
