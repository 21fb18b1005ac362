"""Where a webhook may go: http(s) only, allowed hosts only, and no private networks.

Loopback, link-local (cloud metadata at 169.254.169.254), private, shared,
multicast, reserved and unspecified addresses are refused unless
HERALD_WEBHOOK_ALLOW_PRIVATE is set. The check runs on the addresses the
connection actually uses (:class:`VettingResolver`), so a name that resolves
to a public address when checked and a private one when connecting (DNS
rebinding) is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from fnmatch import fnmatch
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from config.errors import StepError
from config.settings import Settings

HINT = "set HERALD_WEBHOOK_ALLOW_PRIVATE=true to allow"


def address_refusal(address: str) -> str | None:
    """Why a webhook may not connect to this IP address, or None."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                       ("unspecified", ip.is_unspecified), ("multicast", ip.is_multicast),
                       ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return f"{kind} address"
    if not ip.is_global:
        return "non-public address"
    return None


def check_url(url: str, settings: Settings) -> str:
    """Scheme and allowlist checks on the URL itself; returns its host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StepError(f"webhook url {url!r} refused: only http and https URLs with a host")
    host = parts.hostname.lower()
    if settings.webhook_allowlist and not any(fnmatch(host, pattern.lower())
                                              for pattern in settings.webhook_allowlist):
        raise StepError(f"webhook to {host} refused: not in HERALD_WEBHOOK_ALLOWLIST")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return host
    refusal = None if settings.webhook_allow_private else address_refusal(str(literal))
    if refusal:
        raise StepError(f"webhook to {host} refused: {refusal}; {HINT}")
    return host


class VettingResolver(AbstractResolver):
    """Resolves names like aiohttp does, then refuses disallowed addresses."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self.allow_private:
            for result in results:
                refusal = address_refusal(result["host"])
                if refusal:
                    raise StepError(f"webhook to {host} refused: it resolves to a {refusal}"
                                    f" ({result['host']}); {HINT}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def resolver_kwargs(settings: Settings) -> dict[str, Any]:
    return {"resolver": VettingResolver(settings.webhook_allow_private)}
