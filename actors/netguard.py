"""Where a webhook may go: http(s) only, allowed hosts only, and no private networks.

Loopback, link-local (cloud metadata at 169.254.169.254), private, shared,
multicast, reserved and unspecified addresses are refused unless
HERALD_WEBHOOK_ALLOW_PRIVATE is set. Two checks, both needed:

* :func:`vet_url` judges the host the HTTP client will really use: the URL
  as yarl (and so aiohttp) normalises it. ``http://１２７.０.０.１/``,
  ``http://127。0。0。1/`` and ``http://①②⑦.⓪.⓪.①/`` all become
  ``127.0.0.1``, and aiohttp connects to an IP literal without asking any
  resolver, so the literal must be refused here, in every spelling (IPv6,
  IPv4-mapped, NAT64/6to4/Teredo-embedded, and the legacy decimal, octal and
  hex IPv4 forms such as ``2130706433`` or ``0x7f.1``). A host that is not
  plain ASCII after IDNA encoding, or holds characters no host name has, is
  refused outright.
* :class:`VettingResolver` checks the addresses a name resolves to when the
  connection is made, so a name that resolves to a public address when
  checked and a private one when connecting (DNS rebinding) is refused too.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from fnmatch import fnmatch
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from config.errors import StepError
from config.settings import Settings

HINT = "set HERALD_WEBHOOK_ALLOW_PRIVATE=true to allow"

# A DNS name as it goes on the wire (after IDNA): letters, digits, '-' and '_' in
# dot-separated labels of 1-63 characters, 253 at most, an optional final dot.
_LABEL = re.compile(r"^[a-z0-9_-]{1,63}$")
_MAX_NAME = 253
# NAT64's well-known prefix (RFC 6052) and the local-use one (RFC 8215) carry an IPv4 address.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (and may be routed to)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in network for network in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _refusal(ip: IPAddress) -> str | None:
    for kind, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                       ("unspecified", ip.is_unspecified), ("multicast", ip.is_multicast),
                       ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return f"{kind} address"
    if not ip.is_global:
        return "non-public address"
    return None


def address_refusal(address: str) -> str | None:
    """Why a webhook may not connect to this IP address, or None."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(ip):
            refusal = _refusal(inner)
            if refusal:
                return refusal
    return _refusal(ip)


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form a resolver or socket would take:
    ``127.0.0.1``, ``::1``, ``fe80::1%eth0``, and the legacy ``2130706433``,
    ``127.1``, ``0x7f.1``, ``0177.0.0.1``; None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host or not re.fullmatch(r"[0-9a-fx.]+", host) or not host[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))  # what getaddrinfo would make of it
    except OSError:
        return None


def vet_url(url: str, settings: Settings) -> URL:
    """The URL as the HTTP client will use it, after the scheme, host, allowlist
    and (for an IP literal) private-address checks. Raises a permanent StepError."""
    try:
        parsed = URL(url)
        host = parsed.raw_host  # IDNA-encoded, normalised: what aiohttp connects to
    except (ValueError, TypeError):
        raise StepError(f"webhook url {url!r} refused: not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise StepError(f"webhook url {url!r} refused: only http and https URLs with a host")
    host = host.lower()
    literal = ip_literal(host)
    if literal is None:
        name = host.removesuffix(".")
        if (not name.isascii() or len(name) > _MAX_NAME
                or not all(_LABEL.match(label) for label in name.split("."))):
            raise StepError(f"webhook url {url!r} refused: {host!r} is not a valid host name")
    shown = str(literal) if literal is not None else host
    if settings.webhook_allowlist:
        names = {shown.rstrip("."), (parsed.host or "").lower().rstrip(".")} - {""}
        if not any(fnmatch(name, pattern.lower()) for name in names for pattern in settings.webhook_allowlist):
            raise StepError(f"webhook to {shown} refused: not in HERALD_WEBHOOK_ALLOWLIST")
    if literal is not None:
        spelled = "" if host == shown else f" (written {host!r})"
        refusal = None if settings.webhook_allow_private else address_refusal(str(literal))
        if refusal:
            raise StepError(f"webhook to {shown}{spelled} refused: {refusal}; {HINT}")
        if spelled and isinstance(literal, ipaddress.IPv4Address):
            # 2130706433, 127.1, 0x7f.1: aiohttp refuses or resolves these itself; say so once.
            raise StepError(f"webhook to {shown}{spelled} refused: write the address as {shown}")
    return parsed


def check_url(url: str, settings: Settings) -> str:
    """The checks of :func:`vet_url`; returns the host it will connect to."""
    parsed = vet_url(url, settings)
    assert parsed.raw_host is not None
    return parsed.raw_host.lower()


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
