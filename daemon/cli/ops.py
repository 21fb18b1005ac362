"""`herald status` and `herald doctor`: is Herald all right, asked from a shell.

``status`` is how Herald is doing now: its processes and their heartbeats, the
outbox backlog and its oldest event, the Dramatiq queues, failures in the last
hour and parked steps, judged as ``/health`` judges them (daemon.health).
``doctor`` is whether it is set up right (daemon.doctor). Both print a short
table, or JSON with ``--json``, and neither starts anything: on the embedded
default, servers that are not running are reported, not started.

Exit statuses, the same scheme for both, for scripts and monitors:

====  =====================================================================
0     status: every check passes.  doctor: every check OK.
1     status: Herald answers but a check fails (no live worker, an old
      backlog, dead letters...).  doctor: warnings, no failure.
2     status: the database or Redis cannot be reached, or there is no
      Herald here.  doctor: a check failed.  Both: a bad setting or usage.
====  =====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg

from config.database import DATABASE_ERRORS, connect
from config.errors import HeraldDatabaseError
from config.settings import Settings, redact_url
from daemon.cli.common import add_data_dir, one_line, plural, require_herald_here

if TYPE_CHECKING:  # imported where used: every `herald` command loads this module
    import redis.asyncio as aioredis

    from daemon import doctor

EXIT_OK, EXIT_ATTENTION, EXIT_BROKEN = 0, 1, 2
# A server that does not answer within these is reported as unreachable.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
RECENT_S = 3600.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status", help="how Herald is doing: processes, backlog, queues, recent failures, parked steps"
                       " (exit 0 healthy, 1 unhealthy, 2 unreachable)")
    add_data_dir(status)
    status.add_argument("--json", action="store_true", help="print JSON (the /health checks and more)")
    status.set_defaults(handler=cmd_status, error_status=EXIT_BROKEN)

    doctor_ = sub.add_parser(
        "doctor", help="check Herald's set-up: database, migrations, capture triggers, Redis, providers,"
                       " clock, settings (exit 0 all OK, 1 warnings, 2 failures)")
    add_data_dir(doctor_)
    doctor_.add_argument("--json", action="store_true", help="print JSON")
    doctor_.set_defaults(handler=cmd_doctor, error_status=EXIT_BROKEN)


# -- reaching the servers without starting them ----------------------------------------


def embedded_not_running(settings: Settings) -> tuple[str | None, str | None]:
    """On the embedded default: why PostgreSQL and Redis cannot be asked (None: running).
    Raises HeraldConfigError where there is no Herald data directory at all."""
    if not settings.embedded:
        return None, None
    from daemon.embedded import EmbeddedServers

    require_herald_here(settings)
    servers = EmbeddedServers(settings.layout)
    where = f"in {settings.data_dir}"
    return (None if servers.postgres_running() else f"Herald's embedded PostgreSQL is not running {where}",
            None if servers.redis_running() else f"Herald's embedded Redis is not running {where}")


def _secret_values(settings: Settings) -> list[tuple[str, str]]:
    """(secret, what to show instead): URLs by their redacted form, then every secret
    value (and a URL's password) by ***."""
    swaps: list[tuple[str, str]] = []
    for field in fields(Settings):
        value = getattr(settings, field.name)
        if field.repr or not isinstance(value, str) or not value:
            continue
        if field.name.endswith("_url"):
            swaps.append((value, redact_url(value)))
            password = urlsplit(value).password
            if password:
                swaps.append((password, "***"))
        else:
            swaps.append((value, "***"))
    return swaps


def scrubbed(text: str, settings: Settings) -> str:
    """``text`` on one line, with no password, key or token of ``settings`` in it (a driver's
    message can quote a URL)."""
    for secret, shown in _secret_values(settings):
        if len(secret) >= 3:
            text = text.replace(secret, shown)
    return one_line(text)


def _database_problem(exc: BaseException, settings: Settings) -> str:
    if isinstance(exc, TimeoutError):
        return f"PostgreSQL at {redact_url(settings.database_url)} did not answer within {READ_TIMEOUT_S:g} s"
    if isinstance(exc, HeraldDatabaseError):
        return str(exc)  # names the (redacted) URL already
    if isinstance(exc, (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError, asyncpg.InvalidSchemaNameError)):
        return f"Herald's tables are missing or older than this Herald ({exc}): run herald migrate"
    return f"PostgreSQL at {redact_url(settings.database_url)}: {exc}"


def _redis_problem(exc: BaseException, settings: Settings) -> str:
    reason = f"did not answer within {settings.redis_timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc)
    return f"cannot reach Redis at {redact_url(settings.redis_url)}: {reason or type(exc).__name__}"


def _redis_client(settings: Settings) -> aioredis.Redis:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s,
                                   socket_connect_timeout=settings.redis_timeout_s)


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError, OSError, TimeoutError)


