"""Reading query parameters and form fields: a clear 400 naming the parameter."""

from __future__ import annotations

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
