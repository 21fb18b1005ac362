"""Per-tenant settings: a tenant's recipient rate limit, between the default and its workflows'."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from actors.model.rate_limits import RateLimit
from daemon.triggering import check_text

GET_RATE_LIMIT = "SELECT rate_limit FROM herald.tenant_settings WHERE tenant_id = $1"
RESET_RATE_LIMIT = """
UPDATE herald.tenant_settings SET rate_limit = NULL, updated_at = now()
WHERE tenant_id = $1 AND rate_limit IS NOT NULL
"""
# A tenant Herald knows: it has workflows, or events, or settings of its own.
KNOWN_TENANT = """
SELECT EXISTS (SELECT 1 FROM herald.workflows WHERE tenant_id = $1)
    OR EXISTS (SELECT 1 FROM herald.tenant_settings WHERE tenant_id = $1)
    OR EXISTS (SELECT 1 FROM herald.events WHERE tenant_id = $1)
"""

SET_RATE_LIMIT = """
INSERT INTO herald.tenant_settings (tenant_id, rate_limit) VALUES ($1, $2)
ON CONFLICT (tenant_id) DO UPDATE SET rate_limit = EXCLUDED.rate_limit, updated_at = now()
"""


def check_rate_limit(rate_limit: dict[str, Any]) -> RateLimit:
    """The limit ``rate_limit`` sets (``per_recipient`` 0 to 1,000,000, a window of at most
    ten years, ``wait`` or ``skip``); raises WorkflowValidationError naming the bad setting."""
    return RateLimit(0, dt.timedelta(hours=1)).override(rate_limit, "rate_limit")


async def set_rate_limit(conn: asyncpg.Connection, tenant_id: str, rate_limit: dict[str, Any]) -> None:
    """Store a tenant's limit (``{"per_recipient": 10, "window": "1d", "over_limit": "skip"}``).

    Raises WorkflowValidationError naming the bad setting (nothing is stored).
    """
    check_text(tenant_id, "the tenant")
    check_rate_limit(rate_limit)
    await conn.execute(SET_RATE_LIMIT, tenant_id, rate_limit)


async def known_tenant(conn: asyncpg.Connection, tenant_id: str) -> bool:
    return bool(await conn.fetchval(KNOWN_TENANT, tenant_id))


async def get_rate_limit(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's own limit as stored, or None when the default applies."""
    return await conn.fetchval(GET_RATE_LIMIT, tenant_id)  # type: ignore[no-any-return]


async def reset_rate_limit(conn: asyncpg.Connection, tenant_id: str) -> bool:
    """Remove the tenant's own limit (the default applies again); False when it had none."""
    return await conn.execute(RESET_RATE_LIMIT, tenant_id) != "UPDATE 0"


def describe_limit(limit: RateLimit) -> str:
    """``at most 5 messages per channel per recipient per 1:00:00, then wait``; ``no limit``."""
    if limit.off:
        return "no limit on messages per recipient"
    noun = "message" if limit.per_recipient == 1 else "messages"
    return (f"at most {limit.per_recipient} {noun} per channel per recipient per {_window(limit.window)},"
            f" then {'skip the message' if limit.skip else 'wait for the window to allow it'}")


def _window(window: dt.timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
