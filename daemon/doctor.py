"""`herald doctor`: is Herald set up right? Each check a finding: OK, WARN or FAIL,
with a one-line reason and, where something is wrong, how to fix it.

The checks:

- **settings** (no server needed): the configured email and SMS providers have
  every credential they need (the variable missing is named; no value is ever
  shown), and settings that work against each other or against Herald's users
  (a lease no longer than the actor time limit, no per-recipient limit,
  webhooks allowed to reach private addresses, a dashboard listening everywhere
  that answers to no name);
- **database**: reachable; Herald's migrations all applied (and none unknown to
  this Herald); every watched table still there with both of Herald's capture
  triggers installed and enabled; this machine's clock against PostgreSQL's;
- **redis**: reachable (a PING).

The functions take what they check and return findings; the command
(daemon.cli.ops) reaches the servers and prints them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import asyncpg
import redis.asyncio as aioredis

from config.database import migration_files, quote_qualified
from config.settings import VARIABLES, Settings, parse_recipient_limit
from daemon import health_reads
from daemon.capture import CAPTURE_TRIGGERS
from daemon.wal_capture import PUBLICATION

Level = Literal["ok", "warn", "fail", "skip"]

# Delays, rate-limit waits, Retry-After times, time triggers and webhook signatures mix this
# machine's clock with PostgreSQL's: past these, the difference shows.
CLOCK_SKEW_WARN_S = 2.0
CLOCK_SKEW_FAIL_S = 30.0
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]", "*")


@dataclass(frozen=True)
class Finding:
    """One thing ``herald doctor`` found: ``check`` is what was looked at."""

    check: str
    level: Level
    reason: str
    hint: str = ""

    def as_json(self) -> dict[str, str]:
        return asdict(self)


def ok(check: str, reason: str) -> Finding:
    return Finding(check, "ok", reason)


def warn(check: str, reason: str, hint: str) -> Finding:
    return Finding(check, "warn", reason, hint)


def fail(check: str, reason: str, hint: str) -> Finding:
    return Finding(check, "fail", reason, hint)


def skipped(check: str, reason: str) -> Finding:
    return Finding(check, "skip", reason)


def var(name: str) -> str:
    """The environment variable of a Settings field: ``lease_s`` -> ``HERALD_LEASE``."""
    return VARIABLES[name]


# -- providers -------------------------------------------------------------------

CHANNEL_NAMES = {"email": "emails", "sms": "text messages"}
# What each provider cannot send without (Settings fields).
REQUIRED: dict[str, tuple[str, ...]] = {
    "mailgun": ("mailgun_domain", "mailgun_api_key"),
    "telnyx": ("telnyx_api_key", "sms_from"),
    "twilio": ("twilio_account_sid", "twilio_auth_token", "sms_from"),
}


def provider_findings(settings: Settings) -> list[Finding]:
    """The email and SMS providers: configured with what they need to deliver."""
    findings = []
    for channel, field in (("email", "email_provider"), ("sms", "sms_provider")):
        provider = settings.provider_for(channel)
        check = f"{channel} provider"
        if provider == "capture":
            reason = f"capture: {CHANNEL_NAMES[channel]} are stored for viewing, never delivered"
            if settings.embedded:
                findings.append(ok(check, reason))
            else:
                # With servers of its own configured, Herald is likely deployed for real.
                findings.append(warn(check, reason, f"set {var(field)} to a provider that delivers"))
            continue
        missing = [var(name) for name in REQUIRED.get(provider, ()) if not getattr(settings, name)]
        if provider == "smtp":
            findings.extend(_smtp(settings, check))
            continue
        if missing:
            findings.append(fail(check, f"{provider}: {_listed(missing)} {_is_are(missing)} not set",
                                 f"set {_listed(missing)} (in Herald's environment file)"))
        else:
            named = _listed([var(name) for name in REQUIRED[provider]])
            findings.append(ok(check, f"{provider}: {named} set"))
    if settings.email_provider in ("smtp", "mailgun") and settings.email_from.endswith("@localhost>"):
        findings.append(warn("email provider", f"{var('email_from')} is the default, an address at localhost:"
                             " receiving servers reject or junk it", f"set {var('email_from')} to an address"
                             " of a domain you send from"))
    return findings


def _smtp(settings: Settings, check: str) -> list[Finding]:
    user, password = settings.smtp_username, settings.smtp_password
    where = f"smtp via {settings.smtp_host}:{settings.smtp_port}"
    if bool(user) != bool(password):
        present, absent = ("smtp_username", "smtp_password") if user else ("smtp_password", "smtp_username")
        return [fail(check, f"{where}: {var(absent)} is not set but {var(present)} is",
                     f"set both {var('smtp_username')} and {var('smtp_password')}, or neither")]
    if not user:
        return [ok(check, f"{where}, without authentication")]
    if not (settings.smtp_tls or settings.smtp_starttls) and not _loopback(settings.smtp_host):
        return [warn(check, f"{where}: the SMTP password would cross the network unencrypted",
                     f"set {var('smtp_starttls')}=true (or {var('smtp_tls')}=true for port 465)")]
    return [ok(check, f"{where}, {var('smtp_username')} and {var('smtp_password')} set")]


def _loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _is_are(names: list[str]) -> str:
    return "is" if len(names) == 1 else "are"


# -- settings that look wrong -----------------------------------------------------


def settings_findings(settings: Settings) -> list[Finding]:
    """Settings that load but work against each other or against the people Herald messages."""
    findings = []
    if settings.lease_s <= settings.actor_time_limit_s:
        findings.append(warn(
            "settings", f"{var('lease_s')} ({settings.lease_s:g} s) is not above {var('actor_time_limit_s')}"
            f" ({settings.actor_time_limit_s:g} s): work still running when its lease ends is sent again",
            f"raise {var('lease_s')} or lower {var('actor_time_limit_s')} below it"))
    if settings.health_outbox_lag_s < settings.sweep_interval_s:
        findings.append(warn(
            "settings", f"{var('health_outbox_lag_s')} ({settings.health_outbox_lag_s:g} s) is below"
            f" {var('sweep_interval_s')} ({settings.sweep_interval_s:g} s): an event whose notification was"
            " missed waits for the next sweep, so health fails on ordinary delays",
            f"set {var('health_outbox_lag_s')} to a few sweeps (default 60)"))
    limit, _window = parse_recipient_limit(settings.recipient_limit)
    if limit == 0:
        findings.append(warn(
            "settings", f"{var('recipient_limit')} is 0: no limit on messages to one person, so a workflow"
            " that loops can flood someone", f"set {var('recipient_limit')} (default 5/1h); tenants that"
            " need more can have their own (herald rate-limit)"))
    if settings.webhook_allow_private:
        findings.append(warn(
            "settings", f"{var('webhook_allow_private')} is true: webhook steps may call loopback, link-local"
            " and private addresses (this machine, the cloud metadata service, internal services)",
            f"unset it outside development, and list the hosts webhooks need in {var('webhook_allowlist')}"))
    if settings.dashboard_host.strip() in WILDCARD_HOSTS and not settings.dashboard_allowed_hosts:
        findings.append(warn(
            "settings", f"{var('dashboard_host')} is {settings.dashboard_host!r} (every address) but"
            f" {var('dashboard_allowed_hosts')} is empty: requests by any name but localhost are refused",
            f"set {var('dashboard_allowed_hosts')} to the names people reach the dashboard by"))
    if not findings:
        findings.append(ok("settings", "nothing looks wrong"))
    return findings


def local_findings(settings: Settings) -> list[Finding]:
    """The checks that need no server."""
    return [*provider_findings(settings), *settings_findings(settings)]


# -- database --------------------------------------------------------------------

APPLIED = "SELECT version, name FROM herald.schema_migrations ORDER BY version"

# Each watched table: whether it still exists, its kind, and its triggers named
# like Herald's capture triggers: the writes they fire on (pg_trigger.tgtype),
# their enabled state (pg_trigger.tgenabled: O origin and A always fire; D
# disabled; R only on replicas) and whether they call Herald's function.
TRIGGERS = """
SELECT w.table_name, w.capture, rel.oid IS NOT NULL AS present, c.relkind::text AS kind, t.tgname::text AS trigger,
       t.tgtype::int AS type, t.tgenabled::text AS enabled,
       t.tgfoid IN (SELECT p.oid FROM pg_proc p
                    WHERE p.proname = 'capture_change' AND p.pronamespace = 'herald'::regnamespace) AS herald
