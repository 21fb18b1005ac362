"""Settings come from the environment once, and never leak passwords."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import actors.worker  # noqa: F401  (sets up the broker and declares the actors on it)
from actors.middleware.rate_limits import default_limit
from actors.model.rate_limits import RateLimit
from actors.rate_limits import default_rate_limit
from config.errors import HeraldConfigError
from config.logging import configure_logging
from config.settings import (
    VARIABLES,
    Settings,
    current,
    parse_recipient_limit,
    redact_url,
    set_for_process,
)
from daemon.cli import command_names, main
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
    assert default_rate_limit("5/1h").per_recipient == 5
    assert default_rate_limit("0").per_recipient == 0
    with pytest.raises(HeraldConfigError, match="HERALD_RECIPIENT_LIMIT must look like"):
        default_rate_limit("lots")


def test_the_middleware_limits_only_the_actors_that_deliver_to_people() -> None:
    assert default_limit("email") == default_limit("sms") == default_rate_limit("5/1h")
    assert default_limit("webhook") is None and default_limit("records") is None


# -- validated at start ----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HERALD_EMAIL_PROVIDER": "sendgrid"},
         "HERALD_EMAIL_PROVIDER must be one of capture, smtp, mailgun (got 'sendgrid')"),
        ({"HERALD_SMS_PROVIDER": "smtp"},
         "HERALD_SMS_PROVIDER must be one of capture, telnyx, twilio (got 'smtp')"),
        ({"HERALD_LOG_LEVEL": "verbose"},
         "HERALD_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'verbose')"),
        ({"HERALD_LOG_FORMAT": "xml"}, "HERALD_LOG_FORMAT must be one of auto, json, console (got 'xml')"),
        ({"HERALD_DASHBOARD_PORT": "0"}, "HERALD_DASHBOARD_PORT must be a port number from 1 to 65535 (got '0')"),
        ({"HERALD_DASHBOARD_PORT": "65536"}, "HERALD_DASHBOARD_PORT must be a port number from 1 to 65535"),
        ({"HERALD_DASHBOARD_PORT": "eighty"}, "HERALD_DASHBOARD_PORT must be a port number from 1 to 65535"),
        ({"HERALD_SMTP_PORT": "-25"}, "HERALD_SMTP_PORT must be a port number from 1 to 65535 (got '-25')"),
        ({"HERALD_LEASE": "-1"}, "HERALD_LEASE must be a number of seconds above 0 (got '-1')"),
        ({"HERALD_SWEEP_INTERVAL": "0"}, "HERALD_SWEEP_INTERVAL must be a number of seconds above 0"),
        ({"HERALD_HEARTBEAT_INTERVAL": "nan"}, "HERALD_HEARTBEAT_INTERVAL must be a number of seconds above 0"),
        ({"HERALD_ACTOR_TIME_LIMIT": "inf"}, "HERALD_ACTOR_TIME_LIMIT must be a number of seconds above 0"),
        ({"HERALD_WATCHDOG": "soon"}, "HERALD_WATCHDOG must be a number of seconds above 0"),
        ({"HERALD_REDIS_TIMEOUT": "0"}, "HERALD_REDIS_TIMEOUT must be a number of seconds above 0"),
        ({"HERALD_HTTP_TIMEOUT": "-0.5"}, "HERALD_HTTP_TIMEOUT must be a number of seconds above 0"),
        ({"HERALD_WORKER_PROCESSES": "0"}, "HERALD_WORKER_PROCESSES must be a whole number above 0 (got '0')"),
        ({"HERALD_WORKER_THREADS": "2.5"}, "HERALD_WORKER_THREADS must be a whole number above 0 (got '2.5')"),
        ({"HERALD_WORKER_TIMEOUT_MS": "-1"}, "HERALD_WORKER_TIMEOUT_MS must be a whole number above 0"),
        ({"HERALD_DISPATCH_BATCH_SIZE": "0"}, "HERALD_DISPATCH_BATCH_SIZE must be a whole number above 0"),
        ({"HERALD_HEALTH_BACKLOG": "-1"}, "HERALD_HEALTH_BACKLOG must be a whole number, 0 or more (got '-1')"),
        ({"HERALD_HEALTH_QUEUE_DEPTH": "lots"}, "HERALD_HEALTH_QUEUE_DEPTH must be a whole number, 0 or more"),
        ({"HERALD_HEALTH_DEAD_LETTERS": "-3"}, "HERALD_HEALTH_DEAD_LETTERS must be a whole number, 0 or more"),
        ({"HERALD_HEALTH_STUCK_STEPS": "0.5"}, "HERALD_HEALTH_STUCK_STEPS must be a whole number, 0 or more"),
        ({"HERALD_HEALTH_OUTBOX_LAG": "-1"}, "HERALD_HEALTH_OUTBOX_LAG must be a number of seconds, 0 or more"),
        ({"HERALD_SMTP_TLS": "maybe"}, "HERALD_SMTP_TLS must be true or false (got 'maybe')"),
        ({"HERALD_WEBHOOK_ALLOW_PRIVATE": "sometimes"}, "HERALD_WEBHOOK_ALLOW_PRIVATE must be true or false"),
        ({"HERALD_RECIPIENT_LIMIT": "lots"}, "HERALD_RECIPIENT_LIMIT must look like '5/1h'"),
        ({"HERALD_RECIPIENT_LIMIT": "5/-1h"}, "HERALD_RECIPIENT_LIMIT must look like '5/1h'"),
        ({"HERALD_RECIPIENT_LIMIT": "-5/1h"}, "HERALD_RECIPIENT_LIMIT must look like '5/1h'"),
        ({"HERALD_RECIPIENT_LIMIT": "5/0s"}, "HERALD_RECIPIENT_LIMIT must look like '5/1h'"),
        ({"HERALD_TELNYX_BASE_URL": "api.telnyx.com"}, "HERALD_TELNYX_BASE_URL must be an http:// or https:// URL"),
        ({"HERALD_DATABASE_URL": "mysql://db/app", "HERALD_REDIS_URL": "redis://cache"},
         "HERALD_DATABASE_URL must be a postgresql:// URL"),
        ({"HERALD_DATABASE_URL": "postgresql://db/app", "HERALD_REDIS_URL": "memcached://cache"},
         "HERALD_REDIS_URL must be a redis://, rediss:// or unix:// URL"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(HeraldConfigError) as caught:
        Settings.from_env(env)
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text and "validation error" not in text  # pydantic's report stays inside


def test_every_bad_variable_is_named_on_the_same_line() -> None:
    with pytest.raises(HeraldConfigError) as caught:
        Settings.from_env({"HERALD_LOG_FORMAT": "xml", "HERALD_WORKER_THREADS": "0", "HERALD_LEASE": "30"})
    assert "HERALD_LOG_FORMAT" in str(caught.value) and "HERALD_WORKER_THREADS" in str(caught.value)
    assert "HERALD_LEASE" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({"HERALD_LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
        ({"HERALD_LOG_LEVEL": "Warning"}, "log_level", "WARNING"),
        ({"HERALD_LOG_FORMAT": "JSON"}, "log_format", "json"),
        ({"HERALD_EMAIL_PROVIDER": "Mailgun "}, "email_provider", "mailgun"),
        ({"HERALD_SMS_PROVIDER": "twilio"}, "sms_provider", "twilio"),
        ({"HERALD_DASHBOARD_PORT": "65535"}, "dashboard_port", 65535),
        ({"HERALD_SMTP_PORT": "1"}, "smtp_port", 1),
        ({"HERALD_SMTP_STARTTLS": "yes"}, "smtp_starttls", True),
        ({"HERALD_SMTP_TLS": "0"}, "smtp_tls", False),
        ({"HERALD_WEBHOOK_ALLOW_PRIVATE": "TRUE"}, "webhook_allow_private", True),
        ({"HERALD_HEALTH_DEAD_LETTERS": "0"}, "health_dead_letters", 0),
        ({"HERALD_HEALTH_OUTBOX_LAG": "0"}, "health_outbox_lag_s", 0.0),
        ({"HERALD_SWEEP_INTERVAL": "0.25"}, "sweep_interval_s", 0.25),
        ({"HERALD_WORKER_TIMEOUT_MS": "250"}, "worker_timeout_ms", 250),
        ({"HERALD_RECIPIENT_LIMIT": "0"}, "recipient_limit", "0"),
        ({"HERALD_RECIPIENT_LIMIT": "10/1d"}, "recipient_limit", "10/1d"),
        ({"HERALD_WEBHOOK_ALLOWLIST": "a.example, *.b.example,,"}, "webhook_allowlist", ("a.example", "*.b.example")),
        # Empty is unset: the default holds.
        ({"HERALD_EMAIL_PROVIDER": "", "HERALD_DASHBOARD_PORT": ""}, "dashboard_port", 8080),
        ({"HERALD_EMAIL_PROVIDER": ""}, "email_provider", "capture"),
    ],
)
def test_good_settings_are_parsed(env: dict[str, str], field: str, expected: object) -> None:
    assert getattr(Settings.from_env(env), field) == expected


def test_defaults_come_from_the_dataclass(tmp_path: Path) -> None:
    settings = Settings.from_env({"HERALD_DATA_DIR": str(tmp_path)})
    defaults = Settings(database_url=settings.database_url, redis_url=settings.redis_url, data_dir=tmp_path)
    assert settings == defaults


def test_from_env_reads_the_process_environment_only_when_given_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_DASHBOARD_PORT", "9123")
    assert Settings.from_env().dashboard_port == 9123
    monkeypatch.setenv("HERALD_EMAIL_PROVIDER", "sendgrid")
    assert Settings.from_env({}).email_provider == "capture"  # a given mapping is all it reads
    with pytest.raises(HeraldConfigError, match="HERALD_EMAIL_PROVIDER"):
        Settings.from_env()


def test_variable_names_are_case_sensitive_like_the_environment() -> None:
    assert Settings.from_env({"herald_email_provider": "sendgrid"}).email_provider == "capture"


SECRETS = {
    "HERALD_SMTP_PASSWORD": "smtp-pass-9f1",
    "HERALD_MAILGUN_API_KEY": "key-mailgun-9f1",
    "HERALD_TELNYX_API_KEY": "KEYtelnyx9f1",
    "HERALD_TWILIO_AUTH_TOKEN": "twilio-token-9f1",
    "HERALD_WEBHOOK_SIGNING_SECRET": "whsec-9f1",
}


@pytest.mark.parametrize(
    "bad",
    [
        {"HERALD_SMTP_PORT": "0"},
        {"HERALD_DATABASE_URL": "postgresql://app:pg-pass-9f1@db.internal/app"},  # without the Redis URL
        {"HERALD_REDIS_URL": "redis://:redis-pass-9f1@cache:6379/0"},  # without the database URL
        {"HERALD_DATABASE_URL": "mysql://app:pg-pass-9f1@db/app", "HERALD_REDIS_URL": "redis://cache"},
        {"HERALD_DATABASE_URL": "postgresql://db/app", "HERALD_REDIS_URL": "http://:redis-pass-9f1@cache"},
        {"HERALD_MAILGUN_BASE_URL": "ftp://user:url-pass-9f1@mailgun"},
        {"HERALD_SMTP_TLS": "1", "HERALD_SMTP_STARTTLS": "1"},
    ],
)
def test_secrets_never_appear_in_errors(bad: dict[str, str]) -> None:
    with pytest.raises(HeraldConfigError) as caught:
        Settings.from_env(SECRETS | bad)
    message = str(caught.value)
    assert message.startswith(("HERALD_", "set both")), message
    assert "9f1" not in message  # every secret above carries it
    # nor in a chained error a traceback could print
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_lease_must_outlast_the_actor_time_limit() -> None:
    with pytest.raises(HeraldConfigError) as caught:
        Settings.from_env({"HERALD_LEASE": "20", "HERALD_ACTOR_TIME_LIMIT": "20"})
    assert str(caught.value).startswith("HERALD_ACTOR_TIME_LIMIT must be below HERALD_LEASE (got 20 and 20)")
    with pytest.raises(HeraldConfigError, match=r"\(got 40 and 30, the default\)"):
        Settings.from_env({"HERALD_ACTOR_TIME_LIMIT": "40"})
    consistent = Settings.from_env({"HERALD_LEASE": "60", "HERALD_ACTOR_TIME_LIMIT": "50"})
    assert (consistent.lease_s, consistent.actor_time_limit_s) == (60.0, 50.0)


def test_the_defaults_and_a_short_lease_alone_are_accepted() -> None:
    defaults = Settings.from_env({})
    assert defaults.actor_time_limit_s < defaults.lease_s  # the defaults never trip the rule
    # A short lease alone (the end-to-end tests run with 3 s) keeps the default time limit.
    short = Settings.from_env({"HERALD_LEASE": "3"})
    assert (short.lease_s, short.actor_time_limit_s) == (3.0, 25.0)


def test_liveness_follows_the_heartbeat() -> None:
    assert Settings.from_env({"HERALD_HEARTBEAT_INTERVAL": "4"}).liveness_s == 12.0
    assert Settings.from_env({"HERALD_HEARTBEAT_INTERVAL": "0.1"}).liveness_s == 2.0
    with pytest.raises(HeraldConfigError, match="HERALD_HEARTBEAT_INTERVAL must be a number of seconds above 0"):
        Settings.from_env({"HERALD_HEARTBEAT_INTERVAL": "0"})


def test_smtp_tls_and_starttls_are_one_or_the_other() -> None:
    with pytest.raises(HeraldConfigError, match="HERALD_SMTP_TLS and HERALD_SMTP_STARTTLS must not both be true"):
        Settings.from_env({"HERALD_SMTP_TLS": "true", "HERALD_SMTP_STARTTLS": "true"})


@pytest.mark.parametrize(
    ("text", "per_recipient", "seconds"),
    [("5/1h", 5, 3600), ("0", 0, 3600), ("5", 5, 3600), ("10/1d", 10, 86400), ("3/90", 3, 90),
     ("2/1.5h", 2, 5400), (" 7 / 15m ", 7, 900), ("1/1w", 1, 604800)],
)
def test_recipient_limit_parsing_lives_in_config(text: str, per_recipient: int, seconds: int) -> None:
    assert parse_recipient_limit(text) == (per_recipient, dt.timedelta(seconds=seconds))
    assert default_rate_limit(text) == RateLimit(per_recipient, dt.timedelta(seconds=seconds))


def test_every_field_but_embedded_has_one_variable() -> None:
    assert set(VARIABLES) == {f.name for f in fields(Settings)} - {"embedded"}
    assert all(name.startswith("HERALD_") for name in VARIABLES.values())
    assert len(set(VARIABLES.values())) == len(VARIABLES)


def test_child_env_round_trips(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "HERALD_DATA_DIR": str(tmp_path), "HERALD_DASHBOARD_PORT": "9001", "HERALD_DASHBOARD_HOST": "0.0.0.0",
        "HERALD_DATABASE_URL": "postgresql://app:s3cret@db/app", "HERALD_REDIS_URL": "redis://cache/0",
    })
    again = Settings.from_env(settings.child_env({}))
    assert again == settings


def test_set_for_process_reaches_current(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_DASHBOARD_PORT", "8080")
    set_for_process(dashboard_port="9002")
    try:
        assert current().dashboard_port == 9002
    finally:
        monkeypatch.undo()
        current.cache_clear()


def test_logging_refuses_a_level_it_does_not_know() -> None:
    with pytest.raises(HeraldConfigError, match="HERALD_LOG_LEVEL must be one of DEBUG"):
        configure_logging(Settings(database_url="", redis_url="", log_level="verbose"), process="tests")
    with pytest.raises(HeraldConfigError, match="HERALD_LOG_FORMAT must be one of auto"):
        configure_logging(Settings(database_url="", redis_url="", log_format="xml"), process="tests")


COMMAND_ARGS = {
    "watch": ["jobs"],
    "unwatch": ["jobs"],
    "workflows": ["validate", "nothing.json"],
    "retry": ["1"],
    "trigger": ["job_completed", "--payload", "nothing.json", "--tenant", "t1"],
    "rate-limit": ["--tenant", "t1", "--per-recipient", "1"],
    "users": ["list"],
    "tokens": ["list"],
}


@pytest.mark.parametrize("command", command_names())
def test_every_command_stops_at_start_with_one_line(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HERALD_LOG_LEVEL", "verbose")
    monkeypatch.setattr(sys, "argv", ["herald"])  # cmd_worker would rewrite it
    try:
        code = main([command, *COMMAND_ARGS.get(command, [])])
    finally:
        current.cache_clear()
    err = capsys.readouterr().err
    # status and doctor: 2, "could not check" (1 means "look at this" for them).
    assert code == (2 if command in ("status", "doctor") else 1)
    assert err == "herald: HERALD_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'verbose')\n"


def test_the_herald_command_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {"HERALD_LOG_LEVEL": "verbose", "HERALD_DATA_DIR": str(tmp_path / "herald")}
    done = subprocess.run([sys.executable, "-m", "daemon", "migrate"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "herald: HERALD_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'verbose')"
    ]
    assert not (tmp_path / "herald").exists()  # stopped before starting any server


def test_readme_documents_every_variable() -> None:
    text = (REPO / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `HERALD_"):
            continue
        first = re.findall(r"`(HERALD_[A-Z_]+|_[A-Z_]+)`", row.split(" | ")[0])
        family = "_".join(first[0].split("_")[:2])  # HERALD_SMTP for `_PORT` after `HERALD_SMTP_HOST`
        documented |= {name if name.startswith("HERALD_") else family + name for name in first}
    assert set(VARIABLES.values()) - documented == set()


def test_an_installed_herald_refuses_to_share_its_import_names() -> None:
    from daemon.cli.common import foreign_packages

    assert foreign_packages({"daemon": ["herald"], "actors": ["herald"], "yaml": ["PyYAML"]}) == {}
    assert foreign_packages({"daemon": ["herald", "python-daemon"], "config": ["Herald", "config"]}) == {
        "daemon": ["python-daemon"], "config": ["config"]}
    assert foreign_packages() == {}  # this environment: Herald's names are its own


@pytest.mark.parametrize("command", [["workflows", "list", "--tenant", "1"], ["migrate"], ["psql", "-c", "SELECT 1"],
                                     ["retry", "--failed"], ["watch", "jobs"], ["daemon"]])
def test_a_command_run_where_no_herald_lives_refuses_and_starts_nothing(tmp_path: Path, command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["HERALD_DATA_DIR"] = str(tmp_path / "elsewhere")
    done = subprocess.run([sys.executable, "-m", "daemon", *command], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [
        f"herald: no Herald data directory at {tmp_path / 'elsewhere'}: run this where `herald up` runs, give its"
        " directory with --data-dir or HERALD_DATA_DIR, or set HERALD_DATABASE_URL and HERALD_REDIS_URL"]
    assert not (tmp_path / "elsewhere").exists()
