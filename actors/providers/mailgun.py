"""Email through the Mailgun HTTP API; the idempotency key rides along as a
custom variable (and header) so a delivery can be reconciled later."""

from __future__ import annotations

import aiohttp

from actors.providers.base import OutboundMessage, ProviderResult
from actors.providers.http import HttpProvider, form_body, request
from actors.recipients import validate_email, validate_header


class MailgunProvider(HttpProvider):
    name = "mailgun"
    idempotent = False  # the key is only recorded, for reconciliation by a person

    async def send(self, message: OutboundMessage) -> ProviderResult:
        # Mailgun reads a list out of "to" and headers out of the fields: one address,
        # one-line headers, refused (permanently, before any request) otherwise.
        form = {
            "from": validate_header("sender (HERALD_EMAIL_FROM)", self.settings.email_from),
            "to": validate_email(message.recipient),
            "subject": validate_header("subject", message.subject or ""), "text": message.body,
            "v:herald_idempotency_key": message.idempotency_key,
            "h:X-Herald-Idempotency-Key": message.idempotency_key,
        }
        if message.html_body:
            form["html"] = message.html_body
        _, body = await request(
            self.session, "POST",
            f"{self.settings.mailgun_base_url.rstrip('/')}/v3/{self.settings.mailgun_domain}/messages",
            provider="mailgun", settings=self.settings, body=form_body(form),
            headers={"Authorization": aiohttp.encode_basic_auth("api", self.settings.mailgun_api_key)},
        )
        message_id = body.get("id") if isinstance(body, dict) else None
        return ProviderResult("sent", message_id, {"provider": "mailgun", "id": message_id})