FROM herald.watched_tables w
LEFT JOIN LATERAL (
    SELECT to_regclass(format('%I.%I', split_part(w.table_name, '.', 1),
                              substr(w.table_name, strpos(w.table_name, '.') + 1))) AS oid
) rel ON true
LEFT JOIN pg_class c ON c.oid = rel.oid
LEFT JOIN pg_trigger t ON t.tgrelid = rel.oid AND t.tgname = ANY ($1::text[])
ORDER BY w.table_name, t.tgname
"""

# The writes a trigger fires on: pg_trigger.tgtype's bits; and its per-row bit.
INSERTS, DELETES, UPDATES = 4, 8, 16
WRITES = {"inserts": INSERTS, "deletes": DELETES, "updates": UPDATES}
ROW = 1
# What `herald watch` installs (daemon/capture.py) and the writes each captures:
# per statement, or per row on a partitioned table.
EXPECTED = {"herald_capture": INSERTS, "herald_capture_update": UPDATES, "herald_capture_delete": DELETES}
EXPECTED_PARTITIONED = {"herald_capture": INSERTS | DELETES, "herald_capture_update": UPDATES}


def _writes(bits: int) -> str:
    return " and ".join(name for name, bit in WRITES.items() if bits & bit)


@dataclass(frozen=True)
class _Trigger:
    type: int
    enabled: str
    herald: bool

ENABLED_STATES = {"O", "A"}
DISABLED_STATES = {"D": "disabled", "R": "set to fire only on replicas"}


async def migration_findings(conn: asyncpg.Connection) -> list[Finding]:
    """Herald's migrations: all that this Herald ships applied, none it does not know."""
    check = "migrations"
    if await conn.fetchval("SELECT to_regclass('herald.schema_migrations')") is None:
        return [fail(check, "Herald's schema is not in this database", "run: herald migrate")]
    applied = {row["version"]: row["name"] for row in await conn.fetch(APPLIED)}
    shipped = {version: name for version, name, _sql in migration_files()}
    pending = [shipped[v] for v in sorted(shipped) if v not in applied]
    unknown = [applied[v] for v in sorted(applied) if v not in shipped]
    findings = []
    if pending:
        findings.append(fail(check, f"{len(pending)} of {len(shipped)} not applied: {', '.join(pending)}",
                             "run: herald migrate (then restart the daemon and workers)"))
    if unknown:
        findings.append(warn(check, f"the database has migrations this Herald does not ship: {', '.join(unknown)}"
                             " (a newer Herald migrated it)", "run the newer Herald on every machine"))
    if not findings:
        findings.append(ok(check, f"all {len(shipped)} applied (latest {shipped[max(shipped)]})"))
    return findings


