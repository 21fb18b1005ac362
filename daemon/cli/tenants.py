"""`herald rate-limit`: show, set or reset a tenant's own per-recipient message limit."""

from __future__ import annotations

import argparse

import asyncpg

from config.errors import HeraldConfigError, WorkflowValidationError
from config.settings import Settings
from daemon.cli.common import add_data_dir, with_database


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    limit = sub.add_parser("rate-limit", help="show, set or reset a tenant's per-recipient message limit",
                           description="Without --per-recipient or --reset: show the tenant's limit.")
    add_data_dir(limit)
    limit.add_argument("--tenant", required=True)
    limit.add_argument("--per-recipient", type=int,
                       help="messages per channel per recipient per window (0: no limit at all)")
    limit.add_argument("--window", default="1h", help="e.g. 1h, 1d")
    limit.add_argument("--over-limit", choices=("wait", "skip"), default="wait")
    limit.add_argument("--reset", action="store_true", help="remove the tenant's own limit: the default applies")
    limit.set_defaults(handler=cmd_rate_limit, reads_input=True)


def cmd_rate_limit(settings: Settings, args: argparse.Namespace) -> int:
    from actors.rate_limits import default_rate_limit
    from daemon.tenants import check_rate_limit, describe_limit
    from daemon.triggering import check_text

    check_text(args.tenant, "--tenant")
    if args.reset and args.per_recipient is not None:
        raise HeraldConfigError("--reset and --per-recipient: give one of them")
    default = default_rate_limit(settings.recipient_limit)
    rate_limit = None
    if args.per_recipient is not None:
        rate_limit = {"per_recipient": args.per_recipient, "window": args.window, "over_limit": args.over_limit}
        try:
            check_rate_limit(rate_limit)  # before any server starts; 0 to 1,000,000, at most 10 years
        except WorkflowValidationError as exc:
            option = "--" + exc.field.rsplit(".", 1)[-1].replace("_", "-")
            raise HeraldConfigError(f"{option}: {exc.message}") from None

    async def run(conn: asyncpg.Connection) -> str:
        from daemon.tenants import (
            get_rate_limit,
            known_tenant,
            reset_rate_limit,
            set_rate_limit,
        )

        if not await known_tenant(conn, args.tenant):
            raise HeraldConfigError(f"no tenant {args.tenant!r}: it has no workflows, events or settings"
                                    " (check the id, or import its workflows first)")
        default_text = f"the default ({settings.recipient_limit}, HERALD_RECIPIENT_LIMIT): {describe_limit(default)}"
        if rate_limit is not None:
            await set_rate_limit(conn, args.tenant, rate_limit)
            return f"tenant {args.tenant}: {describe_limit(default.override(rate_limit))}"
        if args.reset:
            removed = await reset_rate_limit(conn, args.tenant)
            return (f"tenant {args.tenant}: {'its own limit removed' if removed else 'had no limit of its own'};"
                    f" {default_text}")
        own = await get_rate_limit(conn, args.tenant)
        if own is None:
            return f"tenant {args.tenant}: no limit of its own; {default_text}"
        return f"tenant {args.tenant}: {describe_limit(default.override(own))} (its own limit; {default_text})"

    print(with_database(settings, run))
    return 0