# -- herald status -------------------------------------------------------------------


async def read_status(settings: Settings) -> dict[str, Any]:
    """Every /health check, failures in the last hour and parked steps, as JSON-ready data.

    ``state`` is healthy, unhealthy (a check fails) or unreachable (the database or
    Redis cannot be asked; ``errors`` says why, in one line each).
    """
    from daemon import health

    pg_error, redis_error = embedded_not_running(settings)
    found: dict[str, dict[str, Any]] = {}
    recent: dict[str, Any] | None = None
    parked: dict[str, Any] | None = None
    if pg_error is None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                conn = await connect(settings.database_url, timeout=CONNECT_TIMEOUT_S)
                try:
                    found.update(await health.database_checks(conn, settings))
                    recent = await health.recent_failures(conn, seconds=RECENT_S)
                    parked = await health.parked_steps(conn)
                finally:
                    await conn.close()
        except (*DATABASE_ERRORS, TimeoutError) as exc:
            pg_error = _database_problem(exc, settings)
    if pg_error is not None:
        found.update(health.database_down(scrubbed(pg_error, settings)))
    if redis_error is None:
        client = _redis_client(settings)
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                found.update(await health.redis_checks(client, settings))
        except _redis_errors() as exc:
            redis_error = _redis_problem(exc, settings)
        finally:
            await client.aclose()
    if redis_error is not None:
        found.update(health.redis_down(scrubbed(redis_error, settings)))
    checks = health.in_order(found)
    errors = {name: scrubbed(error, settings)
              for name, error in (("database", pg_error), ("redis", redis_error)) if error is not None}
    failing = health.failing(checks)
    state = "unreachable" if errors else "unhealthy" if failing else "healthy"
    return {"state": state, "ok": state == "healthy", "failing": failing, "errors": errors,
            "checks": checks, "failures_last_hour": recent, "parked": parked}


def status_exit(report: dict[str, Any]) -> int:
    return {"healthy": EXIT_OK, "unhealthy": EXIT_ATTENTION, "unreachable": EXIT_BROKEN}[report["state"]]


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    report = asyncio.run(read_status(settings))
    code = status_exit(report)
    if args.json:
        print(json.dumps({**report, "exit": code}, indent=2, default=str))
    elif report["errors"]:
        # Nothing worth a table: say what cannot be reached, in one line.
        print(f"herald: cannot check Herald: {'; '.join(report['errors'].values())}", file=sys.stderr)
    else:
        print(render_status(report))
    return code


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _table(rows: list[list[str]], indent: str = "") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def _check_detail(name: str, check: dict[str, Any]) -> str:
    """What one check found, in a few words."""
    if name == "database":
        return f"reachable ({check['elapsed_ms']:.1f} ms)"
    if name == "redis":
        return f"reachable ({check['round_trip_ms']:.1f} ms)"
    if name in ("daemon", "workers"):
        what = "daemon" if name == "daemon" else "worker process"
        text = f"{check['live']} live" if check["live"] else f"no live {what} (none beat in {check['liveness_s']:g} s)"
        return text + (f", {check['stale']} silent" if check["stale"] else "")
    if name == "outbox":
        text = f"{plural(check['unmatched'], 'event')} waiting"
        if check["oldest_unmatched_s"] is not None:
            text += f", oldest {_age(check['oldest_unmatched_s'])} (max {_age(check['max_lag_s'])})"
        return text
    if name == "wal_capture":
        from daemon.health import wal_capture_detail

        return wal_capture_detail(check)
    if name == "queues":
        depth = check["depth"].values()
        text = (f"{sum(d['ready'] for d in depth)} ready, {sum(d['unacked'] for d in depth)} being worked on,"
                f" {sum(d['delayed'] for d in depth)} delayed")
        return text + (f"; over {check['max_ready']}: {', '.join(check['over_max'])}" if check["over_max"] else "")
    if name == "dead_letters":
        return f"{check['total']} (max {check['max']})"
    if name == "stuck_steps":
        return (f"{check['unknown_last_24h']} parked in the last day, {check['sending_stalled']} sending on a"
                f" lost worker (max {check['max']} in all)")
    return ""


