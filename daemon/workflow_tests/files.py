"""Workflow test files: finding them, and reading one into cases (the format is in
:mod:`daemon.workflow_tests`)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.model.durations import parse_duration
from actors.model.triggers import TIME_TRIGGERS, parse_trigger
from actors.model.workflow import (
    StepSpec,
    WorkflowSpec,
    parse_workflow,
)
from config.errors import HeraldConfigError, HeraldError, WorkflowValidationError

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
        case = parse_case(raw, f"cases[{i}]", spec, defaults)
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


def parse_case(raw: Any, where: str, spec: WorkflowSpec, defaults: dict[str, Any]) -> Case:
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



# -- finding test files -----------------------------------------------------------


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
