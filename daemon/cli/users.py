"""`herald users` and `herald tokens`: who may use the dashboard, and the API tokens."""

from __future__ import annotations

import argparse
import getpass
import sys

import asyncpg

from config.settings import Settings
from daemon.cli.common import add_data_dir, plural, whoami, with_database


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from daemon.accounts import ROLE_HELP, ROLES

    roles = "; ".join(f"{role}: {text}" for role, text in ROLE_HELP.items())
    users = sub.add_parser("users", help="dashboard users: add, list, set-role, set-tenants, disable, enable,"
                                         " reset-password", description=f"Roles: {roles}.")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str, handler: object) -> argparse.ArgumentParser:
        parser = users_sub.add_parser(name, help=help_text)
        add_data_dir(parser)
        parser.set_defaults(handler=handler, reads_input=True)
        return parser

    add = action("add", "add a user (the password is asked for, read with --password-stdin, or made"
                        " and shown once)", cmd_add)
    add.add_argument("email")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--tenant", action="append", default=[], help="a tenant the user sees (repeat for more;"
                                                                    " an admin sees every tenant)")
    add.add_argument("--name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    action("list", "list users, their roles and tenants", cmd_list)
    role = action("set-role", "change a user's role (their sessions end)", cmd_set_role)
    role.add_argument("email")
    role.add_argument("role", choices=ROLES)
    tenants = action("set-tenants", "set the tenants a user sees (their sessions end)", cmd_set_tenants)
    tenants.add_argument("email")
    tenants.add_argument("tenants", nargs="*")
    for name, text in (("disable", "stop a user signing in (their sessions end)"), ("enable", "let a user sign in again")):
        action(name, text, cmd_disable if name == "disable" else cmd_enable).add_argument("email")
    reset = action("reset-password", "set a new password (their sessions end)", cmd_reset_password)
    reset.add_argument("email")
    reset.add_argument("--password-stdin", action="store_true")

    tokens = sub.add_parser("tokens", help="API tokens for /api/*, one tenant each: add, list, revoke")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    token_add = tokens_sub.add_parser("add", help="make a token (shown once)")
    token_add.add_argument("--tenant", required=True)
    token_add.add_argument("name", help="what the token is for, e.g. 'reporting'")
    token_list = tokens_sub.add_parser("list", help="list tokens (never the tokens themselves)")
    token_list.add_argument("--tenant")
    token_revoke = tokens_sub.add_parser("revoke", help="revoke a token by its number")
    token_revoke.add_argument("id", type=int)
    for parser, handler in ((token_add, cmd_token_add), (token_list, cmd_token_list),
                            (token_revoke, cmd_token_revoke)):
        add_data_dir(parser)
        parser.set_defaults(handler=handler, reads_input=True)


def _actor() -> str:
    return f"cli:{whoami()}"


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """The new password, and whether Herald made it (then it is shown once)."""
    from daemon.accounts import check_password, new_password

    if args.password_stdin:
        return check_password(sys.stdin.readline().rstrip("\r\n")), False
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        check_password(first)
        if getpass.getpass("Again: ") != first:
            from daemon.accounts import AccountError

            raise AccountError("the two passwords differ")
        return first, False
    return new_password(), True


def _describe(user: object) -> str:
    tenants = "every tenant" if user.is_admin else ", ".join(user.tenants)  # type: ignore[attr-defined]
    state = " (disabled)" if user.disabled else ""  # type: ignore[attr-defined]
    return f"{user.email}  {user.role}  {tenants}{state}"  # type: ignore[attr-defined]


def cmd_add(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.accounts import add_user, check_role, check_tenants, normalise_email

    normalise_email(args.email), check_role(args.role), check_tenants(args.tenant)
    password, made = _password(args)

    async def run(conn: asyncpg.Connection) -> object:
        return await add_user(conn, args.email, role=args.role, password=password, tenants=tuple(args.tenant),
                              name=args.name, by=_actor())

    user = with_database(settings, run)
    print(f"added {_describe(user)}")
    if made:
        print(f"password (shown once; change it with herald users reset-password): {password}")
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.accounts import list_users

    users = with_database(settings, list_users)
    if not users:
        print("no users yet: herald users add you@example.com --role admin")
    for user in users:
        print(_describe(user))
    return 0


def _change(settings: Settings, work: object) -> int:
    user = with_database(settings, work)  # type: ignore[arg-type]
    print(_describe(user))
    return 0


def cmd_set_role(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.accounts import set_role

    return _change(settings, lambda conn: set_role(conn, args.email, args.role, by=_actor()))


def cmd_set_tenants(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.accounts import set_tenants

    return _change(settings, lambda conn: set_tenants(conn, args.email, tuple(args.tenants), by=_actor()))


def cmd_disable(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.accounts import set_disabled

    return _change(settings, lambda conn: set_disabled(conn, args.email, True, by=_actor()))


def cmd_enable(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.accounts import set_disabled

    return _change(settings, lambda conn: set_disabled(conn, args.email, False, by=_actor()))


def cmd_reset_password(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.accounts import find_user, reset_password

    password, made = _password(args)

    async def run(conn: asyncpg.Connection) -> object:
        await find_user(conn, args.email)
        return await reset_password(conn, args.email, password, by=_actor())

    _change(settings, run)
    if made:
        print(f"password (shown once): {password}")
    return 0


def cmd_token_add(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.accounts import create_token

    token, secret = with_database(settings, lambda conn: create_token(conn, args.tenant, args.name, by=_actor()))
    print(f"token {token.id} for tenant {token.tenant_id} ({token.name}); shown once, keep it safe:\n{secret}")
    print("use it as: curl -H 'Authorization: Bearer <token>' http://127.0.0.1:8080/api/runs")
    return 0


def cmd_token_list(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.accounts import list_tokens

    tokens = with_database(settings, lambda conn: list_tokens(conn, args.tenant))
    print(plural(len(tokens), "token"))
    for token in tokens:
        used = token.last_used_at.isoformat(timespec="seconds") if token.last_used_at else "never used"
        state = "revoked" if token.revoked else "live"
        print(f"{token.id}  tenant {token.tenant_id}  {token.name}  {state}  {used}")
    return 0


def cmd_token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.accounts import revoke_token

    token = with_database(settings, lambda conn: revoke_token(conn, args.id, by=_actor()))
    print(f"token {token.id} ({token.name}, tenant {token.tenant_id}) revoked")
    return 0
