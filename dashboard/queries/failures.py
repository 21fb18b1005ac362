"""Failed runs grouped by what went wrong, retry previews and retries, for the
failures page.

A group is one workflow, the step that failed (its key and action) and the
error with everything that names one record replaced by placeholders
(:func:`normalise_error`), so "client 17 has no email" and "client 23 has no
email" are one problem to fix once. Retries go through daemon.retries, exactly
as `herald retry` does; every query filters on the viewer's tenant scope.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from daemon.retries import FAILED_RUNS, RetryRefused, refusal, retry_one

# -- the error normaliser ----------------------------------------------------------

_QUOTED = re.compile(r"""'[^'\n]{0,200}'|"[^"\n]{0,200}"|“[^”\n]{0,200}”|‘[^’\n]{0,200}’|`[^`\n]{0,200}`""")
_EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"\bhttps?://[^\s,;)]+", re.IGNORECASE)
_TIME = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE)
# A phone number: an optional +, then at least 7 digits with spaces, dots, dashes or brackets between.
_PHONE = re.compile(r"(?<![\w<])\+?\(?\d[\d\s().-]{5,}\d(?![\w>])")
# Long hex or mixed letter-and-digit tokens: provider message ids, hashes, keys.
_HEX_ID = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.IGNORECASE)
_TOKEN_ID = re.compile(r"\b(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{16,}\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SPACES = re.compile(r"\s+")

MAX_ERROR_CHARS = 500


def _phone(match: re.Match[str]) -> str:
    """A run of digits and separators is a phone number when it has 7 to 15 digits."""
    digits = sum(char.isdigit() for char in match.group())
    return "<phone>" if 7 <= digits <= 15 else match.group()


def normalise_error(error: str | None) -> str:
    """The error with what names one record replaced: quoted values, e-mail
    addresses, URLs, uuids, times, phone numbers, ids and numbers become ``<value>``,
    ``<email>``, ``<url>``, ``<uuid>``, ``<time>``, ``<phone>``, ``<id>`` and ``<n>``."""
    text = _SPACES.sub(" ", (error or "").strip())[:MAX_ERROR_CHARS]
    if not text:
        return "(no error recorded)"
    text = _QUOTED.sub("<value>", text)
    text = _EMAIL.sub("<email>", text)
    text = _URL.sub("<url>", text)
    text = _UUID.sub("<uuid>", text)
    text = _TIME.sub("<time>", text)
    text = _PHONE.sub(_phone, text)
    text = _HEX_ID.sub("<id>", text)
    text = _TOKEN_ID.sub("<id>", text)
    text = _NUMBER.sub("<n>", text)
    return text


# -- grouping ----------------------------------------------------------------------

WINDOWS: dict[str, dt.timedelta | None] = {
    "24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7), "30d": dt.timedelta(days=30), "all": None,
}
WINDOW_LABELS = {"24h": "last 24 hours", "7d": "last 7 days", "30d": "last 30 days", "all": "all time"}
DEFAULT_WINDOW = "7d"

# Failed runs looked at to make the groups: the most recent ones. A flood beyond
# this is said on the page rather than making the page slow.
MAX_SCANNED = 5000

# The failing step: the first that failed or was parked (a run stops at it).
FAILED = """
SELECT r.id, r.tenant_id, r.workflow_id, herald.clip(w.name, 200) AS workflow_name,
       coalesce(r.completed_at, r.updated_at) AS failed_at,
       f.step_key, f.action, f.status AS step_status,
       herald.clip(coalesce(f.error, r.error), 500) AS error
FROM herald.runs r
JOIN herald.workflows w ON w.id = r.workflow_id
LEFT JOIN LATERAL (
    SELECT s.step_key, s.action, s.status, s.error FROM herald.steps s
    WHERE s.run_id = r.id AND s.status IN ('failed', 'unknown') ORDER BY s.position LIMIT 1
) f ON true
WHERE r.status = 'failed'
  AND ($1::text[] IS NULL OR r.tenant_id = ANY($1))
  AND ($2::timestamptz IS NULL OR coalesce(r.completed_at, r.updated_at) >= $2)
  AND ($3::uuid IS NULL OR r.workflow_id = $3)
ORDER BY coalesce(r.completed_at, r.updated_at) DESC, r.id DESC
LIMIT $4
"""

WORKFLOWS_WITH_FAILURES = """
SELECT DISTINCT w.id, herald.clip(w.name, 200) AS name, w.tenant_id
FROM herald.runs r JOIN herald.workflows w ON w.id = r.workflow_id
WHERE r.status = 'failed' AND ($1::text[] IS NULL OR r.tenant_id = ANY($1))
ORDER BY name, w.tenant_id
LIMIT 200
"""


@dataclass
class Group:
    """Failed runs of one workflow that failed at the same step with the same error."""

    key: str
    tenant_id: str
    workflow_id: str
    workflow_name: str
    step_key: str | None
    action: str | None
    error: str  # normalised
    sample_error: str  # the most recent one as it was
    run_ids: list[int] = field(default_factory=list)  # most recent first
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None
    parked: int = 0  # runs whose failing step is parked (outcome unknown)

    @property
    def count(self) -> int:
        return len(self.run_ids)

    @property
    def sample_run(self) -> int:
        return self.run_ids[0]


def group_key(workflow_id: str, step_key: str | None, action: str | None, error: str) -> str:
    """A short stable name for a group, for its page's address."""
    text = "\x1f".join((str(workflow_id), step_key or "", action or "", error))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def since(window: str, now: dt.datetime | None = None) -> dt.datetime | None:
    span = WINDOWS[window]
    return None if span is None else (now or dt.datetime.now(dt.UTC)) - span


async def failure_groups(conn: asyncpg.Connection, scope: list[str] | None, *, window: str,
                         workflow_id: str | None = None) -> tuple[list[Group], bool]:
    """The groups of failed runs in scope, the largest first; and whether the
    scan stopped at MAX_SCANNED runs."""
    rows = await conn.fetch(FAILED, scope, since(window), workflow_id, MAX_SCANNED + 1)
    cut = len(rows) > MAX_SCANNED
    groups: dict[str, Group] = {}
    for row in rows[:MAX_SCANNED]:
        error = normalise_error(row["error"])
        key = group_key(row["workflow_id"], row["step_key"], row["action"], error)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(key, row["tenant_id"], str(row["workflow_id"]), row["workflow_name"],
                                        row["step_key"], row["action"], error, row["error"] or "")
        group.run_ids.append(row["id"])
        group.parked += row["step_status"] == "unknown"
        when = row["failed_at"]
        group.first_seen = when if group.first_seen is None else min(group.first_seen, when)
        group.last_seen = when if group.last_seen is None else max(group.last_seen, when)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, -(g.last_seen.timestamp() if g.last_seen else 0)))
    return ordered, cut


