"""Test mode is a guarantee: with real providers configured (SMTP, Telnyx, a webhook
receiver), `herald test` and `herald workflows test` render every message and send
none of them, and write nothing to the database.

The fakes record whatever reaches them; the same settings, used by the real
providers afterwards, do reach them, so the silence is the commands' doing.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from actors.providers.base import OutboundMessage
from actors.providers.smtp import SmtpProvider
from actors.providers.telnyx import TelnyxProvider
from actors.providers.webhook import close_sessions, deliver_webhook
from config.settings import Settings
from daemon.demo import load_demo
from tests.fakes import FakeHTTPServer, FakeSMTPServer, FakeTelnyx


def workflow(hook_url: str) -> dict[str, Any]:
    return {"name": "Job done, loudly", "trigger_type": "job_status_changed",
            "trigger_conditions": {"new_status": "completed"}, "steps": [
                {"id": "mail", "type": "action", "config": {
                    "actionType": "email", "recipient": "{{client.email}}", "subject": "Done: {{job.title}}",
                    "message": "Dear {{client.firstName}}, it is done."}},
                {"id": "text", "type": "action", "config": {
                    "actionType": "sms", "recipient": "{{client.phone}}", "message": "{{job.title}}: done"}},
                {"id": "hook", "type": "action", "config": {
                    "actionType": "webhook", "url": hook_url, "payload": {"job": "{{job.id}}", "who": "{{client.email}}"}}},
            ]}


TEST_FILE = {"workflow": "loud.workflow.json", "cases": [{
    "name": "sends all three",
    "event": {"tenant": "1", "record": {"id": 1, "title": "Replace kitchen faucet", "status": "completed"},
              "changes": {"status": {"from": "in_progress", "to": "completed"}},
              "related": {"client": {"first_name": "Maria", "email": "maria.lopez@example.com",
                                     "phone": "+15550101001"}}},
    "expect": {"steps": {
        "mail": {"recipient": "maria.lopez@example.com", "subject": "Done: Replace kitchen faucet"},
        "text": {"recipient": "+15550101001", "body": "Replace kitchen faucet: done"},
        "hook": {"payload": {"job": "1", "who": "maria.lopez@example.com"}}}}}]}


async def herald(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """The CLI as a subprocess, without blocking this event loop (the fakes live on it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def written(conn: asyncpg.Connection) -> dict[str, Any]:
    return {table: await conn.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("herald.events", "herald.runs", "herald.steps", "herald.messages")} | {
        "job 1": await conn.fetchval("SELECT status FROM jobs WHERE id = 1")}


async def test_test_mode_sends_nothing_through_real_providers(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path,
) -> None:
    await load_demo(conn)
    with FakeSMTPServer() as smtp:
        async with FakeTelnyx() as telnyx, FakeHTTPServer() as receiver:
            env = settings.child_env() | {
                "HERALD_EMAIL_PROVIDER": "smtp", "HERALD_SMTP_HOST": "127.0.0.1", "HERALD_SMTP_PORT": str(smtp.port),
                "HERALD_SMS_PROVIDER": "telnyx", "HERALD_TELNYX_BASE_URL": telnyx.url,
                "HERALD_TELNYX_API_KEY": "key", "HERALD_SMS_FROM": "+15550000000",
                "HERALD_WEBHOOK_ALLOW_PRIVATE": "true", "HERALD_LOG_FORMAT": "json",
            }
            hook_url = f"{receiver.url}/hooks/job"
            (tmp_path / "loud.workflow.json").write_text(json.dumps(workflow(hook_url)))
            (tmp_path / "loud.test.json").write_text(json.dumps(TEST_FILE))
            before = await written(conn)

            code, out, err = await herald(env, "test", "-v", str(tmp_path))
            assert code == 0, out + err
            assert f"PASS {tmp_path}/loud.test.json::sends all three" in out
            assert "      recipient: maria.lopez@example.com" in out
            assert "      subject: Done: Replace kitchen faucet" in out
            assert "      body: Replace kitchen faucet: done" in out
            assert f"      url: {hook_url}" in out
            code, out, err = await herald(env, "test", "--database", str(tmp_path))  # reads the tables, read only
            assert code == 0 and out.startswith(f"PASS {tmp_path}/loud.test.json::sends all three"), out + err

            code, out, err = await herald(
                env, "workflows", "test", str(tmp_path / "loud.workflow.json"), "--tenant", "1",
                "--record", "jobs:1", "--change", "status=in_progress:completed")
            assert code == 0, out + err
            assert "step 1 mail (email): would send" in out
            assert "    subject: Done: Replace kitchen faucet" in out
            assert "    body: Dear Maria, it is done." in out
            assert "step 2 text (sms): would send" in out and "    recipient: +15550101001" in out
            assert "step 3 hook (webhook): would POST" in out
            assert '    payload: {"job": "1", "who": "maria.lopez@example.com"}' in out

            # Nothing reached any provider, and nothing was written.
            assert smtp.messages == []
            assert telnyx.delivered == {} and telnyx.replays == 0
            assert receiver.requests == []
            assert await written(conn) == before

            # The same settings do reach the fakes when something really sends.
            real = Settings.from_env(env)
            message = OutboundMessage("email", "maria.lopez@example.com", "hi", "check-1", subject="check")
            await SmtpProvider(real).send(message)
            async with aiohttp.ClientSession() as session:
                await TelnyxProvider(real, session).send(
                    OutboundMessage("sms", "+15550101001", "hi", "check-2"))
            await deliver_webhook(hook_url, {"check": True}, settings=real, idempotency_key="check-3")
            await close_sessions()
            assert [m["Subject"] for m in smtp.messages] == ["check"]
            assert telnyx.delivered == {"check-2": "hi"}
            assert [r.path for r in receiver.requests] == ["/hooks/job"]
