"""Rendering message templates safely.

Templates are Jinja2 in its sandboxed environment with strict undefined
variables: a template that names a variable the context lacks fails its step
with the variable's name, never sends a blank. The field-service templates
use camelCase (``{{client.firstName}}``) over snake_case columns
(``first_name``); :class:`Record` resolves one to the other.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import missing

# Re-exported: records and workflow checks map camelCase keys with the same function.
from actors.naming import camel_to_snake as camel_to_snake
from config.errors import TemplateRenderError


class Record(dict[str, Any]):
    """A row as a template sees it: ``firstName`` finds a ``first_name`` column.

    ``path`` is where it sits in the context (``client``), so an error can name
    the whole variable (``client.lastName``).
    """

    path = ""

    def __missing__(self, key: str) -> Any:
        if isinstance(key, str):
            snake = camel_to_snake(key)
            if snake != key and dict.__contains__(self, snake):
                return self[snake]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        return isinstance(key, str) and dict.__contains__(self, camel_to_snake(key))


def as_records(value: Any, path: str = "") -> Any:
    """Wrap every mapping in ``value`` (recursively) as a :class:`Record`."""
    if isinstance(value, dict):
        record = Record(
            {key: as_records(item, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
        )
        record.path = path
        return record
    if isinstance(value, list):
        return [as_records(item, path) for item in value]
    return value


class _Undefined(StrictUndefined):
    """Names the whole missing variable, e.g. ``client.lastName``."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        owner = self._undefined_obj
        name = self._undefined_name
        if owner is missing:
            return f"{name} is undefined"
        if isinstance(owner, Record) and owner.path:
            return f"{owner.path}.{name} is undefined"
        return f"{type(owner).__name__} value has no attribute {name!r}"


def _parse_datetime(value: Any) -> dt.datetime | dt.date:
    if isinstance(value, (dt.datetime, dt.date)):
        return value
    text = str(value)
    try:
        return dt.datetime.fromisoformat(text) if "T" in text or " " in text else dt.date.fromisoformat(text)
    except ValueError:
        raise TemplateRenderError(f"date filter: {text!r} is not an ISO date or timestamp") from None


def date_filter(value: Any, fmt: str = "%b %-d, %Y") -> str:
    """``{{ job.scheduled_at | date("%A %-d %B at %H:%M") }}`` (strftime format)."""
    if value is None or value == "":
        return ""
    return _parse_datetime(value).strftime(fmt)


_CURRENCY_SYMBOLS = {"USD": "$", "CAD": "$", "AUD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


def money_filter(value: Any, currency: str = "USD", cents: bool = False) -> str:
    """``{{ invoice.amount_cents | money("USD", cents=True) }}`` -> ``$1,450.00``."""
    if value is None or value == "":
        return ""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise TemplateRenderError(f"money filter: {value!r} is not a number") from None
    if cents:
        amount = amount / 100
    symbol = _CURRENCY_SYMBOLS.get(currency.upper())
    text = f"{abs(amount):,.2f}"
    sign = "-" if amount < 0 else ""
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency.upper()}"


def _environment(*, html: bool) -> SandboxedEnvironment:
    environment = SandboxedEnvironment(
        undefined=_Undefined,
        # A NULL column renders empty, never as the word "None".
        finalize=lambda value: "" if value is None else value,
        autoescape=html,
        keep_trailing_newline=True,
    )
    environment.filters["date"] = date_filter
    environment.filters["money"] = money_filter
    return environment


_TEXT = _environment(html=False)
_HTML = _environment(html=True)  # HTML email: every value is escaped


@lru_cache(maxsize=4096)
def _compile(source: str, html: bool) -> Any:
    return (_HTML if html else _TEXT).from_string(source)


_SINGLE_BRACE = re.compile(r"(?<!\{)\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\}(?!\})")


def from_single_braces(text: str) -> str:
    """The CRM rules' ``{appointment.patientId}`` as a template: ``{{appointment.patientId}}``.

    Text that already uses double braces is left as it is.
    """
    if "{{" in text or "{%" in text:
        return text
    return _SINGLE_BRACE.sub(r"{{\1}}", text)


def render(source: str, context: dict[str, Any], *, field: str, html: bool = False) -> str:
    """Render one template string; ``field`` names it in any error."""
    try:
        template = _compile(source, html)
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(f"{field}: template syntax error on line {exc.lineno}: {exc.message}") from None
    try:
        return str(template.render(context))
    except SecurityError as exc:
        raise TemplateRenderError(f"{field}: template refused for security: {exc}") from None
    except UndefinedError as exc:
        raise TemplateRenderError(f"{field}: undefined template variable: {exc.message}") from None
    except TemplateRenderError as exc:
        raise TemplateRenderError(f"{field}: {exc}") from None
    except Exception as exc:  # any other error inside the template's own expressions
        raise TemplateRenderError(f"{field}: template failed: {exc}") from None


def referenced_fields(source: str) -> set[tuple[str, str]]:
    """The ``name.attribute`` pairs a template reads, e.g. {("client", "firstName")}."""
    try:
        tree = _TEXT.parse(source)
    except TemplateSyntaxError:
        return set()
    return {
        (node.node.name, node.attr)
        for node in tree.find_all(nodes.Getattr)
        if isinstance(node.node, nodes.Name)
    }
