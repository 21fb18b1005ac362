"""email and sms: render, check the recipient, deliver through the channel's provider."""

from __future__ import annotations

from actors.actions.base import Action, Done, StepRun, register, require
from actors.actions.delivery import deliver, preview
from actors.model.actions import HTML, MESSAGE, RECIPIENT, SUBJECT, EmailSpec, SmsSpec
from actors.providers import OutboundMessage, get_provider
from actors.recipients import validate_email, validate_phone


@register
class Email(EmailSpec, Action):
    """An email, plain text with an optional HTML part (autoescaped)."""

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
class Sms(SmsSpec, Action):
    """A text message."""

    async def execute(self, run: StepRun) -> Done:
        recipient = validate_phone(require(run.render(RECIPIENT), f"recipient {run.param(RECIPIENT)}"))
        message = OutboundMessage("sms", recipient, run.render(MESSAGE) or "", run.idempotency_key)
        if run.preview:  # never reaches a provider
            return preview(message)
        provider = get_provider(run.settings.sms_provider, run.settings, run.session)
        return await deliver(run, message, provider.name, provider.send, idempotent=provider.idempotent,
                             limit=run.rate_limit(self.actor))
