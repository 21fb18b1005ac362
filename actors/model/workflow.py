"""The workflow model: a definition parsed and validated once, evaluated per event.

Two document formats are read as written:

* field-service (``trigger_type``, ``trigger_conditions``, ``steps`` whose
  ``config.actionType`` names the action);
* CRM rules (``trigger``, ``condition``, ``actions`` with ``type`` and ``args``).

Steps run one after another. In either format a step may say
``"with_previous": true``: it starts together with the step before it, and
the step after the group starts once every step of the group has finished
(see :func:`stages`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError

from actors.model.actions import get_spec
from actors.model.conditions import Condition, parse_condition
from actors.model.dedupe import DedupePolicy
from actors.model.limits import (
    TEMPLATE_MAX_SOURCE,
    WORKFLOW_MAX_BYTES,
    WORKFLOW_MAX_JSON_DEPTH,
    WORKFLOW_MAX_STEPS,
)
from actors.model.rate_limits import RateLimit
from actors.model.retry_policy import RetryPolicy
from actors.model.templates import check_syntax, from_single_braces
from actors.model.triggers import Trigger, parse_trigger
from config.errors import WorkflowValidationError


@dataclass(frozen=True)
class StepSpec:
    key: str
    action: str
    config: dict[str, Any]
    with_previous: bool = False  # starts together with the step before it


@dataclass(frozen=True)
class WorkflowSpec:
    """A validated workflow definition."""

    name: str
    source_id: str | None
    trigger: Trigger
    condition: Condition
    steps: tuple[StepSpec, ...]
    dedupe: DedupePolicy = DedupePolicy()


@dataclass(frozen=True)
class Verdict:
    matched: bool
    reason: str


def _require_str(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise WorkflowValidationError(key, "must be a non-empty string")
    return value


def parse_workflow(doc: Any) -> WorkflowSpec:
    """Validate a workflow document; errors name the field at fault.

    A workflow runs on workers every tenant shares, so its size is bounded
    too (:mod:`actors.model.limits`): the document, its steps, its conditions and
    each template.
    """
    if not isinstance(doc, dict):
        raise WorkflowValidationError("(document)", "a workflow must be a JSON object")
    too_deep = _check_size(doc)
    name = _require_str(doc, "name")
    source_id = doc.get("id")
    if source_id is not None and not isinstance(source_id, str):
        raise WorkflowValidationError("id", "must be a string")
    if "trigger_type" in doc or "steps" in doc:
        trigger = parse_trigger(doc.get("trigger_type"), "trigger_type", doc.get("trigger_config"))
        condition = parse_condition(doc.get("trigger_conditions"), "trigger_conditions")
        _refuse_depth(too_deep)
        steps = _field_service_steps(doc.get("steps"))
    elif "trigger" in doc or "actions" in doc:
        trigger = parse_trigger(doc.get("trigger"), "trigger", doc.get("trigger_config"))
        condition = parse_condition(doc.get("condition"), "condition")
        _refuse_depth(too_deep)
        steps = _rule_actions(doc.get("actions"))
    else:
        raise WorkflowValidationError(
            "trigger_type", "missing: a workflow needs trigger_type and steps (or trigger and actions)"
        )
    RetryPolicy.from_config(doc.get("retry"))
    dedupe = DedupePolicy.from_config(doc.get("dedupe"))
    RateLimit(0, dt.timedelta(hours=1)).override(doc.get("rate_limit"))
    return WorkflowSpec(name, source_id, trigger, condition, steps, dedupe)


def _check_size(doc: dict[str, Any]) -> str | None:
    """Refuse a document over WORKFLOW_MAX_BYTES; return the top-level key under
    which it nests deeper than WORKFLOW_MAX_JSON_DEPTH, if it does (refused by
    :func:`_refuse_depth` once the conditions have had their say: too deep
    there, they name the exact place)."""
    try:
        size = len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode())
    except RecursionError:  # nested deeper than Python recurses: measured below, without recursion
        size = 0
    if size > WORKFLOW_MAX_BYTES:
        raise WorkflowValidationError(
            "(document)", f"the workflow is {size:,} bytes of JSON; at most {WORKFLOW_MAX_BYTES:,} are allowed")
    for key, value in doc.items():
        # Level by level, without recursion: any depth is measured without a RecursionError.
        level, depth = [value], 2
        while level := [item for container in level if isinstance(container, (dict, list))
                        for item in (container.values() if isinstance(container, dict) else container)]:
            depth += 1
            if depth > WORKFLOW_MAX_JSON_DEPTH + 1:
                return str(key)
    return None


def _refuse_depth(key: str | None) -> None:
    if key is not None:
        raise WorkflowValidationError(key, f"nested more than {WORKFLOW_MAX_JSON_DEPTH} levels deep")


def _check_count(raw: list[Any], field: str) -> None:
    if len(raw) > WORKFLOW_MAX_STEPS:
        raise WorkflowValidationError(
            field, f"{len(raw)} steps; a workflow may have at most {WORKFLOW_MAX_STEPS}")


def _check_templates(value: Any, field: str) -> None:
    """Every string of a step's configuration may be a template: at most TEMPLATE_MAX_SOURCE characters."""
    for path, source in template_strings(value, field):
        if len(source) > TEMPLATE_MAX_SOURCE:
            raise WorkflowValidationError(
                path, f"the template is {len(source):,} characters long; at most {TEMPLATE_MAX_SOURCE:,}")