async def find_group(conn: asyncpg.Connection, scope: list[str] | None, key: str, *,
                     window: str) -> Group | None:
    groups, _ = await failure_groups(conn, scope, window=window)
    return next((group for group in groups if group.key == key), None)


async def failed_runs_of(conn: asyncpg.Connection, run_ids: list[int]) -> list[dict[str, Any]]:
    """The runs of a group as its page lists them."""
    rows = await conn.fetch(
        """
        SELECT r.id, r.tenant_id, herald.clip(r.error, 500) AS error, coalesce(r.completed_at, r.updated_at)
               AS failed_at, r.retry_count, e.entity, herald.clip(e.row_id, 100) AS row_id
        FROM herald.runs r JOIN herald.events e ON e.id = r.event_id
        WHERE r.id = ANY($1::bigint[]) ORDER BY coalesce(r.completed_at, r.updated_at) DESC, r.id DESC
        """, run_ids)
    return [dict(row) for row in rows]


async def workflows_with_failures(conn: asyncpg.Connection, scope: list[str] | None) -> list[dict[str, Any]]:
    return [dict(row) for row in await conn.fetch(WORKFLOWS_WITH_FAILURES, scope)]


# -- retry preview and retry --------------------------------------------------------

# Runs one retry may take: a larger group is retried in several goes.
MAX_RETRY_RUNS = 500

IN_SCOPE_FAILED = """
SELECT id, tenant_id FROM herald.runs
WHERE id = ANY($1::bigint[]) AND status = 'failed' AND ($2::text[] IS NULL OR tenant_id = ANY($2))
ORDER BY id
"""


