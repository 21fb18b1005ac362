"""The actions a workflow step can take, registered in one place.

An action is a validator for its step configuration and a renderer that turns
the configuration and the run's context into the message a provider sends.
The actor that carries it out is named after the channel (``email``, ``sms``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.templates import render
from config.errors import StepError, WorkflowValidationError


@dataclass(frozen=True)
class Action:
    """A kind of step: which config keys it needs and how to render them."""

    name: str
    channel: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def validate(self, config: dict[str, Any], field: str) -> None:
        for key in self.required:
            value = config.get(key)
            if not isinstance(value, str) or not value.strip():
                raise WorkflowValidationError(f"{field}.{key}", f"{self.name} needs a non-empty {key}")
        for key in self.optional:
            if key in config and not isinstance(config[key], str):
                raise WorkflowValidationError(f"{field}.{key}", "must be a string")

    def render(self, config: dict[str, Any], context: dict[str, Any]) -> dict[str, str]:
        """The message to send: recipient, body and (email) subject, rendered."""
        rendered = {
            key: render(config[key], context, field=key)
            for key in (*self.required, *self.optional)
            if key in config
        }
        rendered["recipient"] = rendered["recipient"].strip()
        if not rendered["recipient"]:
            raise StepError(f"recipient: {config['recipient']} is empty for this record")
        return rendered


ACTIONS: dict[str, Action] = {
    action.name: action
    for action in (
        Action("email", "email", required=("recipient", "subject", "message")),
        Action("sms", "sms", required=("recipient", "message")),
    )
}


def get_action(name: Any, field: str) -> Action:
    if name not in ACTIONS:
        known = ", ".join(sorted(ACTIONS))
        raise WorkflowValidationError(field, f"unknown action {name!r} (known: {known})")
    return ACTIONS[name]