async def trigger_findings(conn: asyncpg.Connection) -> list[Finding]:
    """Every watched table still there, its inserts, updates and deletes each
    captured by an installed, enabled trigger of Herald's."""
    check = "capture triggers"
    tables: dict[str, tuple[bool, str, dict[str, _Trigger]]] = {}
    for row in await conn.fetch(TRIGGERS, list(CAPTURE_TRIGGERS)):
        kind = "wal" if row["capture"] == "wal" else row["kind"]
        _present, _kind, triggers = tables.setdefault(row["table_name"], (row["present"], kind, {}))
        if row["trigger"] is not None:
            triggers[row["trigger"]] = _Trigger(row["type"], row["enabled"], row["herald"])
    if not tables:
        return [warn(check, "no table is watched: no change becomes an event",
                     "run: herald watch TABLE --tenant-column COLUMN")]
    findings = []
    rewatch = "run `herald watch {table}` again, with the options it was watched with"
    for table, (present, kind, triggers) in tables.items():
        found_before = len(findings)
        if not present:
            literal = table.replace("'", "''")
            findings.append(fail(
                check, f"{table} is watched but no longer exists: nothing captures its changes",
                f"restore it, or stop watching it: DELETE FROM herald.watched_tables WHERE table_name = '{literal}';"))
            continue
        if kind == "wal":  # captured from the WAL (wal_findings): a trigger of Herald's there is one too many
            findings.extend(fail(check, f"{table} is captured from the WAL and also has trigger {name}: its"
                                 f" {_writes(trigger.type)} would be events twice", rewatch.format(table=table))
                            for name, trigger in triggers.items() if trigger.herald)
            continue
        # Writes some trigger of Herald's captures (one a Herald before migration
        # 019 installed per row captures inserts and deletes as herald_capture),
        # or that a finding about a trigger there already names.
        covered = 0
        for name, trigger in triggers.items():
            what = _writes(trigger.type)
            covered |= trigger.type
            if not trigger.herald:
                findings.append(fail(check, f"{table}: trigger {name} is not Herald's (it calls another"
                                     f" function): its {what} are not captured", rewatch.format(table=table)))
            elif trigger.enabled not in ENABLED_STATES:
                state = DISABLED_STATES.get(trigger.enabled, f"in state {trigger.enabled!r}")
                findings.append(fail(
                    check, f"{table}: trigger {name} is {state}: its {what} are not captured",
                    f"as the table's owner: ALTER TABLE {quote_qualified(table)} ENABLE TRIGGER {name};"))
        expected = EXPECTED_PARTITIONED if kind == "p" else EXPECTED
        for name, bits in expected.items():
            if name not in triggers and bits & ~covered:
                findings.append(fail(check, f"{table} has no {name} trigger: its {_writes(bits & ~covered)} are"
                                     " not captured", rewatch.format(table=table)))
        per_row = [name for name, trigger in triggers.items() if trigger.type & ROW and trigger.herald]
        if kind == "r" and per_row and len(findings) == found_before:
            # Watched before migration 019, which could not move it: every write is
            # captured, each row by a trigger call of its own.
            findings.append(warn(check, f"{table} is captured per row ({', '.join(per_row)}): correct, but its"
                                 " bulk writes cost several times what capture per statement costs",
                                 rewatch.format(table=table)))
    if not findings:
        findings.append(ok(check, f"installed and enabled on {_count(len(tables), 'watched table')}"))
    return findings