def template_strings(value: Any, field: str) -> Iterator[tuple[str, str]]:
    """Every string of a step's configuration (each may be a template), with the field it is at."""
    if isinstance(value, str):
        yield field, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from template_strings(item, f"{field}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from template_strings(item, f"{field}[{i}]")


def _check_template_syntax(config: dict[str, Any], field: str) -> None:
    """Compile every template of a step as it will be rendered (single-brace CRM
    templates after conversion), so a syntax error is refused when the workflow is
    saved, naming the field and the line, instead of failing every run."""
    for path, source in template_strings(config, field):
        if "{" not in source:  # every Jinja construct starts with a brace: plain text
            continue
        try:
            check_syntax(source, path == f"{field}.html")  # an email's HTML part is autoescaped
        except TemplateSyntaxError as exc:
            raise WorkflowValidationError(
                path, f"template syntax error at line {exc.lineno}: {(exc.message or 'invalid').rstrip('.')}") from None
        except RecursionError:
            raise WorkflowValidationError(path, "template syntax error: nested too deeply") from None


def _field_service_steps(raw: Any) -> tuple[StepSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise WorkflowValidationError("steps", "must be a non-empty list")
    _check_count(raw, "steps")
    steps = []
    for i, step in enumerate(raw):
        field = f"steps[{i}]"
        if not isinstance(step, dict):
            raise WorkflowValidationError(field, "must be an object")
        step_type = step.get("type", "action")
        if step_type not in ("action", "delay"):
            raise WorkflowValidationError(f"{field}.type", f"unknown step type {step_type!r} (action or delay)")
        config = step.get("config")
        if not isinstance(config, dict):
            raise WorkflowValidationError(f"{field}.config", "must be an object")
        _check_templates(config, f"{field}.config")
        _check_template_syntax(config, f"{field}.config")
        action_name = "delay" if step_type == "delay" else config.get("actionType")
        action = get_spec(action_name, f"{field}.config.actionType")
        action.validate(config, f"{field}.config")
        key = step.get("id") or f"step-{i + 1}"
        steps.append(StepSpec(str(key), action.name, config, _with_previous(step, field)))
    _check_unique_keys(steps, "steps")
    _check_groups(steps, "steps")
    return tuple(steps)


def _rule_actions(raw: Any) -> tuple[StepSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise WorkflowValidationError("actions", "must be a non-empty list")
    _check_count(raw, "actions")
    steps = []
    for i, item in enumerate(raw):
        field = f"actions[{i}]"
        if not isinstance(item, dict):
            raise WorkflowValidationError(field, "must be an object")
        action = get_spec(item.get("type"), f"{field}.type")
        args = item.get("args", {})
        if not isinstance(args, dict):
            raise WorkflowValidationError(f"{field}.args", "must be an object")
        _check_templates(args, f"{field}.args")
        # The CRM rules write templates with single braces: {appointment.patientId}.
        args = _single_braces(args)
        _check_template_syntax(args, f"{field}.args")
        action.validate(args, f"{field}.args")
        steps.append(StepSpec(str(item.get("id") or f"action-{i + 1}"), action.name, args,
                              _with_previous(item, field)))
    _check_unique_keys(steps, "actions")
    _check_groups(steps, "actions")
    return tuple(steps)


def _with_previous(step: dict[str, Any], field: str) -> bool:
    value = step.get("with_previous", False)
    if not isinstance(value, bool):
        raise WorkflowValidationError(f"{field}.with_previous", "must be true or false")
    return value


def _check_groups(steps: list[StepSpec], field: str) -> None:
    """A group (steps joined by ``with_previous``) follows a step, and holds no delay:
    a delay holds back the steps after it, which in a group would start alongside it."""
    for i, step in enumerate(steps):
        if not step.with_previous:
            continue
        at = f"{field}[{i}].with_previous"
        if i == 0:
            raise WorkflowValidationError(at, "the first step has no step before it to start with")
        for member in (steps[i - 1], step):
            if member.action == "delay":
                raise WorkflowValidationError(
                    at, f"a delay ({member.key}) cannot start together with another step; "
                        "put the delay before or after the group")


def stages(steps: tuple[StepSpec, ...] | list[StepSpec]) -> list[int]:
    """Each step's stage (0, 1, ...): a step joined to the one before it
    (``with_previous``) shares its stage. A stage's steps start together; the
    next stage starts once all of them have finished (sent or skipped)."""
    found: list[int] = []
    stage = -1
    for step in steps:
        if not (found and step.with_previous):
            stage += 1  # a new stage, or the first
        found.append(stage)
    return found


def _single_braces(value: Any) -> Any:
    if isinstance(value, str):
        return from_single_braces(value)
    if isinstance(value, dict):
        return {key: _single_braces(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_single_braces(item) for item in value]
    return value


def _check_unique_keys(steps: list[StepSpec], field: str) -> None:
    seen: set[str] = set()
    for i, step in enumerate(steps):
        if step.key in seen:
            raise WorkflowValidationError(f"{field}[{i}].id", f"duplicate step id {step.key!r}")
        seen.add(step.key)


def event_context(event: dict[str, Any]) -> dict[str, Any]:
    """What conditions see: ``old``, ``new`` and the row under its entity name."""
    row = event.get("new") if event.get("new") is not None else event.get("old")
    return {
        "old": event.get("old") or {},
        "new": event.get("new") or {},
        event["entity"]: row or {},
        "event": {
            "id": event["id"],
            "type": event["type"],
            "operation": event["operation"],
            "entity": event["entity"],
            "row_id": event.get("row_id"),
            "tenant_id": event.get("tenant_id"),
        },
    }


def evaluate(spec: WorkflowSpec, event: dict[str, Any]) -> Verdict:
    """Does ``event`` run this workflow? The reason says why or why not."""
    refusal = spec.trigger.explain(event)
    if refusal is not None:
        return Verdict(False, refusal)
    outcome = spec.condition.evaluate(event_context(event))
    if not outcome.matched:
        return Verdict(False, f"condition failed: {outcome.reason}")
    return Verdict(True, f"trigger {spec.trigger.name}; {outcome.reason}")
