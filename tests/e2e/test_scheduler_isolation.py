"""One tenant's broken time trigger never stops the real daemon: the workflow is
marked with the reason and skipped, and every other tenant's time triggers
keep firing, pass after pass."""

from __future__ import annotations

import asyncio
import functools
import signal

import asyncpg

from daemon.demo import load_demo
from daemon.workflows import import_workflow
from tests.conftest import wait_until
from tests.e2e.conftest import Processes

DRAFT = [{"type": "draft_email", "args": {"subject": "Overdue", "body": "Please pay"}}]
# The lowest id: the scheduler meets the broken workflow first in every pass.
NEVER = "00000000-0000-0000-0000-000000000001"



async def test_an_impossible_schedule_leaves_the_daemon_serving_everyone(
    conn: asyncpg.Connection, processes: Processes
) -> None:
    await load_demo(conn)
    # 31 February, written straight into the table (validation would refuse it).
    await conn.execute(
        "INSERT INTO herald.workflows (id, tenant_id, name, trigger_type, definition)"
        " VALUES ($1, '1', 'never', 'cron', $2)",
        NEVER, {"name": "never", "trigger": "cron", "trigger_config": {"schedule": "0 0 31 2 *"}, "actions": DRAFT})
    await import_workflow(conn, "2", {"name": "dunning", "trigger": "invoice_overdue", "actions": DRAFT})
    await conn.execute("UPDATE invoices SET due_date = current_date - 1, status = 'sent' WHERE number = 'BB-2001'")
    daemon = processes.start("daemon", "daemon")
    processes.start("worker", "worker")

    async def drafted(count: int) -> bool:
        return bool(await conn.fetchval(
            "SELECT count(*) >= $1 FROM herald.messages WHERE tenant_id = '2' AND subject = 'Overdue'", count))

    await wait_until(functools.partial(drafted, 1), timeout=30, interval=0.1,
                     message="tenant 2's overdue invoice to be drafted")
    reason = await conn.fetchval("SELECT schedule_error FROM herald.workflows WHERE id = $1", NEVER)
    assert reason is not None and "trigger_config.schedule" in reason, reason
    [logged] = [e for e in processes.log_events("daemon") if e.get("workflow_id") == NEVER]
    assert logged["level"] == "error" and logged["error"] == reason

    # Later passes go on: each new overdue invoice of tenant 2 fires, and the daemon is still up.
    for number, count in (("BB-2002", 2), ("BB-2003", 3)):
        await conn.execute("INSERT INTO invoices (organization_id, client_id, number, amount_cents, due_date, status)"
                           " VALUES (2, 5, $1, 100, current_date - 2, 'sent')", number)
        await wait_until(functools.partial(drafted, count), timeout=30, interval=0.1, message=f"{number} to be drafted")
        assert daemon.poll() is None, processes.output("daemon")[-3000:]
    # Marked once, then skipped: not logged again on every pass.
    assert len([e for e in processes.log_events("daemon") if e.get("workflow_id") == NEVER]) == 1
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.wait, 20) == 0
