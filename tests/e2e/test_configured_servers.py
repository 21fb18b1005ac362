"""With HERALD_DATABASE_URL and HERALD_REDIS_URL set, Herald uses them and starts nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg


async def test_cli_uses_configured_database_and_starts_no_server(
    db_url: str, redis_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    data_dir = tmp_path / "unused"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")} | {
        "HERALD_DATABASE_URL": db_url, "HERALD_REDIS_URL": redis_url, "HERALD_DATA_DIR": str(data_dir),
    }

    def herald(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    migrated = herald("migrate")
    assert migrated.returncode == 0 and "up to date" in migrated.stdout, migrated.stderr
    demo = herald("demo")
    assert demo.returncode == 0, demo.stderr
    watched = herald("watch", "invoices", "--tenant-column", "organization_id",
                     "--relation", "client=clients:client_id")
    assert watched.returncode == 0 and "watching public.invoices" in watched.stdout, watched.stderr
    relations = await conn.fetchval(
        "SELECT relations FROM herald.watched_tables WHERE table_name = 'public.invoices'")
    assert list(relations) == ["client"]
    psql = herald("psql", "-Atc", "SELECT count(*) FROM jobs")
    assert psql.stdout.strip() == "6"
    assert not data_dir.exists()  # no embedded server was started

    bad = herald("watch", "nope")
    assert bad.returncode == 1 and "table 'nope' does not exist" in bad.stderr


async def test_workflows_commands_validate_import_warn_and_export(
    db_url: str, redis_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")} | {
        "HERALD_DATABASE_URL": db_url, "HERALD_REDIS_URL": redis_url}

    def herald(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    examples = Path(__file__).resolve().parents[2] / "config" / "examples"
    good = [str(examples / "job-completed.workflow.json"), str(examples / "consultation-scheduled.rule.json")]
    valid = herald("workflows", "validate", *good)
    assert valid.returncode == 0 and valid.stdout.count(": valid") == 2, valid.stderr
    bad = tmp_path / "fax.json"
    bad.write_text(json.dumps({"name": "x", "trigger_type": "job_created",
                               "steps": [{"type": "action", "config": {"actionType": "fax"}}]}))
    invalid = herald("workflows", "validate", str(bad))
    assert invalid.returncode == 2 and "steps[0].config.actionType: unknown action 'fax'" in invalid.stderr

    assert herald("demo").returncode == 0
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"id": "typo", "name": "Typo", "trigger_type": "job_completed", "steps": [
        {"type": "action", "config": {"actionType": "sms", "message": "{{job.titel}}",
                                      "recipient": "{{client.phone}}"}}]}))
    refused = herald("workflows", "import", str(typo), "--tenant", "1")
    assert refused.returncode == 2 and "steps[0].config.message: job has no column 'titel'" in refused.stderr
    imported = herald("workflows", "import", str(typo), "--tenant", "1", "--force")
    assert imported.returncode == 0 and "imported as" in imported.stdout
    assert "steps[0].config.message: job has no column 'titel' (public.jobs)" in imported.stderr
    exported = json.loads(herald("workflows", "export", "--tenant", "1").stdout)
    assert sorted(w["definition"]["name"] for w in exported) == ["Job Completed", "Typo"]
