"""email and sms: render, check the recipient, deliver through the channel's provider."""

from __future__ import annotations

from actors.actions.base import Action, Done, Param, StepRun, register, require
from actors.actions.delivery import deliver, preview
from actors.providers import OutboundMessage, get_provider
from actors.recipients import validate_email, validate_phone

RECIPIENT = Param("recipient", required=True, aliases=("to",))
SUBJECT = Param("subject", required=True)
MESSAGE = Param("message", required=True, aliases=("body", "text"))
HTML = Param("html", aliases=("html_body",))


@register
class Email(Action):
    """An email, plain text with an optional HTML part (autoescaped)."""

    name = "email"
    actor = "email"
    params = (RECIPIENT, SUBJECT, MESSAGE, HTML)

    async def execute(self, run: StepRun) -> Done:
        recipient = validate_email(require(run.render(RECIPIENT), f"recipient {run.param(RECIPIENT)}"))
        message = OutboundMessage(
            "email", recipient, run.render(MESSAGE) or "", run.idempotency_key,
            subject=run.render(SUBJECT), html_body=run.render(HTML, html=True),
        )
        if run.preview:  # never reaches a provider
            return preview(message)
        provider = get_provider(run.settings.email_provider, run.settings, run.session)
        return await deliver(run, message, provider.name, provider.send, idempotent=provider.idempotent,
                             limit=run.rate_limit(self.actor))


@register
class Sms(Action):
    """A text message."""

    name = "sms"
    actor = "sms"
    params = (RECIPIENT, MESSAGE)

    async def execute(self, run: StepRun) -> Done:
        recipient = validate_phone(require(run.render(RECIPIENT), f"recipient {run.param(RECIPIENT)}"))
        message = OutboundMessage("sms", recipient, run.render(MESSAGE) or "", run.idempotency_key)
        if run.preview:  # never reaches a provider
            return preview(message)
        provider = get_provider(run.settings.sms_provider, run.settings, run.session)
        return await deliver(run, message, provider.name, provider.send, idempotent=provider.idempotent,
                             limit=run.rate_limit(self.actor))
