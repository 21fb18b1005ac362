"""Per-tenant settings: a tenant's recipient rate limit, between the default and its workflows'."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from actors.rate_limits import RateLimit
from daemon.triggering import check_text

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