def for_people(text: str) -> str:
    """daemon.retries speaks to the command line; the page has a checkbox instead."""
    return (text.replace("or --force if", "or tick “retry anyway” if").replace("--force", "“retry anyway”")
            .replace(" (--as-run)", ""))


@dataclass
class Preview:
    """What retrying these runs would do (the same numbers as `herald retry --dry-run`)."""

    runs: list[int] = field(default_factory=list)         # would be retried
    messages_to_resend: int = 0                           # steps sent again (failed, skipped, unknown)
    already_delivered: int = 0                            # steps sent before: kept, never resent
    refused: dict[int, str] = field(default_factory=dict)  # run -> why, unless "retry anyway"
    refused_to_resend: int = 0
    refused_delivered: int = 0
    gone: list[int] = field(default_factory=list)         # not failed any more, or not to be seen

    @property
    def all_runs(self) -> list[int]:
        return sorted([*self.runs, *self.refused])


async def preview_retry(conn: asyncpg.Connection, scope: list[str] | None, run_ids: list[int],
                        *, force: bool = False) -> Preview:
    """What retrying ``run_ids`` would do for a viewer of ``scope`` (nothing changes)."""
    preview = Preview()
    wanted = sorted(set(run_ids))[:MAX_RETRY_RUNS]
    found = await conn.fetch(IN_SCOPE_FAILED, wanted, scope)
    seen = {row["id"] for row in found}
    preview.gone = [run_id for run_id in wanted if run_id not in seen]
    for run in found:
        row = await conn.fetchrow(FAILED_RUNS, run["tenant_id"], None, None, None, None, run["id"])
        if row is None:
            preview.gone.append(run["id"])
            continue
        why = refusal(row, as_run=False, force=force)
        if why is not None:
            preview.refused[run["id"]] = for_people(why)
            preview.refused_to_resend += row["to_resend"]
            preview.refused_delivered += row["delivered"]
            continue
        preview.runs.append(run["id"])
        preview.messages_to_resend += row["to_resend"]
        preview.already_delivered += row["delivered"]
    return preview


@dataclass
class RetryOutcome:
    retried: list[int] = field(default_factory=list)
    steps_reset: int = 0
    steps_kept: int = 0
    refused: dict[int, str] = field(default_factory=dict)
    not_retried: dict[int, str] = field(default_factory=dict)
    tenants: set[str] = field(default_factory=set)
    to_send: list[tuple[str, int]] = field(default_factory=list)  # (queue, step id)


async def retry_runs(conn: asyncpg.Connection, scope: list[str] | None, run_ids: list[int], *, who: str,
                     reason: str, force: bool, send_step: Callable[[str, int], object] | None = None,
                     ) -> RetryOutcome:
    """Retry each of ``run_ids`` that is still failed and in ``scope`` (daemon.retries.retry_one,
    with the workflow's current version). A run outside the scope is not touched, and is
    reported exactly like one that does not exist. The steps to send are collected in
    ``to_send`` (and handed to ``send_step`` when given)."""
    outcome = RetryOutcome()
    wanted = sorted(set(run_ids))[:MAX_RETRY_RUNS]
    found = {row["id"]: row["tenant_id"] for row in await conn.fetch(IN_SCOPE_FAILED, wanted, scope)}

    def collect(queue: str, step_id: int) -> None:
        outcome.to_send.append((queue, step_id))
        if send_step is not None:
            send_step(queue, step_id)

    for run_id in wanted:
        tenant = found.get(run_id)
        if tenant is None:
            outcome.not_retried[run_id] = "not failed any more, or not found"
            continue
        try:
            done = await retry_one(conn, run_id, requested_by=who, reason=reason, send_step=collect,
                                   tenant_id=tenant, force=force)
        except RetryRefused as exc:
            outcome.refused[run_id] = for_people(str(exc))
            continue
        if done is None:
            outcome.not_retried[run_id] = "not failed any more (retried by someone else meanwhile?)"
            continue
        outcome.retried.append(run_id)
        outcome.steps_reset += done.steps_reset
        outcome.steps_kept += done.steps_kept
        outcome.tenants.add(tenant)
    return outcome
