"""Workflow test results as people and CI read them: pytest-like lines and JUnit XML."""

from __future__ import annotations

import datetime as dt
import difflib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from daemon.dry_run import (
    describe_step,
    human_duration,
    jsonable,
)
from daemon.workflow_tests.results import (
    CaseResult,
    FileResult,
    Mismatch,
    TestSession,
)


def _shown(value: Any) -> str:
    if isinstance(value, dt.timedelta):
        return f"{human_duration(value)} after the event"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(jsonable(value), default=str, sort_keys=True)


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
