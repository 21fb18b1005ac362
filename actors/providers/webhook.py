"""Signed webhook POSTs on their own session, whose resolver vets every address.

Every attempt at one step carries the same ``Idempotency-Key`` (also as
``webhook-id``, the Standard Webhooks name, and ``X-Herald-Idempotency-Key``),
so a receiver can drop repeats. A workflow whose receiver does may say so
(``"receiver_deduplicates": true`` on the step), and an attempt of unknown
outcome is then sent again instead of being parked.

Signature: ``X-Herald-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
with HERALD_WEBHOOK_SIGNING_SECRET; receivers recompute it and reject old ``t``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp

from actors.lazy import PerProcess
from actors.netguard import resolver_kwargs, vet_url
from actors.providers.base import ProviderResult
from actors.providers.http import TrackedBody, request
from config.settings import Settings

_sessions: dict[bool, PerProcess[aiohttp.ClientSession]] = {}


async def _webhook_session(settings: Settings) -> aiohttp.ClientSession:
    """A session whose resolver applies this process's private-address rule."""
    allow = settings.webhook_allow_private

    async def build() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(**resolver_kwargs(settings)))

    return await _sessions.setdefault(allow, PerProcess(build)).get()


async def close_sessions() -> None:
    """Close the webhook sessions this process opened."""
    for holder in _sessions.values():
        session = holder.peek()
        if session is not None:
            await session.close()
    _sessions.clear()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


async def deliver_webhook(
    url: str, payload: dict[str, Any], *, settings: Settings, idempotency_key: str
) -> ProviderResult:
    # Vetted as the client will use it (yarl's normalised form), and that form is what is sent:
    # an IP literal connects without any resolver, so the check here is the only one it gets.
    target = vet_url(url, settings)
    host = target.raw_host
    body = json.dumps(payload, default=str, sort_keys=True).encode()
    # The same key on every attempt of one step, so a receiver can drop a repeat.
    headers = {"User-Agent": "Herald", "Idempotency-Key": idempotency_key, "webhook-id": idempotency_key,
               "X-Herald-Idempotency-Key": idempotency_key}
    if settings.webhook_signing_secret:
        headers["X-Herald-Signature"] = signature(settings.webhook_signing_secret, int(time.time()), body)
    status, answer = await request(
        await _webhook_session(settings), "POST", str(target), provider=f"webhook {host}", settings=settings,
        body=TrackedBody(body, "application/json"), headers=headers, allow_redirects=False,
    )
    return ProviderResult("sent", None, {"status": status, "answer": answer if isinstance(answer, dict) else None})
