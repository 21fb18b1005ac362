"""Bad input gets one clear line and a non-zero exit, never a traceback or a stuck step.

The real `herald` CLI runs as a subprocess against the test's database (as in
test_configured_servers.py); the delivery case runs a real daemon and worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from daemon.demo import load_demo
from tests.conftest import wait_until
from tests.e2e.conftest import Processes
from tests.fakes import FakeSMTPServer

BINARY = bytes(range(256)) * 4
DELAY_FOREVER = {"name": "Forever", "trigger_type": "job_completed", "steps": [
    {"id": "wait", "type": "delay", "config": {"duration": "99999999999999d"}},
    {"id": "say", "type": "action", "config": {"actionType": "sms", "message": "hi", "recipient": "+15550101001"}}]}


def nested_conditions(levels: int) -> dict[str, Any]:
    condition: dict[str, Any] = {"field": "new.status", "operator": "equals", "value": "completed"}
    for _ in range(levels):
        condition = {"operator": "and", "conditions": [condition]}
    return {"name": "Deep", "trigger_type": "job_completed", "trigger_conditions": condition, "steps": [
        {"id": "say", "type": "action", "config": {"actionType": "sms", "message": "hi", "recipient": "+15550101001"}}]}


@pytest.fixture
def herald(db_url: str, redis_url: str, tmp_path: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")} | {
        "HERALD_DATABASE_URL": db_url, "HERALD_REDIS_URL": redis_url, "HERALD_DATA_DIR": str(tmp_path / "unused")}

    def run(*args: str | bytes) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon", *args], env=env, capture_output=True, text=True,
                              errors="backslashreplace", timeout=120)

    return run


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    shown = f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.returncode in (1, 2), shown
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, shown
    assert len(result.stderr.strip().splitlines()) == 1, shown
    for word in words:
        assert word in result.stderr, shown


def write(path: Path, content: str | bytes) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


async def test_herald_trigger_refuses_bad_input_in_one_line(
    herald: Any, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await load_demo(conn)
    other_tenants = str(await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '2'"))
    good = write(tmp_path / "job.json", json.dumps({"id": 1, "title": "Faucet"}))
    cases: list[tuple[tuple[str | bytes, ...], tuple[str, ...]]] = [
        # NUL and a lone surrogate: PostgreSQL's jsonb refuses both.
        (("--payload", write(tmp_path / "nul.json", '{"id": 1, "note": "a\\u0000b"}')),
         ("$.note", "NUL character")),
        (("--payload", write(tmp_path / "nul-key.json", '{"id": 1, "a\\u0000": 1}')), ("NUL character",)),
        (("--payload", write(tmp_path / "surrogate.json", '{"id": 1, "client": {"name": "\\ud800"}}')),
         ("$.client.name", "unpaired surrogate")),
        (("--payload", write(tmp_path / "binary.json", BINARY)), ("not UTF-8 text",)),
        (("--payload", write(tmp_path / "huge.json", '{"id": 1e999}')), ("out of range",)),
        (("--payload", write(tmp_path / "nan.json", '{"id": NaN}')), ("NaN",)),
        (("--payload", write(tmp_path / "deep.json", "[" * 100_000 + "]" * 100_000)), ("nested too deeply",)),
        (("--payload", good, "--workflow", "not-a-uuid"), ("tenant 1 has no workflow with that id, name or uuid",)),
        (("--payload", good, "--workflow", str(uuid.uuid4())), ("tenant 1 has no workflow with that id",)),
        (("--payload", good, "--workflow", other_tenants), ("tenant 1 has no workflow with that id",)),  # tenant 2's
        (("--payload", good, "--tenant", b"\xff"), ("--tenant", "unpaired surrogate")),  # the last --tenant wins
    ]
    for extra, words in cases:
        assert_one_line_error(herald("trigger", "job_completed", "--tenant", "1", *extra), *words)
    assert_one_line_error(herald("trigger", "fax_sent", "--payload", good, "--tenant", "1"), "unknown trigger")
    assert await conn.fetchval("SELECT count(*) FROM herald.events WHERE operation = 'MANUAL'") == 0

    fired = herald("trigger", "job_completed", "--payload", good, "--tenant", "1")
    assert fired.returncode == 0 and "fired (job_completed, tenant 1)" in fired.stdout, fired.stderr


async def test_herald_retry_refuses_bad_input_in_one_line(herald: Any) -> None:
    assert_one_line_error(herald("retry", "99999999999999999999"), "run id must be from 1 to 9223372036854775807")
    assert_one_line_error(herald("retry", str(2**63)), "run id must be from 1")
    assert_one_line_error(herald("retry", "0"), "run id must be from 1")
    assert_one_line_error(herald("retry", "--failed", "--workflow", "nope"), "give --tenant to find a workflow")
    assert_one_line_error(herald("retry", "--failed", "--tenant", b"\xfe"), "--tenant", "unpaired surrogate")
    # In range but no such run: the usual answer, no traceback.
    missing = herald("retry", str(2**63 - 1))
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


async def test_herald_workflows_refuse_bad_files_in_one_line(
    herald: Any, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    binary = write(tmp_path / "binary.json", BINARY)
    deep = write(tmp_path / "deep.json", json.dumps(nested_conditions(400)))
    forever = write(tmp_path / "forever.json", json.dumps(DELAY_FOREVER))
    nul = write(tmp_path / "nul.json", json.dumps({**DELAY_FOREVER, "name": "a\x00b"}))
    not_json = write(tmp_path / "deeper.json", "[" * 100_000 + "]" * 100_000)
    for command in (("validate",), ("import", "--tenant", "1")):
        assert_one_line_error(herald("workflows", *command, binary), f"{binary}: invalid", "not UTF-8 text")
        assert_one_line_error(herald("workflows", *command, deep), f"{deep}: invalid")
        assert_one_line_error(herald("workflows", *command, forever), f"{forever}: invalid",
                              "steps[0].config.duration", "at most 3650d")
        assert_one_line_error(herald("workflows", *command, nul), f"{nul}: invalid", "$.name", "NUL character")
        assert_one_line_error(herald("workflows", *command, not_json), f"{not_json}: invalid", "nested too deeply")
    assert_one_line_error(herald("workflows", "import", "--tenant", b"\xff", forever), "--tenant",
                          "unpaired surrogate")
    assert await conn.fetchval("SELECT count(*) FROM herald.workflows") == 0


async def test_herald_rate_limit_is_bounded(herald: Any, conn: asyncpg.Connection) -> None:
    for args, words in [
        (("--per-recipient", "99999999999999999999"), ("--per-recipient", "from 0 (no limit) to 1000000")),
        (("--per-recipient", "1000001"), ("--per-recipient", "to 1000000")),
        (("--per-recipient", "-1"), ("--per-recipient",)),
        (("--per-recipient", "5", "--window", "99999999999999d"), ("--window", "at most 3650d")),
        (("--per-recipient", "5", "--window", "0s"), ("--window", "positive")),
    ]:
        assert_one_line_error(herald("rate-limit", "--tenant", "1", *args), *words)
    assert await conn.fetchval("SELECT count(*) FROM herald.tenant_settings") == 0
    assert_one_line_error(herald("rate-limit", "--tenant", "1", "--per-recipient", "5"), "no tenant '1'")
    await load_demo(conn)  # tenants 1 and 2, with workflows
    ok = herald("rate-limit", "--tenant", "1", "--per-recipient", "1000000", "--window", "1d")
    assert ok.returncode == 0, ok.stderr


async def test_herald_rate_limit_shows_sets_and_resets_in_plain_words(herald: Any, conn: asyncpg.Connection) -> None:
    await load_demo(conn)

    def said(*args: str) -> str:
        done = herald("rate-limit", "--tenant", "2", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    default = "the default (5/1h, HERALD_RECIPIENT_LIMIT): at most 5 messages per channel per recipient per 1h"
    assert said() == f"tenant 2: no limit of its own; {default}, then wait for the window to allow it"
    assert said("--per-recipient", "0") == "tenant 2: no limit on messages per recipient"
    assert said().startswith("tenant 2: no limit on messages per recipient (its own limit; the default")
    assert said("--per-recipient", "1", "--window", "1d", "--over-limit", "skip") == (
        "tenant 2: at most 1 message per channel per recipient per 1d, then skip the message")
    assert said("--reset").startswith(f"tenant 2: its own limit removed; {default}")
    assert said("--reset").startswith("tenant 2: had no limit of its own;")
    assert await conn.fetchval("SELECT rate_limit FROM herald.tenant_settings WHERE tenant_id = '2'") is None


async def test_an_out_of_range_stored_limit_fails_the_step_with_a_reason_not_forever_sending(
    conn: asyncpg.Connection, processes: Processes
) -> None:
    """A limit stored before the bounds (or by hand) must not leave the tenant's messages
    *sending*, retried forever; another tenant's messages go out as usual."""
    await load_demo(conn)
    await conn.execute(
        "INSERT INTO herald.tenant_settings (tenant_id, rate_limit) VALUES"
        " ('1', '{\"per_recipient\": 99999999999999999999, \"window\": \"1h\"}')")
    processes.start("daemon", "daemon")
    processes.start("worker", "worker")
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id IN (1, 4)")

    async def settled() -> list[asyncpg.Record]:
        runs = await conn.fetch("SELECT tenant_id, status, error FROM herald.runs ORDER BY tenant_id")
        return runs if len(runs) == 2 and all(r["status"] in ("completed", "failed") for r in runs) else []

    runs = await wait_until(settled, timeout=45, message="both tenants' runs to finish")
    failed, completed = runs
    assert failed["tenant_id"] == "1" and failed["status"] == "failed", failed
    assert "rate_limit.per_recipient" in failed["error"] and "1000000" in failed["error"]
    assert completed["tenant_id"] == "2" and completed["status"] == "completed", completed
    assert await conn.fetchval("SELECT count(*) FROM herald.steps WHERE status = 'sending'") == 0
    assert await conn.fetchval("SELECT count(*) FROM herald.messages WHERE tenant_id = '1'") == 0


