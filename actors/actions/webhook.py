"""webhook: POST the rendered JSON payload to a URL, signed, to allowed hosts only."""

from __future__ import annotations

import json
from typing import Any

from actors.actions.base import Action, Done, StepRun, register, require
from actors.actions.delivery import deliver
from actors.model.actions import PAYLOAD, RECEIVER_DEDUPLICATES, URL, WebhookSpec
from actors.netguard import vet_url
from actors.providers import OutboundMessage, ProviderResult
from actors.providers.webhook import deliver_webhook


def default_payload(context: dict[str, Any]) -> dict[str, Any]:
    """Without a payload: the event and the entity's row, old and new."""
    event = context.get("event", {})
    entity = event.get("entity")
    return {"event": dict(event), "entity": context.get(entity) if entity else None,
            "old": context.get("old"), "new": context.get("new")}


@register
class Webhook(WebhookSpec, Action):
    """POST the rendered JSON payload, signed."""

    async def execute(self, run: StepRun) -> Done:
        url = require(run.render(URL), "webhook url")
        raw = run.param(PAYLOAD)
        payload = run.render_object(raw, "payload") if raw is not None else default_payload(run.context)
        run.rendered["payload"] = payload
        body = json.dumps(payload, default=str, sort_keys=True)

        async def send(message: OutboundMessage) -> ProviderResult:
            return await deliver_webhook(url, payload, settings=run.settings,
                                         idempotency_key=message.idempotency_key)

        message = OutboundMessage("webhook", url, body, run.idempotency_key)
        if run.preview:  # never reaches the network; the URL is judged as a send would judge it
            vet_url(url, run.settings)
            return Done({"preview": True, "channel": "webhook", "url": url, "payload": payload})
        return await deliver(run, message, "webhook", send, idempotent=run.param(RECEIVER_DEDUPLICATES) is True)
