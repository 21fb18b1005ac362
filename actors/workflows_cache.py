"""Parsed workflows, kept per process and re-parsed only when a row changes."""

from __future__ import annotations

from typing import Any

import structlog

from actors.workflow import WorkflowSpec, parse_workflow
from config.errors import WorkflowValidationError

log = structlog.get_logger(__name__)

Parsed = WorkflowSpec | WorkflowValidationError
# workflow id -> (updated_at, spec or the validation error of a bad row)
_parsed: dict[Any, tuple[Any, Parsed]] = {}


def spec_for(row: dict[str, Any]) -> Parsed:
    """The parsed definition of a workflows row, re-parsed when updated_at moves."""
    cached = _parsed.get(row["id"])
    if cached is not None and cached[0] == row["updated_at"]:
        return cached[1]
    spec: Parsed
    try:
        spec = parse_workflow(row["definition"])
    except WorkflowValidationError as exc:
        log.warning("stored workflow is invalid", workflow_id=str(row["id"]), error=str(exc))
        spec = exc
    _parsed[row["id"]] = (row["updated_at"], spec)
    return spec