def render_status(report: dict[str, Any]) -> str:
    checks = report["checks"]
    verdict = "healthy" if report["ok"] else f"unhealthy ({', '.join(report['failing'])})"
    lines = [f"Herald is {verdict}", ""]
    lines += _table([["CHECK", "STATE", "DETAIL"]] + [
        [name.replace("_", " "), "ok" if check["ok"] else "FAIL", _check_detail(name, check)]
        for name, check in checks.items()])
    processes = [[kind, "live" if p["live"] else "silent", p["hostname"], str(p["pid"]),
                  f"{_age(p['seconds_since_heartbeat'])} ago"]
                 for kind, key in (("daemon", "instances"), ("worker", "processes"))
                 for p in checks["daemon" if kind == "daemon" else "workers"].get(key, [])]
    lines.append("")
    if processes:
        lines += _table([["PROCESS", "STATE", "HOST", "PID", "LAST HEARTBEAT"], *processes])
    else:
        lines.append("No daemon or worker process has a heartbeat.")
    lines.append("")
    lines += _table([["QUEUE", "READY", "UNACKED", "DELAYED", "DEAD"]] + [
        [queue, str(d["ready"]), str(d["unacked"]), str(d["delayed"]), str(d["dead"])]
        for queue, d in checks["queues"]["depth"].items()])
    recent, parked = report["failures_last_hour"], report["parked"]
    lines.append("")
    lines.append(f"Last hour: {plural(recent['runs'], 'run')} failed, {plural(recent['events'], 'event')}"
                 " failed to match.")
    if parked["steps"]:
        lines.append(f"Parked: {plural(parked['steps'], 'step')} of unknown outcome "
                     f"{'waits' if parked['steps'] == 1 else 'wait'} for a person (the dashboard's Failures"
                     f" page), the oldest for {_age(parked['oldest_s'])}.")
    else:
        lines.append("Parked: no step waits for a person.")
    return "\n".join(lines)


# -- herald doctor -------------------------------------------------------------------


def _start_herald(settings: Settings) -> str:
    return f"start Herald: herald up --data-dir {settings.data_dir}"


def _database_hint(settings: Settings) -> str:
    if settings.embedded:
        return _start_herald(settings)
    return "check HERALD_DATABASE_URL, and that PostgreSQL is up and reachable from this machine"


def _redis_hint(settings: Settings) -> str:
    if settings.embedded:
        return _start_herald(settings)
    return "check HERALD_REDIS_URL, and that Redis is up and reachable from this machine"


async def run_doctor(settings: Settings, clock: Callable[[], float] = time.time) -> list[doctor.Finding]:
    """Every finding: the database's, Redis's, then those needing no server."""
    from daemon import doctor

    pg_error, redis_error = embedded_not_running(settings)
    findings: list[doctor.Finding] = []
    if pg_error is None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                started = time.monotonic()
                conn = await connect(settings.database_url, timeout=CONNECT_TIMEOUT_S)
                try:
                    version = await conn.fetchval("SHOW server_version")
                    elapsed = (time.monotonic() - started) * 1000
                    found = await doctor.database_findings(conn, clock)
                finally:
                    await conn.close()
            findings.append(doctor.ok("database", f"reachable at {redact_url(settings.database_url)}"
                                      f" (PostgreSQL {version.split()[0]}, {elapsed:.0f} ms)"))
            findings.extend(found)
        except (*DATABASE_ERRORS, TimeoutError) as exc:
            pg_error = _database_problem(exc, settings)
    if pg_error is not None:
        findings.append(doctor.fail("database", scrubbed(pg_error, settings), _database_hint(settings)))
        findings += [doctor.skipped(check, "the database cannot be reached")
                     for check in ("migrations", "capture triggers", "clock")]
    if redis_error is None:
        client = _redis_client(settings)
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                findings.append(await doctor.redis_finding(client, redact_url(settings.redis_url)))
        except _redis_errors() as exc:
            redis_error = _redis_problem(exc, settings)
        finally:
            await client.aclose()
    if redis_error is not None:
        findings.append(doctor.fail("redis", scrubbed(redis_error, settings), _redis_hint(settings)))
    findings.extend(doctor.local_findings(settings))
    return [doctor.Finding(f.check, f.level, scrubbed(f.reason, settings), scrubbed(f.hint, settings))
            for f in findings]


def doctor_exit(findings: list[doctor.Finding]) -> int:
    from daemon import doctor

    return {"ok": EXIT_OK, "warn": EXIT_ATTENTION, "fail": EXIT_BROKEN}[doctor.worst(findings)]


def render_doctor(findings: list[doctor.Finding]) -> str:
    width = max(len(f.check) for f in findings)
    lines = []
    for finding in findings:
        lines.append(f"{finding.level.upper():<5} {finding.check:<{width}}  {finding.reason}")
        if finding.hint:
            lines.append(f"{'':<5} {'':<{width}}  fix: {finding.hint}")
    failures = sum(f.level == "fail" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    lines.append("")
    if failures or warnings:
        lines.append(f"herald doctor: {plural(failures, 'failure')}, {plural(warnings, 'warning')}")
    else:
        lines.append(f"herald doctor: all {plural(len(findings), 'check')} OK")
    return "\n".join(lines)


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from daemon import doctor

    findings = asyncio.run(run_doctor(settings))
    code = doctor_exit(findings)
    if args.json:
        print(json.dumps({"ok": code == EXIT_OK, "exit": code, "worst": doctor.worst(findings),
                          "findings": [f.as_json() for f in findings]}, indent=2))
    else:
        print(render_doctor(findings))
    return code
