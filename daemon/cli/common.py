"""What every `herald` command shares: reaching the database, reading files a
person wrote, and saying what went wrong in one line."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from config.errors import HeraldConfigError
from config.settings import Settings

T = TypeVar("T")


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="where the embedded servers keep their data (default ./.herald)")


def require_herald_here(settings: Settings) -> None:
    """On the embedded default, a command works on the servers of a data directory
    that `herald up` made; anywhere else it would make new, empty ones and act on
    those, unseen by the running Herald. Refuse that, in one line."""
    if settings.embedded and not settings.data_dir.exists():
        raise HeraldConfigError(
            f"no Herald data directory at {settings.data_dir}: run this where `herald up` runs,"
            " give its directory with --data-dir or HERALD_DATA_DIR, or set HERALD_DATABASE_URL"
            " and HERALD_REDIS_URL")


# Herald's import names: the folders its layout fixes. They are generic, so an
# installed Herald lives in a virtual environment of its own (see README,
# "Installing"); a distribution that installs the same name there breaks both.
IMPORT_NAMES = ("actors", "config", "daemon", "dashboard")


def foreign_packages(owners: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Import names of Herald's that other installed distributions also provide
    (``{"daemon": ["python-daemon"]}``); empty when Herald has its names to itself."""
    if owners is None:
        from importlib.metadata import packages_distributions

        owners = packages_distributions()
    found = {}
    for name in IMPORT_NAMES:
        others = sorted({dist for dist in owners.get(name, []) if dist.lower() != "herald"})
        if others:
            found[name] = others
    return found


def require_own_environment() -> None:
    """Refuse to run beside a distribution that shares one of Herald's import names."""
    clashes = foreign_packages()
    if clashes:
        named = "; ".join(f"{name} (also installed by {', '.join(dists)})" for name, dists in clashes.items())
        raise HeraldConfigError(
            f"Herald's packages are shadowed in this Python environment: {named}. Install Herald in a"
            " virtual environment of its own: python3 -m venv .venv && .venv/bin/pip install herald")


def with_database(
    settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]], *,
    redis: bool = False, migrate: bool = True,
) -> T:
    """Run ``work`` on a connection to Herald's database: the embedded servers
    started for the command if they are not running (Redis too when ``redis``),
    the schema brought up to date first unless ``migrate`` is false."""
    from config.database import connection
    from config.database import migrate as apply_migrations
    from daemon.embedded import servers_for

    require_herald_here(settings)

    async def run() -> T:
        async with connection(settings.database_url) as conn:
            if migrate:
                await apply_migrations(conn)
            return await work(conn)

    with servers_for(settings, redis=redis):
        return asyncio.run(run())


def one_line(text: str) -> str:
    """``text`` on one line: line breaks and other control characters escaped."""
    return "".join(char if char.isprintable() or char == " " else char.encode("unicode_escape").decode()
                   for char in text)


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 run``, ``2 runs``, ``0 steps``."""
    return f"{count} {singular if count == 1 else plural_form or singular + 's'}"


def read_json_file(path: str) -> Any:
    """A JSON document read from ``path``; HeraldConfigError saying in one line why not
    (unreadable, not UTF-8 text, not JSON, nested too deeply, a number out of range)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise HeraldConfigError(f"{path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HeraldConfigError(f"{path}: not UTF-8 text (byte {exc.start}): is it a binary file?") from None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise HeraldConfigError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise HeraldConfigError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer of thousands of digits, 1e999, NaN
        raise HeraldConfigError(f"{path}: not valid JSON ({one_line(str(exc))[:200]})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def timestamp(text: str) -> dt.datetime:
    """An ISO date or time from the command line (UTC unless it says otherwise)."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def whoami() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"
