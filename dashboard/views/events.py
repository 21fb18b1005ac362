"""Events: every change Herald captured, with each workflow's verdict ("why
didn't it fire?"); the list (page and /api/events) and one event's page."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp_jinja2
from aiohttp import web

from dashboard.auth import scope, viewer
from dashboard.params import choice_param, int_param, parse_id
from dashboard.queries import events as queries
from dashboard.resources import POOL

routes = web.RouteTableDef()

MAX_LIMIT = 200
MAX_TEXT = 200  # entity, record id and type filters
STATE_LABELS = {"matched": "matched", "no_match": "no match", "failed": "failed", "pending": "pending"}


def _text_param(request: web.Request, name: str) -> str | None:
    value = (request.query.get(name) or "").strip() or None
    if value is not None and len(value) > MAX_TEXT:
        raise web.HTTPBadRequest(text=f"{name} must be at most {MAX_TEXT} characters")
    return value


def _event_id(raw: str, name: str) -> int:
    value = parse_id(raw)
    if value is None:
        raise web.HTTPBadRequest(text=f"{name} must be an event id (a whole number)")
    return value


def record_url(event: dict[str, Any]) -> str | None:
    """The record's timeline page, when the event names a record (whole, not cut for a list)."""
    row_id = event["row_id"]
    if row_id is None or len(row_id) > queries.MAX_ROW_ID_CHARS:
        return None
    return f"/records/{quote(event['entity'], safe='')}/{quote(row_id, safe='')}"


def _filters(request: web.Request) -> dict[str, Any]:
    before = request.query.get("before") or None
    return {
        "scope": scope(request),
        "state": choice_param(request, "state", queries.EVENT_STATES),
        "entity": _text_param(request, "entity"),
        "row_id": _text_param(request, "record"),
        "type": _text_param(request, "type"),
        "before": None if before is None else _event_id(before, "before"),
        "limit": int_param(request, "limit", 50, MAX_LIMIT),
    }


async def _page(request: web.Request) -> tuple[dict[str, Any], list[dict[str, Any]], int | None]:
    filters = _filters(request)
    limit = filters["limit"]
    found = await queries.recent_events(request.app[POOL], **{**filters, "limit": limit + 1})
    more = len(found) > limit
    found = found[:limit]
    for event in found:
        event["record_url"] = record_url(event)
    return filters, found, found[-1]["id"] if more and found else None


@routes.get("/api/events", name="api_events")
async def api_events(request: web.Request) -> web.Response:
    """Events, newest first; ``next_before`` is the ``before`` of the next page (None: no more)."""
    _, found, next_before = await _page(request)
    return web.json_response({"events": found, "next_before": next_before})


@routes.get("/events", name="events")
@aiohttp_jinja2.template("events.html")
async def events_page(request: web.Request) -> dict[str, Any]:
    filters, found, next_before = await _page(request)
    kept = {key: request.query[key] for key in ("tenant", "state", "entity", "record", "type", "limit")
            if request.query.get(key)}
    return {
        "events": found,
        "filters": {"state": filters["state"], "entity": filters["entity"] or "",
                    "record": filters["row_id"] or "", "type": filters["type"] or "",
                    "tenant": request.query.get("tenant") or ""},
        "states": STATE_LABELS,
        "next_url": None if next_before is None else "/events?" + urlencode({**kept, "before": next_before}),
        "first_url": "/events?" + urlencode(kept) if filters["before"] is not None else None,
        "many_tenants": viewer(request).scope is None or len(viewer(request).scope or ()) > 1,
    }


async def _event(request: web.Request) -> dict[str, Any]:
    event_id = parse_id(request.match_info["id"])
    if event_id is None:
        raise web.HTTPNotFound()
    # The viewer's whole scope, not ?tenant=: a link to one event works whichever tenant is chosen.
    event = await queries.one_event(request.app[POOL], scope=viewer(request).scope, event_id=event_id)
    if event is None:
        raise web.HTTPNotFound(text="No such event (or not of a tenant you see).")
    event["record_url"] = record_url(event)
    return event


def _changes(old: Any, new: Any) -> list[dict[str, Any]]:
    """Each column of the row: old and new value as JSON text, and whether it changed
    (changed columns first)."""
    old_row = old if isinstance(old, dict) else {}
    new_row = new if isinstance(new, dict) else {}
    columns = list(new_row) + [key for key in old_row if key not in new_row]

    def shown(row: dict[str, Any], key: str) -> str | None:
        return json.dumps(row[key], ensure_ascii=False, indent=1) if key in row else None

    rows = [{"column": key, "old": shown(old_row, key), "new": shown(new_row, key),
             "changed": old is not None and new is not None and old_row.get(key) != new_row.get(key)}
            for key in columns]
    return sorted(rows, key=lambda row: not row["changed"])  # what changed first, then the rest in order


@routes.get(r"/api/events/{id}", name="api_event")
async def api_event(request: web.Request) -> web.Response:
    return web.json_response({"event": await _event(request)})


@routes.get(r"/events/{id}", name="event")
@aiohttp_jinja2.template("event.html")
async def event_page(request: web.Request) -> dict[str, Any]:
    event = await _event(request)
    return {"event": event, "changes": _changes(event["old"], event["new"]), "states": STATE_LABELS,
            "many_tenants": viewer(request).scope is None or len(viewer(request).scope or ()) > 1}
