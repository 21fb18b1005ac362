"""Which tenants exist: those with workflows, settings, events or users."""

from __future__ import annotations

import asyncpg

KNOWN_TENANTS = """
SELECT tenant_id FROM herald.workflows WHERE deleted_at IS NULL
UNION SELECT tenant_id FROM herald.tenant_settings
UNION SELECT unnest(tenants) FROM herald.users
ORDER BY 1
LIMIT 1000
"""


async def known_tenants(conn: asyncpg.Connection) -> list[str]:
    return [row["tenant_id"] for row in await conn.fetch(KNOWN_TENANTS)]
