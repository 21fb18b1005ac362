"""Reading query parameters and form fields: a clear 400 naming the parameter."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number") from None
    if not 1 <= value <= maximum:
        raise web.HTTPBadRequest(text=f"{name} must be between 1 and {maximum}")
    return value


def choice_param(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.query.get(name) or None
    if value is not None and value not in choices:
        raise web.HTTPBadRequest(text=f"{name} must be one of {', '.join(choices)}")
    return value


# Ids in Herald's tables are PostgreSQL bigints: a larger number is no row.
MAX_ID = 2**63 - 1


def parse_id(raw: str | None) -> int | None:
    """A row id as a person or a link wrote it; None when it is not one (empty,
    not all digits, 0, or beyond a bigint)."""
    if not raw or not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    value = int(raw)
    return value if 1 <= value <= MAX_ID else None


def reason_field(form: Any, max_chars: int) -> str:
    """The required ``reason`` of a write (it goes to the audit log), on one line."""
    value = form.get("reason")
    text = " ".join(value.split()) if isinstance(value, str) else ""
    if not text:
        raise web.HTTPBadRequest(text="Give a reason: it is recorded with what you do.")
    if len(text) > max_chars:
        raise web.HTTPBadRequest(text=f"The reason must be at most {max_chars} characters.")
    return text
