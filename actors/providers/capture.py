"""The capture provider: renders are stored in herald.messages and nothing is delivered.

It is the default on a fresh install and the only provider test runs use.
"""

from __future__ import annotations

from actors.providers.base import OutboundMessage, ProviderResult


class CaptureProvider:
    name = "capture"
    idempotent = True  # the stored row is the delivery

    async def send(self, message: OutboundMessage) -> ProviderResult:
        # The message row written before the call is the capture itself.
        return ProviderResult(status="captured", response={"captured": True})
