"""Signing in and out, and who sees which tenant, in a real browser against the real dashboard."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from playwright.async_api import Locator, Page, expect

from daemon.demo import load_demo
from tests.browser.conftest import (
    Dashboard,
    fill_login,
    path_of,
    run_ids_shown,
    sign_in,
    sign_out,
)
from tests.conftest import wait_until
from tests.dashboard_support import make_user

Shot = Callable[[str], Awaitable[Path]]


async def test_sign_in_takes_you_where_you_asked_and_sign_out_locks_the_door(
    page: Page, shot: Shot, conn: asyncpg.Connection
) -> None:
    await make_user(conn, "support@example.com", "support", ("1",))

    # A page asked for without a session sends you to sign in first, remembering it.
    response = await page.goto("/runs")
    assert response is not None and response.ok
    assert path_of(page) == "/login?next=/runs"
    await shot("asked-for-runs")

    # A wrong password: the form says so and you stay on /login, the address kept.
    await fill_login(page, "support@example.com", "not the password")
    assert path_of(page).startswith("/login")
    await expect(page.get_by_role("alert")).to_be_visible()
    await expect(page.get_by_role("alert")).not_to_be_empty()
    await expect(page.get_by_label("E-mail")).to_have_value("support@example.com")
    await expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    await shot("wrong-password")

    # The right password lands on the page asked for.
    await page.goto("/login?next=/runs")
    await fill_login(page, "support@example.com", "correct horse battery staple")
    assert path_of(page) == "/runs"
    await expect(page.locator("header")).to_contain_text("support@example.com")
    await shot("signed-in")

    # Signing out returns to /login, and the session is over: /runs asks again.
    await sign_out(page)
    assert path_of(page) == "/login"
    await shot("signed-out")
    await page.goto("/runs")
    assert path_of(page) == "/login?next=/runs"
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def tenant_picker(page: Page) -> Locator:
    return page.locator("header").get_by_label("Tenant", exact=True)


async def _completed_runs(conn: asyncpg.Connection) -> dict[str, set[int]]:
    rows = await conn.fetch("SELECT id, tenant_id FROM herald.runs WHERE status = 'completed'")
    found: dict[str, set[int]] = {}
    for row in rows:
        found.setdefault(row["tenant_id"], set()).add(row["id"])
    return found


async def test_each_person_sees_only_their_tenants_runs(
    pipeline: Dashboard, page: Page, shot: Shot, conn: asyncpg.Connection
) -> None:
    """Runs made by the real daemon and worker: a job completed for tenant 1 and one for tenant 2."""
    await load_demo(conn)
    await make_user(conn, "one@example.com", "viewer", ("1",))
    await make_user(conn, "admin@example.com", "admin")
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id IN (1, 4)")

    async def both_tenants_ran() -> dict[str, set[int]] | None:
        runs = await _completed_runs(conn)
        return runs if set(runs) >= {"1", "2"} else None

    runs = await wait_until(both_tenants_ran, timeout=30, message="a completed run of each tenant")
    tenant_one, tenant_two = runs["1"], runs["2"]

    # A viewer of tenant 1: only tenant 1's runs, and the picker offers only "1".
    await sign_in(page, "one@example.com", next_path="/runs")
    assert await run_ids_shown(page) == tenant_one
    picker = tenant_picker(page)
    assert await picker.locator("option").evaluate_all("options => options.map(o => o.value)") == ["1"]
    await shot("tenant-one-viewer")
    # Asking for tenant 2 in the address shows nothing of it.
    response = await page.goto("/runs?tenant=2")
    assert response is not None and response.status == 404
    assert await run_ids_shown(page) == set()
    await page.goto("/runs")
    await sign_out(page)

    # An admin sees both tenants, then picks tenant 2 in the header: the select submits itself.
    await sign_in(page, "admin@example.com", next_path="/runs")
    assert await run_ids_shown(page) == tenant_one | tenant_two
    picker = tenant_picker(page)
    values = await picker.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert values == ["", "1", "2"]
    await shot("admin-all-tenants")
    async with page.expect_navigation():
        await picker.select_option("2")
    assert path_of(page) == "/runs"
    await expect(tenant_picker(page)).to_have_value("2")
    assert await run_ids_shown(page) == tenant_two
    await shot("admin-picked-tenant-two")
    # And back to every tenant.
    async with page.expect_navigation():
        await tenant_picker(page).select_option("")
    assert await run_ids_shown(page) == tenant_one | tenant_two
