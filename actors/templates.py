"""Rendering message templates safely.

Templates are Jinja2 in its sandboxed environment with strict undefined
variables: a template that names a variable the context lacks fails its step
with the variable's name, never sends a blank. The field-service templates
use camelCase (``{{client.firstName}}``) over snake_case columns
(``first_name``); :class:`Record` resolves one to the other.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import missing

from config.errors import TemplateRenderError

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])([A-Z])")


def camel_to_snake(name: str) -> str:
    return _CAMEL_BOUNDARY.sub(r"_\1", name).lower()


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


_environment = SandboxedEnvironment(
    undefined=_Undefined,
    # A NULL column renders empty, never as the word "None".
    finalize=lambda value: "" if value is None else value,
    autoescape=False,
    keep_trailing_newline=True,
)


@lru_cache(maxsize=2048)
def _compile(source: str) -> Any:
    return _environment.from_string(source)


def render(source: str, context: dict[str, Any], *, field: str) -> str:
    """Render one template string; ``field`` names it in any error."""
    try:
        template = _compile(source)
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(f"{field}: template syntax error on line {exc.lineno}: {exc.message}") from None
    try:
        return str(template.render(context))
    except SecurityError as exc:
        raise TemplateRenderError(f"{field}: template refused for security: {exc}") from None
    except UndefinedError as exc:
        raise TemplateRenderError(f"{field}: undefined template variable: {exc.message}") from None
    except Exception as exc:  # any other error inside the template's own expressions
        raise TemplateRenderError(f"{field}: template failed: {exc}") from None