# Tables captured from the WAL, and those of them not published whole (what
# reading them needs, daemon/wal_setup.py); their slot's state is the health
# check's (daemon/health_reads.py, WAL_CAPTURE).
WAL_TABLES = """
SELECT coalesce((SELECT array_agg(w.table_name ORDER BY w.table_name) FROM herald.watched_tables w
                 WHERE w.capture = 'wal'), '{}') AS tables,
       coalesce((SELECT array_agg(w.table_name ORDER BY w.table_name) FROM herald.watched_tables w
                 JOIN pg_class c ON c.oid = to_regclass(format('%I.%I', split_part(w.table_name, '.', 1),
                                                               substr(w.table_name, strpos(w.table_name, '.') + 1)))
                 WHERE w.capture = 'wal' AND (c.relreplident <> 'f' OR NOT EXISTS (
                     SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                     WHERE p.pubname = $1 AND pr.prrelid = c.oid))), '{}') AS unpublished
"""
# The WAL a slot keeps beyond which the doctor warns: the daemon is down or behind.
WAL_RETAINED_WARN_BYTES = 1 << 30


async def wal_findings(conn: asyncpg.Connection) -> list[Finding]:
    """Tables captured from the WAL: the slot there and read, each table published whole."""
    check = "WAL capture"
    published = await conn.fetchrow(WAL_TABLES, PUBLICATION)
    tables = list(published["tables"])
    if not tables:
        return []
    state = await health_reads.wal_capture(conn)
    rewatch = f"run `herald watch {tables[0]} --capture wal` again, with the options it was watched with"
    named = ", ".join(tables)
    if state["wal_level"] != "logical":
        return [fail(check, f"wal_level is {state['wal_level']}: the changes of {named} cannot be read",
                     "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL")]
    if not state["slot_exists"] or state["wal_status"] == "lost":
        what = "was invalidated (the server removed WAL it still needed)" if state["slot_exists"] else "is missing"
        return [fail(check, f"the replication slot {state['slot'] or ''} {what}: changes of {named} made"
                     " since are not events", rewatch)]
    findings = [fail(check, f"{table} is not published with REPLICA IDENTITY FULL: its changes are not"
                     " read whole", rewatch.replace(tables[0], table)) for table in published["unpublished"]]
    retained = f"it keeps {state['retained_bytes'] / (1 << 20):.0f} MB of WAL"
    if state["retained_bytes"] > WAL_RETAINED_WARN_BYTES:
        findings.append(warn(check, f"the slot {state['slot']}: {retained}, the daemon is down or behind"
                             " (`herald status`)",
                             "start the daemon; set max_slot_wal_keep_size to bound what the server keeps"))
    if not findings:
        findings.append(ok(check, f"{_count(len(tables), 'table')} read from slot {state['slot']}, {retained}"))
    return findings


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


