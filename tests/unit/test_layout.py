"""The house a newcomer reads: the workflow model stands alone, and importing
Herald's modules sets nothing up."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import actors.model
from tests.conftest import REPO

MODEL = sorted(f"actors.model.{m.name}" for m in pkgutil.iter_modules(actors.model.__path__))


def imported_after(*modules: str) -> set[str]:
    """The modules a fresh interpreter has loaded after importing ``modules``."""
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    return set(json.loads(done.stdout))


def test_the_workflow_model_imports_no_dramatiq_redis_or_settings() -> None:
    assert "actors.model.workflow" in MODEL and "actors.model.actions" in MODEL
    loaded = imported_after(*MODEL)
    forbidden = {m for m in loaded if m.split(".")[0] in ("dramatiq", "redis", "aiohttp", "asyncpg", "structlog")
                 or m in ("config.settings", "actors.broker", "actors.actions", "actors.worker")}
    assert forbidden == set()


def test_importing_actors_and_daemon_modules_builds_no_broker() -> None:
    # The actor modules too: they declare their actors; actors.worker puts them on its broker.
    code = ("import dramatiq.broker as b\nimport actors.enriching, actors.matching, actors.steps, actors.actions,"
            " actors.match, actors.enrich, actors.email, actors.sms, actors.records, actors.webhook,"
            " daemon.service, daemon.cli, daemon.dry_run, daemon.workflow_tests, daemon.retries,"
            " dashboard.app\nprint(b.global_broker is None)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr


def test_the_worker_entry_point_sets_up_the_broker_and_every_actor_on_uvloop() -> None:
    code = ("import actors.worker, asyncio, dramatiq\nb = dramatiq.get_broker()\n"
            "print(type(b).__name__, sorted(b.actors), type(asyncio.new_event_loop()).__module__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HERALD_REDIS_URL": "redis://127.0.0.1:1/0",
                               "HERALD_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
    assert done.stdout.strip() == (
        "WakingRedisBroker ['email', 'enrich', 'match', 'records', 'sms', 'webhook'] uvloop"), done.stderr
