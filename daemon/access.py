"""What Herald's own role may do on the application's tables, checked before
`herald watch` installs anything.

Herald reads watched and related tables (the event's row, the client of a
job), installs a trigger on each watched table, inserts into the create_task
and create_note tables and updates the columns update_record may change. Its
reads must see every row: under row-level security that means Herald's role
owns the table (without FORCE ROW LEVEL SECURITY), has BYPASSRLS, or has a
policy that lets it see all rows. Whatever is missing is reported at once,
with the SQL that grants it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from config.database import quote_ident, quote_qualified

TABLE_ACCESS = """
SELECT c.relrowsecurity AS rls, c.relforcerowsecurity AS forced,
       r.rolsuper OR r.rolbypassrls AS bypass,
       pg_has_role(current_user, c.relowner, 'USAGE') AS owner,
       has_table_privilege(c.oid, 'SELECT') AS can_select,
       has_table_privilege(c.oid, 'INSERT') AS can_insert,
       has_table_privilege(c.oid, 'TRIGGER') AS can_trigger
FROM pg_class c, pg_roles r
WHERE c.oid = to_regclass($1) AND r.rolname = current_user
"""

COLUMN_PRIVILEGE = "SELECT has_column_privilege(to_regclass($1), $2, $3)"

# Permissive policies that apply to Herald's role for a command, with their conditions.
POLICIES = """
SELECT p.polname AS name, p.polpermissive AS permissive,
       coalesce(pg_get_expr(p.polqual, p.polrelid), '') AS using_expr,
       coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') AS check_expr
FROM pg_policy p
WHERE p.polrelid = to_regclass($1) AND p.polcmd::text IN ('*', $2)
  AND (0 = ANY (p.polroles) OR EXISTS (
      SELECT 1 FROM unnest(p.polroles) AS role_id WHERE pg_has_role(current_user, role_id, 'USAGE')))
"""

FUNCTION_ACCESS = "SELECT has_function_privilege('herald.capture_change()', 'EXECUTE')"
FUNCTION_OWNER = """
SELECT pg_get_userbyid(p.proowner) FROM pg_proc p
WHERE p.oid = 'herald.capture_change()'::regprocedure
"""


@dataclass
class Needs:
    """The privileges a watch needs, per table."""

    reads: dict[str, set[str]] = field(default_factory=dict)
    triggers: set[str] = field(default_factory=set)
    inserts: dict[str, str | None] = field(default_factory=dict)  # table -> column RETURNING reads
    updates: dict[str, set[str]] = field(default_factory=dict)

    def read(self, table: str, columns: set[str]) -> None:
        self.reads.setdefault(table, set()).update(columns)

    def trigger(self, table: str) -> None:
        self.triggers.add(table)

    def insert(self, table: str, returning: str | None) -> None:
        self.inserts[table] = returning

    def update(self, table: str, columns: set[str]) -> None:
        self.updates.setdefault(table, set()).update(columns)


@dataclass
class AccessReport:
    role: str
    missing: list[str] = field(default_factory=list)  # "what: GRANT ...;"
    warnings: list[str] = field(default_factory=list)

    def missing_text(self) -> str:
        return (f"role {self.role} lacks what Herald needs here; ask the database owner to run: "
                + " ".join(self.missing))


async def access_report(conn: asyncpg.Connection, needs: Needs) -> AccessReport:
    role = str(await conn.fetchval("SELECT current_user"))
    report = AccessReport(quote_ident(role))
    grantee = quote_ident(role)
    if not await conn.fetchval(FUNCTION_ACCESS):
        owner = await conn.fetchval(FUNCTION_OWNER)
        report.missing.append(
            f"(herald migrate ran as {owner}: run watch as {owner}, or as the role Herald runs as,"
            f" from the start) GRANT EXECUTE ON FUNCTION herald.capture_change() TO {grantee};")
    tables = sorted({*needs.reads, *needs.triggers, *needs.inserts, *needs.updates})
    for table in tables:
        row = await conn.fetchrow(TABLE_ACCESS, quote_qualified(table))
        if row is None:
            continue
        shown = quote_qualified(table)
        grants = []
        if (table in needs.reads or table in needs.updates) and not row["can_select"]:
            grants.append("SELECT")
        if table in needs.inserts and not row["can_insert"]:
            grants.append("INSERT")
        if table in needs.triggers and not row["can_trigger"]:
            grants.append("TRIGGER")
        if grants:
            report.missing.append(f"GRANT {', '.join(grants)} ON {shown} TO {grantee};")
        returning = needs.inserts.get(table)
        if (table in needs.inserts and table not in needs.reads and table not in needs.updates and returning
                and not await conn.fetchval(COLUMN_PRIVILEGE, shown, returning, "SELECT")):
            # An insert reads back the new row's key (RETURNING), and nothing else.
            report.missing.append(f"GRANT SELECT ({quote_ident(returning)}) ON {shown} TO {grantee};")
        columns = [c for c in sorted(needs.updates.get(table, ()))
                   if not await conn.fetchval(COLUMN_PRIVILEGE, shown, c, "UPDATE")]
        if columns:
            report.missing.append(f"GRANT UPDATE ({', '.join(map(quote_ident, columns))}) ON {shown} TO {grantee};")
        if row["rls"] and not (row["bypass"] or (row["owner"] and not row["forced"])):
            await _check_policies(conn, report, table, needs)
    return report


async def _check_policies(conn: asyncpg.Connection, report: AccessReport, table: str, needs: Needs) -> None:
    """Row-level security applies to Herald's role on ``table``: do its policies let Herald
    see (and write) every row?"""
    shown = quote_qualified(table)
    commands = [("SELECT", "read", "using_expr")]
    if table in needs.inserts:
        commands.append(("INSERT", "insert into", "check_expr"))
    if table in needs.updates:
        commands.append(("UPDATE", "update", "using_expr"))
    for command, verb, expression in commands:
        policies = await conn.fetch(POLICIES, shown, {"SELECT": "r", "INSERT": "a", "UPDATE": "w"}[command])
        permissive = [p for p in policies if p["permissive"]]
        restrictive = [p for p in policies if not p["permissive"]]
        if any(p[expression] == "true" for p in permissive) and not restrictive:
            continue
        fix = (f"ALTER ROLE {report.role} BYPASSRLS; or CREATE POLICY herald_{command.lower()} ON {shown}"
               f" FOR {command} TO {report.role} {'WITH CHECK' if command == 'INSERT' else 'USING'} (true);")
        if not permissive:
            report.missing.append(f"(row-level security on {shown} hides every row from {report.role}) {fix}")
        else:
            names = ", ".join(p["name"] for p in policies)
            report.warnings.append(
                f"row-level security on {shown} lets {report.role} {verb} only the rows its policies"
                f" ({names}) allow; Herald may miss rows. To see them all: {fix}")
