"""Entity triggers: which captured events a workflow's trigger name covers.

Names from the systems Herald replaces work as written:
``job_created``, ``job_updated``, ``job_deleted``, ``job_status_changed``
(any ``<entity>_<field>_changed``), ``job_completed`` (status became
completed) and the CRM form ``crm/appointment.created``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from config.errors import WorkflowValidationError

_OPERATIONS = {"created": "INSERT", "updated": "UPDATE", "deleted": "DELETE"}
_CRM = re.compile(r"^crm/(?P<entity>[a-z][a-z0-9_]*)\.(?P<op>created|updated|deleted)$")
_OPERATION = re.compile(r"^(?P<entity>[a-z][a-z0-9]*)_(?P<op>created|updated|deleted)$")
_FIELD_CHANGED = re.compile(r"^(?P<entity>[a-z][a-z0-9]*)_(?P<field>[a-z][a-z0-9_]*)_changed$")
# Status shortcuts: <entity>_<status> means "status changed to <status>".
_STATUS_SHORTCUTS = {"completed", "cancelled", "scheduled"}
_STATUS = re.compile(r"^(?P<entity>[a-z][a-z0-9]*)_(?P<status>[a-z_]+)$")


@dataclass(frozen=True)
class Trigger:
    """A parsed trigger name: the entity it watches and what must have happened."""

    name: str
    entity: str
    operation: str  # INSERT, UPDATE or DELETE
    field: str | None = None  # for "<field> changed"
    to_value: str | None = None  # for "<field> changed to <value>"

    def explain(self, event: dict[str, Any]) -> str | None:
        """Why ``event`` does not fire this trigger, or None when it does."""
        if event["entity"] != self.entity:
            return f"trigger {self.name} watches {self.entity} events, not {event['entity']}"
        if event["operation"] != self.operation:
            return f"trigger {self.name} needs a {self.operation}, the event is a {event['operation']}"
        if self.field is None:
            return None
        old = event.get("old") or {}
        new = event.get("new") or {}
        if self.field not in new:
            return f"trigger {self.name}: the {self.entity} has no field {self.field!r}"
        if old.get(self.field) == new.get(self.field):
            return f"trigger {self.name}: {self.field} did not change"
        if self.to_value is not None and new.get(self.field) != self.to_value:
            return (
                f"trigger {self.name}: {self.field} changed to {new.get(self.field)!r},"
                f" not {self.to_value!r}"
            )
        return None


def parse_trigger(name: Any, field: str = "trigger", config: Any = None) -> Trigger:
    """Parse a trigger name (and its ``trigger_config``, for triggers that take one);
    raise :class:`WorkflowValidationError` if either is invalid."""
    if not isinstance(name, str) or not name:
        raise WorkflowValidationError(field, "must be a non-empty string")
    if config is not None:
        raise WorkflowValidationError("trigger_config", f"trigger {name!r} takes no configuration")
    for pattern in (_CRM, _OPERATION):
        match = pattern.match(name)
        if match:
            return Trigger(name, match["entity"], _OPERATIONS[match["op"]])
    match = _FIELD_CHANGED.match(name)
    if match:
        return Trigger(name, match["entity"], "UPDATE", field=match["field"])
    match = _STATUS.match(name)
    if match and match["status"] in _STATUS_SHORTCUTS:
        return Trigger(name, match["entity"], "UPDATE", field="status", to_value=match["status"])
    raise WorkflowValidationError(
        field,
        f"unknown trigger {name!r}; expected <entity>_created|updated|deleted, "
        "<entity>_<field>_changed, <entity>_completed|cancelled|scheduled "
        "or crm/<entity>.created|updated|deleted",
    )
