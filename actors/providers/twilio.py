"""SMS through Twilio's Messages API (which takes no idempotency key)."""

from __future__ import annotations

import aiohttp

from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.http import HttpProvider, form_body, request


class TwilioProvider(HttpProvider):
    name = "twilio"
    # The Messages API takes no idempotency key (I-Twilio-Idempotency-Token is
    # what Twilio sends on its own webhooks), so a resend could send twice.
    idempotent = False

    async def send(self, message: OutboundMessage) -> ProviderResult:
        sid = self.settings.twilio_account_sid
        _, body = await request(
            self.session, "POST",
            f"{self.settings.twilio_base_url.rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json",
            provider="twilio", settings=self.settings,
            body=form_body({"From": self.settings.sms_from, "To": message.recipient, "Body": message.body}),
            headers={"Authorization": aiohttp.encode_basic_auth(sid, self.settings.twilio_auth_token)},
        )
        message_id = body.get("sid") if isinstance(body, dict) else None
        return ProviderResult("sent", message_id, {"provider": "twilio", "id": message_id})
