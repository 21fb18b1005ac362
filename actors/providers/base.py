"""What every provider receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class OutboundMessage:
    channel: str  # email | sms | webhook
    recipient: str
    body: str
    idempotency_key: str
    subject: str | None = None
    html_body: str | None = None


@dataclass(frozen=True)
class ProviderResult:
    status: str  # the messages row's final status: sent | captured
    provider_message_id: str | None = None
    response: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    """``idempotent``: the provider itself deduplicates by our idempotency key,
    so a message whose outcome is unknown may safely be sent again."""

    name: str
    idempotent: bool

    async def send(self, message: OutboundMessage) -> ProviderResult:
        """Deliver ``message``; raise StepError (transient or permanent) or
        DeliveryUnknownError when the outcome cannot be known."""
        ...
