"""What each action's configuration is: its parameters and their checks.

The workflow model validates a step against these specs without anything that
carries an action out (providers, Dramatiq, the settings); the actions in
:mod:`actors.actions` are built on them and add ``execute``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from actors.model.durations import parse_duration
from actors.model.triggers import parse_trigger
from config.errors import WorkflowValidationError


@dataclass(frozen=True)
class Param:
    """One configuration key. ``aliases`` are other spellings the seeds use."""

    name: str
    kind: str = "template"  # a template string, an object of templates, a list, a number, a boolean
    required: bool = False
    aliases: tuple[str, ...] = ()

    def find(self, config: Mapping[str, Any]) -> tuple[str, Any] | None:
        for key in (self.name, *self.aliases):
            if key in config:
                return key, config[key]
        return None


class ActionSpec:
    """An action's name, the actor (and queue) that carries it out, whether it
    only writes to PostgreSQL (``atomic``), and its parameters."""

    name: ClassVar[str]
    actor: ClassVar[str]
    atomic: ClassVar[bool] = False
    params: ClassVar[tuple[Param, ...]] = ()

    def validate(self, config: Mapping[str, Any], field: str) -> None:
        """Check the configuration when the workflow is saved; errors name the key."""
        for param in self.params:
            found = param.find(config)
            if found is None:
                if param.required:
                    names = " or ".join((param.name, *param.aliases))
                    raise WorkflowValidationError(f"{field}.{param.name}", f"{self.name} needs {names}")
                continue
            key, value = found
            _check_kind(param.kind, value, f"{field}.{key}")
        self.check(config, field)

    def check(self, config: Mapping[str, Any], field: str) -> None:
        """Action-specific validation beyond the declared parameters."""


def _check_kind(kind: str, value: Any, field: str) -> None:
    ok = {
        "template": isinstance(value, str) and value.strip() != "",
        "object": isinstance(value, dict),
        "list": isinstance(value, list),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }[kind]
    if not ok:
        expected = {"template": "a non-empty string", "object": "an object", "list": "a list",
                    "number": "a number", "boolean": "true or false"}[kind]
        raise WorkflowValidationError(field, f"must be {expected}")


SPECS: dict[str, ActionSpec] = {}


def spec(spec_class: type[ActionSpec]) -> type[ActionSpec]:
    """Class decorator: an action workflows may name."""
    SPECS[spec_class.name] = spec_class()
    return spec_class


def get_spec(name: Any, field: str) -> ActionSpec:
    if name not in SPECS:
        known = ", ".join(sorted(SPECS))
        raise WorkflowValidationError(field, f"unknown action {name!r} (known: {known})")
    return SPECS[name]


# -- messages ---------------------------------------------------------------------

RECIPIENT = Param("recipient", required=True, aliases=("to",))
SUBJECT = Param("subject", required=True)
MESSAGE = Param("message", required=True, aliases=("body", "text"))
HTML = Param("html", aliases=("html_body",))


@spec
class EmailSpec(ActionSpec):
    """An email, plain text with an optional HTML part (autoescaped)."""

    name = "email"
    actor = "email"
    params = (RECIPIENT, SUBJECT, MESSAGE, HTML)


@spec
class SmsSpec(ActionSpec):
    """A text message."""

    name = "sms"
    actor = "sms"
    params = (RECIPIENT, MESSAGE)


# -- drafts: stored for a person to review, never sent ------------------------------

DRAFT_SUBJECT = Param("subject")
DRAFT_RECIPIENT = Param("recipient", aliases=("to",))


class _DraftSpec(ActionSpec):
    atomic = True
    actor = "records"


@spec
class DraftEmailSpec(_DraftSpec):
    name = "draft_email"
    params = (DRAFT_RECIPIENT, DRAFT_SUBJECT, MESSAGE)


@spec
class DraftSmsSpec(_DraftSpec):
    name = "draft_sms"
    params = (DRAFT_RECIPIENT, MESSAGE)


# -- webhook ----------------------------------------------------------------------

URL = Param("url", required=True)
PAYLOAD = Param("payload", kind="object")
# The receiver drops repeats of an Idempotency-Key: an attempt of unknown outcome may be sent again.
RECEIVER_DEDUPLICATES = Param("receiver_deduplicates", kind="boolean")


@spec
class WebhookSpec(ActionSpec):
    name = "webhook"
    actor = "webhook"
    params = (URL, PAYLOAD, RECEIVER_DEDUPLICATES)

    def check(self, config: Mapping[str, Any], field: str) -> None:
        url = str(config["url"])
        if "{{" not in url and urlsplit(url).scheme not in ("http", "https"):
            raise WorkflowValidationError(f"{field}.url", "must be an http or https URL")


# -- rows in the application's tables ---------------------------------------------

# Keys of a step's configuration that are not columns.
NOT_COLUMNS = frozenset({"actionType"})
FIELDS = Param("fields", kind="object", required=True)


class _CreateRowSpec(ActionSpec):
    atomic = True
    actor = "records"
    target_option: ClassVar[str]  # the `herald watch` option naming the table

    def check(self, config: Mapping[str, Any], field: str) -> None:
        if not [key for key in config if key not in NOT_COLUMNS]:
            raise WorkflowValidationError(field, f"{self.name} needs at least one column value")


@spec
class CreateTaskSpec(_CreateRowSpec):
    name = "create_task"
    target_option = "--tasks-table"


@spec
class CreateNoteSpec(_CreateRowSpec):
    name = "create_note"
    target_option = "--notes-table"


@spec
class UpdateRecordSpec(ActionSpec):
    """Change allowlisted columns of the row the event is about."""

    name = "update_record"
    actor = "records"
    atomic = True
    params = (FIELDS,)

    def check(self, config: Mapping[str, Any], field: str) -> None:
        if not config["fields"]:
            raise WorkflowValidationError(f"{field}.fields", "must name at least one column")


# -- waits ------------------------------------------------------------------------

DURATION = Param("duration")
UNTIL = Param("until")
OFFSET = Param("offset")
CANCEL_ON = Param("cancel_on", kind="list")
SECONDS = Param("seconds", kind="number", required=True)


class _DelaySpec(ActionSpec):
    actor = "records"
    atomic = True

    def check(self, config: Mapping[str, Any], field: str) -> None:
        for trigger in config.get("cancel_on", []):
            parse_trigger(trigger, f"{field}.cancel_on")


@spec
class DelaySpec(_DelaySpec):
    name = "delay"
    params = (DURATION, UNTIL, OFFSET, CANCEL_ON)

    def check(self, config: Mapping[str, Any], field: str) -> None:
        if ("duration" in config) == ("until" in config):
            raise WorkflowValidationError(field, "delay needs either duration or until")
        for key in ("duration", "offset"):
            if key in config:
                parse_duration(config[key], f"{field}.{key}")
        super().check(config, field)


@spec
class DelaySecondsSpec(_DelaySpec):
    """The CRM rules' ``delay_seconds`` with ``seconds``."""

    name = "delay_seconds"
    params = (SECONDS, CANCEL_ON)
