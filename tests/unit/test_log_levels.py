"""HERALD_LOG_LEVELS: per-logger levels, parsed with a one-line error and applied
by configure_logging to Herald's structlog loggers and the libraries' own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from config.errors import HeraldConfigError
from config.settings import Settings, parse_log_levels
from tests.conftest import REPO


def test_levels_are_parsed_per_logger() -> None:
    assert parse_log_levels("asyncpg=WARNING,actors.email=debug") == {"asyncpg": "WARNING", "actors.email": "DEBUG"}
    assert parse_log_levels(" dramatiq = error , ") == {"dramatiq": "ERROR"}
    assert parse_log_levels("") == {}


@pytest.mark.parametrize("text", ["asyncpg", "asyncpg=LOUD", "=DEBUG", "actors email=DEBUG", "a..b=INFO"])
def test_a_bad_list_is_one_line_naming_the_variable(text: str) -> None:
    with pytest.raises(HeraldConfigError) as raised:
        Settings.from_env({"HERALD_LOG_LEVELS": text})
    message = str(raised.value)
    assert message.startswith("HERALD_LOG_LEVELS must be a comma-separated list of logger=LEVEL")
    assert repr(text) in message and "\n" not in message


def test_from_env_keeps_the_list_and_configure_logging_checks_one_made_in_code() -> None:
    assert Settings.from_env({"HERALD_LOG_LEVELS": "asyncpg=WARNING"}).log_levels == "asyncpg=WARNING"
    from config.logging import configure_logging

    with pytest.raises(HeraldConfigError, match="^HERALD_LOG_LEVELS must"):
        configure_logging(Settings(database_url="", redis_url="", log_levels="asyncpg"), process="tests")


# A process configured as Herald's are: what reaches stderr, as JSON lines.
PROGRAM = textwrap.dedent("""
    import logging, structlog
    from config.logging import configure_logging
    from config.settings import current
    configure_logging(current(), process="test")
    structlog.get_logger("actors.email").debug("email debug")     # opened up: shown
    structlog.get_logger("actors.sms").debug("sms debug")         # root INFO: hidden
    structlog.get_logger("actors.sms").info("sms info")           # shown
    logging.getLogger("asyncpg").info("asyncpg info")             # quietened: hidden
    logging.getLogger("asyncpg.pool").warning("asyncpg warning")  # below it, at WARNING: shown
    logging.getLogger("aiohttp.access").info("access line")       # opened up again: shown
    structlog.get_logger("daemon.sweeper").info("sweeper info")   # root INFO: shown
""")


def test_configure_logging_applies_each_loggers_level() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {"HERALD_LOG_FORMAT": "json", "HERALD_LOG_LEVEL": "INFO",
            "HERALD_LOG_LEVELS": "asyncpg=WARNING, actors.email=DEBUG, aiohttp.access=INFO"}
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["logger"], line["event"], line["level"]) for line in lines] == [
        ("actors.email", "email debug", "debug"),
        ("actors.sms", "sms info", "info"),
        ("asyncpg.pool", "asyncpg warning", "warning"),
        ("aiohttp.access", "access line", "info"),
        ("daemon.sweeper", "sweeper info", "info"),
    ]
