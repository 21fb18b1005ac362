"""Reading JSON a person typed or uploaded: where in their text a field is, so
an error can name its line and column and show the lines around it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass
class FieldError:
    """What is wrong with what was submitted: the field at fault (a path into the
    document, like ``steps[1].config.subject``), the message, and where in the
    submitted text it is (line and column, when known)."""

    field: str
    message: str
    line: int | None = None
    column: int | None = None
    excerpt: str | None = None


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path_parts(field: str) -> list[str | int] | None:
    parts: list[str | int] = []
    position = 0
    for match in _PATH_PART.finditer(field):
        if match.start() != position and field[position:match.start()] != ".":
            return None
        parts.append(int(match.group(2)) if match.group(2) is not None else match.group(1))
        position = match.end()
    return parts if parts and position == len(field) else None


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def field_offset(text: str, field: str) -> int | None:
    """Where in the JSON ``text`` the value at ``field`` starts (the deepest part of the
    path found); None when the text is no JSON or the path names nothing in it."""
    parts = _path_parts(field)
    if parts is None:
        return None
    decoder = json.JSONDecoder()
    found: int | None = None
    at = _skip_space(text, 0)
    try:
        for part in parts:
            if isinstance(part, str) and text.startswith("{", at):
                at = _skip_space(text, at + 1)
                while True:
                    if text.startswith("}", at):
                        return found
                    key, at = decoder.raw_decode(text, at)
                    at = _skip_space(text, at)
                    if not text.startswith(":", at):
                        return found
                    value_at = _skip_space(text, at + 1)
                    if key == part:
                        found = at = value_at
                        break
                    _, at = decoder.raw_decode(text, value_at)
                    at = _skip_space(text, at)
                    at = _skip_space(text, at + 1) if text.startswith(",", at) else at
            elif isinstance(part, int) and text.startswith("[", at):
                at = _skip_space(text, at + 1)
                for _ in range(part):
                    _, at = decoder.raw_decode(text, at)
                    at = _skip_space(text, at)
                    if not text.startswith(",", at):
                        return found
                    at = _skip_space(text, at + 1)
                if text.startswith("]", at):
                    return found
                found = at
            else:
                return found
    except (ValueError, RecursionError):
        return found
    return found


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _excerpt(text: str, line: int, around: int = 2) -> str:
    lines = text.split("\n")
    first, last = max(1, line - around), min(len(lines), line + around)
    width = len(str(last))
    return "\n".join(f"{'>' if n == line else ' '} {n:>{width}} | {lines[n - 1][:300]}"
                     for n in range(first, last + 1))


def located(text: str, field: str, message: str) -> FieldError:
    """The error, with where ``field`` is in ``text`` when it can be found."""
    offset = field_offset(text, field)
    if offset is None:
        return FieldError(field, message)
    line, column = _line_column(text, offset)
    return FieldError(field, message, line, column, _excerpt(text, line))


def parse_json_text(text: str, what: str) -> tuple[Any, FieldError | None]:
    """The JSON value of ``text``, or the syntax error with its line and column."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, FieldError(what, f"not valid JSON: {exc.msg}", exc.lineno, exc.colno,
                                _excerpt(text, exc.lineno))
    except RecursionError:
        return None, FieldError(what, "nested too deeply")
