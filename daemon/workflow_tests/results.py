"""What running workflow tests found: per case, per file, per session."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from daemon.dry_run import StepPreview, jsonable


@dataclass
class Mismatch:
    """One expectation a case did not meet: where, what was expected, what came out."""

    where: str  # "match", "step-1 (email) subject"
    expected: Any
    got: Any
    how: str = "equal"  # equal | contain | outcome (matched or not, failed, not run)

    def as_json(self) -> dict[str, Any]:
        return {"where": self.where, "expected": jsonable(self.expected), "got": jsonable(self.got),
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
