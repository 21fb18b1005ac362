"""`herald status` and `herald doctor` against a real database and Redis, each broken
one way at a time: what they say, and the exit status a script sees.

Processes are stood in for by their heartbeat rows here (a liveness of minutes, so
that a slow machine cannot make them stale); tests/e2e/test_status_doctor_processes.py
runs the real daemon and worker.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from config.database import migration_files
from config.settings import Settings
from daemon import doctor
from daemon.cli import main
from daemon.cli.ops import run_doctor
from daemon.demo import load_demo
from tests.conftest import REPO, a_run
from tests.e2e.conftest import free_port

SECRETS = {
    "HERALD_TWILIO_AUTH_TOKEN": "tw-token-SECRET-0451",
    "HERALD_MAILGUN_API_KEY": "mg-key-SECRET-7734",
    "HERALD_SMTP_PASSWORD": "smtp-pw-SECRET-9920",
}


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A set-up doctor finds nothing wrong with: delivering providers with their credentials,
    and a heartbeat interval of a minute (a beat written by the test stays live)."""
    env = {
        "HERALD_DATABASE_URL": settings.database_url, "HERALD_REDIS_URL": settings.redis_url,
        "HERALD_HEARTBEAT_INTERVAL": "60",
        "HERALD_EMAIL_PROVIDER": "smtp", "HERALD_SMTP_HOST": "127.0.0.1", "HERALD_SMTP_PORT": "2525",
        "HERALD_EMAIL_FROM": "Acme <ops@acme.example>",
        "HERALD_SMS_PROVIDER": "telnyx", "HERALD_TELNYX_API_KEY": "telnyx-key-SECRET-1187",
        "HERALD_SMS_FROM": "+15550001111",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def use(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


async def herald(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `herald ARGV` in this process (in a thread: it runs its own event loop)."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def beat(conn: asyncpg.Connection, instance: str, kind: str, *, age: str = "0 seconds") -> None:
    """A heartbeat row as a daemon or worker process writes it, last seen ``age`` ago."""
    await conn.execute(
        "INSERT INTO herald.heartbeats (instance, hostname, pid, started_at, last_seen_at, kind)"
        " VALUES ($1, 'host-a', 4242, clock_timestamp() - interval '1 day',"
        "         clock_timestamp() - $2::text::interval, $3)", instance, age, kind)


@pytest.fixture
async def demo(conn: asyncpg.Connection, cli_env: dict[str, str]) -> asyncpg.Connection:
    """The demo's tables, watched, and a live daemon and worker (by their heartbeats)."""
    await load_demo(conn)
    await beat(conn, "daemon-1", "daemon")
    await beat(conn, "worker-1", "worker")
    return conn


def findings(out: str) -> list[dict[str, str]]:
    return json.loads(out)["findings"]  # type: ignore[no-any-return]


# -- a healthy set-up ------------------------------------------------------------------


async def test_a_healthy_set_up_exits_0_for_both(demo: asyncpg.Connection, capsys: Any) -> None:
    code, out, err = await herald(capsys, "status")
    assert (code, err) == (0, ""), out
    assert out.startswith("Herald is healthy\n")
    assert "daemon   live   host-a  4242" in out and "worker   live   host-a  4242" in out
    assert "match" in out and "Last hour: 0 runs failed, 0 events failed to match." in out

    code, out, _ = await herald(capsys, "status", "--json")
    report = json.loads(out)
    assert (code, report["state"], report["exit"], report["failing"]) == (0, "healthy", 0, [])
    assert list(report["checks"]) == ["database", "redis", "daemon", "workers", "outbox", "wal_capture",
                                      "queues", "dead_letters", "stuck_steps"]
    assert report["parked"] == {"steps": 0, "oldest_s": None}

    code, out, err = await herald(capsys, "doctor")
    assert (code, err) == (0, ""), out
    assert "FAIL" not in out and "WARN" not in out
    assert "OK    capture triggers  installed and enabled on 3 watched tables" in out
    assert out.rstrip().endswith("OK"), out

    code, out, _ = await herald(capsys, "doctor", "--json")
    assert code == 0 and {f["level"] for f in findings(out)} == {"ok"}
    assert [f["check"] for f in findings(out)][:5] == ["database", "migrations", "capture triggers", "clock",
                                                       "redis"]


# -- status: unhealthy (exit 1) ------------------------------------------------------------


async def test_no_live_worker_is_unhealthy(conn: asyncpg.Connection, cli_env: dict[str, str],
                                           capsys: Any) -> None:
    await load_demo(conn)
    await beat(conn, "daemon-1", "daemon")
    await beat(conn, "worker-1", "worker", age="2 hours")  # died long ago
    code, out, err = await herald(capsys, "status")
    assert (code, err) == (1, ""), out
    assert out.startswith("Herald is unhealthy (workers)\n")
    assert "no live worker process (none beat in 180 s), 1 silent" in out
    assert "worker   silent" in out

    code, out, _ = await herald(capsys, "status", "--json")
    report = json.loads(out)
    assert (code, report["state"], report["failing"]) == (1, "unhealthy", ["workers"])


async def test_an_old_backlog_and_dead_letters_are_unhealthy(
    demo: asyncpg.Connection, cli_env: dict[str, str], capsys: Any
) -> None:
    await demo.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")  # no daemon takes it
    await demo.execute("UPDATE herald.events SET created_at = clock_timestamp() - interval '90 minutes'")
    client = redis.Redis.from_url(cli_env["HERALD_REDIS_URL"])
    client.zadd("dramatiq:email.XQ", {"a-dead-message-id": 1})
    client.close()
    code, out, _ = await herald(capsys, "status", "--json")
    report = json.loads(out)
    assert (code, report["failing"]) == (1, ["outbox", "dead_letters"])
    assert report["checks"]["outbox"]["unmatched"] == 1
    assert report["checks"]["outbox"]["oldest_unmatched_s"] > 60
    assert report["checks"]["dead_letters"]["by_queue"] == {"email": 1}

    code, out, _ = await herald(capsys, "status")
    assert code == 1 and out.startswith("Herald is unhealthy (outbox, dead_letters)")
    assert "1 event waiting, oldest 90 min (max 60.0 s)" in out


async def test_failures_of_the_last_hour_and_parked_steps(demo: asyncpg.Connection, capsys: Any) -> None:
    run_id = await a_run(demo, status="failed")
    await demo.execute("UPDATE herald.runs SET completed_at = clock_timestamp() WHERE id = $1", run_id)
    await demo.execute(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, config, queue, status, updated_at)"
        " VALUES ($1, '1', 0, 'email', 'email', '{}', 'email', 'unknown', clock_timestamp() - interval '3 hours')", run_id)
    # A run that failed before the last hour is not counted.
    await demo.execute("UPDATE jobs SET status = 'completed' WHERE id = 2")
    await demo.execute(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, context, completed_at)"
        " SELECT tenant_id, workflow_id, (SELECT max(id) FROM herald.events), 'failed', '{}',"
        "        clock_timestamp() - interval '2 hours'"
        " FROM herald.runs WHERE id = $1", run_id)
    await demo.execute("UPDATE herald.events SET state = 'matched'")  # no backlog
    code, out, _ = await herald(capsys, "status", "--json")
    report = json.loads(out)
    assert report["failures_last_hour"]["runs"] == 1
    assert report["parked"]["steps"] == 1 and report["parked"]["oldest_s"] > 3 * 3600 - 60
    # A step parked in the last day is a stuck step: over HERALD_HEALTH_STUCK_STEPS (0).
    assert (code, report["failing"]) == (1, ["stuck_steps"])

    code, out, _ = await herald(capsys, "status")
    assert "Last hour: 1 run failed" in out
    assert "Parked: 1 step of unknown outcome waits for a person" in out and "the oldest for 3.0 h" in out


# -- cannot check (exit 2) -------------------------------------------------------------------


async def test_redis_unreachable(demo: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch,
                                 capsys: Any) -> None:
    use(monkeypatch, HERALD_REDIS_URL=f"redis://:redis-pw-SECRET@127.0.0.1:{free_port()}/0",
        HERALD_REDIS_TIMEOUT="2")
    code, out, err = await herald(capsys, "status")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("herald: cannot check Herald: cannot reach Redis at redis://:***@")
    assert "redis-pw-SECRET" not in err

    code, out, _ = await herald(capsys, "status", "--json")
    report = json.loads(out)
    assert (code, report["state"], list(report["errors"])) == (2, "unreachable", ["redis"])
    assert report["checks"]["workers"]["ok"] and not report["checks"]["redis"]["ok"]

    code, out, _ = await herald(capsys, "doctor")
    assert code == 2
    assert [line for line in out.splitlines() if line.startswith("FAIL")] == [
        next(line for line in out.splitlines() if line.startswith("FAIL  redis"))]
    assert "fix: check HERALD_REDIS_URL" in out and "redis-pw-SECRET" not in out


def test_database_unreachable_is_one_line_without_its_password(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HERALD_DATABASE_URL": f"postgresql://herald:db-pw-SECRET@127.0.0.1:{port}/app",
           "HERALD_REDIS_URL": redis_url}
    for command in (["status"], ["status", "--json"], ["doctor"], ["doctor", "--json"]):
        done = subprocess.run([sys.executable, "-m", "daemon", *command], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout and "db-pw-SECRET" not in done.stderr + done.stdout
        if command == ["status"]:
            assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
            assert done.stderr.startswith(
                f"herald: cannot check Herald: cannot connect to PostgreSQL at postgresql://herald:***@127.0.0.1:{port}/app")
        elif command == ["doctor"]:
            assert f"FAIL  database          cannot connect to PostgreSQL at postgresql://herald:***@127.0.0.1:{port}" \
                in done.stdout
            assert "SKIP  migrations        the database cannot be reached" in done.stdout


def test_neither_command_starts_the_embedded_servers(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    nowhere = tmp_path / "nowhere"
    done = subprocess.run([sys.executable, "-m", "daemon", "status", "--data-dir", str(nowhere)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"herald: no Herald data directory at {nowhere}") and done.stderr.count("\n") == 1
    assert not nowhere.exists()

    stopped = tmp_path / "stopped"  # a Herald whose servers are not running
    stopped.mkdir()
    done = subprocess.run([sys.executable, "-m", "daemon", "status", "--data-dir", str(stopped)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"herald: cannot check Herald: Herald's embedded PostgreSQL is not running in {stopped};"
                           f" Herald's embedded Redis is not running in {stopped}\n")
    done = subprocess.run([sys.executable, "-m", "daemon", "doctor", "--data-dir", str(stopped)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"fix: start Herald: herald up --data-dir {stopped}" in done.stdout
    assert list(stopped.iterdir()) == []  # nothing was made, let alone started


# -- doctor: what it finds -------------------------------------------------------------------


async def test_a_disabled_capture_trigger_fails_naming_the_table(demo: asyncpg.Connection, capsys: Any) -> None:
    await demo.execute("ALTER TABLE jobs DISABLE TRIGGER herald_capture_update")
    code, out, _ = await herald(capsys, "doctor")
    assert code == 2
    assert ("FAIL  capture triggers  public.jobs: trigger herald_capture_update is disabled: its updates are not"
            " captured") in out
    assert "fix: as the table's owner: ALTER TABLE \"public\".\"jobs\" ENABLE TRIGGER herald_capture_update;" in out
    assert out.rstrip().endswith("herald doctor: 1 failure, 0 warnings")

    code, out, _ = await herald(capsys, "doctor", "--json")
    failed = [f for f in findings(out) if f["level"] == "fail"]
    assert code == 2 and json.loads(out)["worst"] == "fail"
    assert [(f["check"], f["reason"].split(":")[0]) for f in failed] == [("capture triggers", "public.jobs")]


async def test_a_missing_trigger_or_table_fails(demo: asyncpg.Connection, capsys: Any) -> None:
    await demo.execute("CREATE TABLE notes_gone (id int PRIMARY KEY)")
    await demo.execute("INSERT INTO herald.watched_tables (table_name, entity) VALUES ('public.notes_gone', 'gone')")
    await demo.execute("DROP TABLE notes_gone")
    await demo.execute("DROP TRIGGER herald_capture ON invoices")
    await demo.execute("DROP TRIGGER herald_capture_delete ON clients")
    code, out, _ = await herald(capsys, "doctor", "--json")
    failed = {f["reason"] for f in findings(out) if f["level"] == "fail"}
    assert code == 2
    assert failed == {"public.invoices has no herald_capture trigger: its inserts are not captured",
                      "public.clients has no herald_capture_delete trigger: its deletes are not captured",
                      "public.notes_gone is watched but no longer exists: nothing captures its changes"}


async def test_capture_per_row_as_before_migration_019_warns(demo: asyncpg.Connection, capsys: Any) -> None:
    # A table a Herald before capture per statement watched, that migration 019
    # could not move (its role lacked the right then): per-row triggers capture
    # every write, so doctor only warns that it costs more; disabling one fails.
    await demo.execute("DROP TRIGGER herald_capture_delete ON jobs")
    args = "'job', 'id', 'organization_id', 'public.jobs'"
    await demo.execute(f"CREATE OR REPLACE TRIGGER herald_capture AFTER INSERT OR DELETE ON jobs"
                       f" FOR EACH ROW EXECUTE FUNCTION herald.capture_change({args})")
    await demo.execute(f"CREATE OR REPLACE TRIGGER herald_capture_update AFTER UPDATE ON jobs"
                       f" FOR EACH ROW EXECUTE FUNCTION herald.capture_change({args})")
    code, out, _ = await herald(capsys, "doctor", "--json")
    [warned] = [f for f in findings(out) if f["check"] == "capture triggers"]
    assert (code, warned["level"]) == (1, "warn")
    assert warned["reason"] == ("public.jobs is captured per row (herald_capture, herald_capture_update): correct,"
                                " but its bulk writes cost several times what capture per statement costs")
    assert warned["hint"] == "run `herald watch public.jobs` again, with the options it was watched with"
    await demo.execute("ALTER TABLE jobs DISABLE TRIGGER herald_capture")
    code, out, _ = await herald(capsys, "doctor", "--json")
    failed = {f["reason"] for f in findings(out) if f["level"] == "fail"}
    assert failed == {"public.jobs: trigger herald_capture is disabled: its inserts and deletes are not captured"}


async def test_a_pending_migration_fails(demo: asyncpg.Connection, capsys: Any) -> None:
    version, name, _ = migration_files()[-1]
    await demo.execute("DELETE FROM herald.schema_migrations WHERE version = $1", version)
    code, out, _ = await herald(capsys, "doctor")
    assert code == 2
    shipped = len(migration_files())
    assert f"FAIL  migrations        1 of {shipped} not applied: {name}" in out
    assert "fix: run: herald migrate" in out


async def test_a_missing_provider_credential_fails_naming_it_and_shows_no_secret(
    demo: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    use(monkeypatch, HERALD_EMAIL_PROVIDER="mailgun", HERALD_MAILGUN_DOMAIN="mg.acme.example",
        HERALD_SMS_PROVIDER="twilio", HERALD_TWILIO_ACCOUNT_SID="AC123",
        HERALD_TWILIO_AUTH_TOKEN=SECRETS["HERALD_TWILIO_AUTH_TOKEN"],
        HERALD_SMTP_PASSWORD=SECRETS["HERALD_SMTP_PASSWORD"])
    code, out, err = await herald(capsys, "doctor")
    assert code == 2
    assert "FAIL  email provider    mailgun: HERALD_MAILGUN_API_KEY is not set" in out
    assert "fix: set HERALD_MAILGUN_API_KEY" in out
    assert ("OK    sms provider      twilio: HERALD_TWILIO_ACCOUNT_SID, HERALD_TWILIO_AUTH_TOKEN and"
            " HERALD_SMS_FROM set") in out
    json_code, json_out, json_err = await herald(capsys, "doctor", "--json")
    assert json_code == 2
    for text in (out, err, json_out, json_err):
        for secret in (*SECRETS.values(), "telnyx-key-SECRET-1187"):
            assert secret not in text


async def test_the_clock_against_postgresql(settings: Settings, demo: asyncpg.Connection) -> None:
    """The machine's clock is the test's: behind or ahead of PostgreSQL's by a set amount."""
    cli = Settings.from_env({"HERALD_DATABASE_URL": settings.database_url,
                             "HERALD_REDIS_URL": settings.redis_url})

    def clock(offset: float) -> Any:
        return lambda: time.time() + offset

    levels = {}
    for offset in (0.0, -5.0, 45.0):
        found = await run_doctor(cli, clock=clock(offset))
        levels[offset] = next(f for f in found if f.check == "clock")
    assert levels[0.0].level == "ok"
    assert levels[-5.0].level == "warn" and levels[-5.0].reason.startswith("this machine's clock is 5.0 s behind")
    assert levels[45.0].level == "fail" and levels[45.0].reason.startswith(
        "this machine's clock is 45.0 s ahead of PostgreSQL's")
    assert doctor.clock_finding(-2.5).level == "warn" and doctor.clock_finding(1.9).level == "ok"


async def test_a_bad_setting_is_exit_2_in_one_line(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                   capsys: Any) -> None:
    use(monkeypatch, HERALD_LEASE="soon")
    for command in ("status", "doctor"):
        code, out, err = await herald(capsys, command)
        assert (code, out) == (2, "")
        assert err == "herald: HERALD_LEASE must be a number of seconds above 0 (got 'soon')\n"
