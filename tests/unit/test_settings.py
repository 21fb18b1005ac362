"""Settings come from the environment once, and never leak passwords."""

from __future__ import annotations

from pathlib import Path

import pytest

import actors  # noqa: F401  (declares the actors on the broker)
from actors.middleware.rate_limits import default_limit
from actors.rate_limits import RateLimit
from config.errors import HeraldConfigError
from config.settings import Settings, redact_url
from daemon.supervisor import PROCESSES
from tests.conftest import REPO


def test_embedded_default_when_no_urls(tmp_path: Path) -> None:
    settings = Settings.from_env({"HERALD_DATA_DIR": str(tmp_path)})
    assert settings.embedded
    assert settings.database_url.startswith("postgresql://postgres@/herald?host=")
    assert settings.redis_url == f"unix://{tmp_path / 'run' / 'redis.sock'}"


def test_configured_urls_start_no_servers() -> None:
    settings = Settings.from_env({
        "HERALD_DATABASE_URL": "postgresql://app:s3cret@db.internal/app",
        "HERALD_REDIS_URL": "redis://cache.internal:6379/0",
    })
    assert not settings.embedded
    assert "s3cret" not in repr(settings)
    assert settings.child_env({})["HERALD_DATABASE_URL"].endswith("@db.internal/app")


def test_one_url_without_the_other_is_an_error() -> None:
    with pytest.raises(HeraldConfigError, match="both"):
        Settings.from_env({"HERALD_DATABASE_URL": "postgresql://localhost/app"})


def test_bad_number_names_the_variable() -> None:
    with pytest.raises(HeraldConfigError, match="HERALD_DASHBOARD_PORT"):
        Settings.from_env({"HERALD_DASHBOARD_PORT": "eighty"})


def test_redact_url_hides_password() -> None:
    assert redact_url("postgresql://app:s3cret@db/app") == "postgresql://app:***@db/app"
    assert redact_url("unix:///tmp/redis.sock") == "unix:///tmp/redis.sock"


def test_long_data_dir_moves_sockets_under_tmp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    settings = Settings.from_env({"HERALD_DATA_DIR": str(deep)})
    socket = settings.layout.socket_dir / ".s.PGSQL.5432"
    assert len(str(socket)) <= 100 and str(socket).startswith("/tmp/herald-")


def test_herald_up_runs_the_procfile() -> None:
    lines = (REPO / "Procfile").read_text().strip().splitlines()
    procfile = {name: command.split() for name, command in (line.split(": ", 1) for line in lines)}
    assert procfile == {name: ["herald", *args] for name, args in PROCESSES.items()}


def test_recipient_limit_setting_is_checked() -> None:
    assert RateLimit.parse_default("5/1h").per_recipient == 5
    assert RateLimit.parse_default("0").per_recipient == 0
    with pytest.raises(HeraldConfigError, match="HERALD_RECIPIENT_LIMIT must look like"):
        RateLimit.parse_default("lots")


def test_the_middleware_limits_only_the_actors_that_deliver_to_people() -> None:
    assert default_limit("email") == default_limit("sms") == RateLimit.parse_default("5/1h")
    assert default_limit("webhook") is None and default_limit("records") is None
