"""SMS through the Telnyx messaging API, with its Idempotency-Key header."""

from __future__ import annotations

from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.http import HttpProvider, json_body, request


class TelnyxProvider(HttpProvider):
    name = "telnyx"
    idempotent = True  # honours Idempotency-Key

    async def send(self, message: OutboundMessage) -> ProviderResult:
        _, body = await request(
            self.session, "POST", f"{self.settings.telnyx_base_url.rstrip('/')}/v2/messages",
            provider="telnyx", settings=self.settings,
            body=json_body({"from": self.settings.sms_from, "to": message.recipient, "text": message.body}),
            headers={"Authorization": f"Bearer {self.settings.telnyx_api_key}",
                     "Idempotency-Key": message.idempotency_key},
        )
        message_id = (body.get("data") or {}).get("id") if isinstance(body, dict) else None
        return ProviderResult("sent", message_id, {"provider": "telnyx", "id": message_id})