async def clock_skew_s(conn: asyncpg.Connection, clock: Callable[[], float] = time.time) -> float:
    """PostgreSQL's clock minus this machine's, in seconds (positive: this machine is behind),
    read against the middle of the round trip."""
    before = clock()
    server = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
    after = clock()
    return float(server) - (before + after) / 2


def clock_finding(skew_s: float) -> Finding:
    check = "clock"
    side = "behind" if skew_s > 0 else "ahead of"
    text = f"this machine's clock is {abs(skew_s):.1f} s {side} PostgreSQL's"
    hint = "synchronise the clocks of this machine and the database server (NTP: chrony, systemd-timesyncd)"
    why = ": delays, rate-limit waits, Retry-After times, time triggers and webhook signatures mix the two"
    if abs(skew_s) > CLOCK_SKEW_FAIL_S:
        return fail(check, text + why, hint)
    if abs(skew_s) > CLOCK_SKEW_WARN_S:
        return warn(check, text + why, hint)
    return ok(check, f"within {CLOCK_SKEW_WARN_S:g} s of PostgreSQL's ({skew_s:+.3f} s)")


async def database_findings(conn: asyncpg.Connection, clock: Callable[[], float] = time.time) -> list[Finding]:
    """Migrations, capture triggers and the clock, on a reachable database."""
    findings = [*await migration_findings(conn)]
    if await conn.fetchval("SELECT to_regclass('herald.watched_tables')") is None:
        findings.append(skipped("capture triggers", "Herald's schema is not installed"))
    else:
        findings.extend(await trigger_findings(conn))
        findings.extend(await wal_findings(conn))
    findings.append(clock_finding(await clock_skew_s(conn, clock)))
    return findings


# -- redis -------------------------------------------------------------------------


async def redis_finding(client: aioredis.Redis, shown_url: str) -> Finding:
    """A PING, timed; raises the client's errors."""
    started = time.monotonic()
    await client.ping()
    return ok("redis", f"reachable at {shown_url} ({(time.monotonic() - started) * 1000:.1f} ms)")


def worst(findings: list[Finding]) -> Level:
    levels = {finding.level for finding in findings}
    return "fail" if "fail" in levels else "warn" if "warn" in levels else "ok"