async def test_a_subject_with_a_line_break_fails_the_step_before_anything_is_sent(
    conn: asyncpg.Connection, herald_env: dict[str, str], tmp_path: Path
) -> None:
    """Not left *sending* (and later parked as "unknown") though nothing went out: failed,
    with the reason, and the SMTP server never hears of it."""
    await load_demo(conn)
    with FakeSMTPServer() as smtp:
        processes = Processes(herald_env | {"HERALD_EMAIL_PROVIDER": "smtp", "HERALD_SMTP_HOST": "127.0.0.1",
                                            "HERALD_SMTP_PORT": str(smtp.port)}, tmp_path)
        try:
            processes.start("daemon", "daemon")
            processes.start("worker", "worker")
            await conn.execute("UPDATE jobs SET title = E'Faucet\\r\\nBcc: all-staff@example.com',"
                               " status = 'completed' WHERE id = 1")

            async def finished() -> asyncpg.Record | None:
                return await conn.fetchrow(
                    "SELECT status, error FROM herald.runs WHERE status NOT IN ('pending', 'running')")

            run = await wait_until(finished, timeout=45, message="the run to finish")
        finally:
            processes.stop_all()
    assert run["status"] == "failed" and "subject contains a line break" in run["error"], run
    steps = await conn.fetch("SELECT action, status FROM herald.steps ORDER BY position")
    assert [(s["action"], s["status"]) for s in steps] == [("email", "failed"), ("sms", "skipped")]
    assert await conn.fetchval("SELECT status FROM herald.messages") == "failed"
    assert smtp.messages == []
