"""Email over SMTP (aiosmtplib): plain text with an optional HTML alternative.

A lost connection before DATA is retried; from DATA on, the outcome is
unknown (RFC 5321 4.1.1.4 / RFC 1047: a server may accept a message whose
250 reply never arrives), and SMTP has no way to ask, so it is never resent
blindly. The Message-ID is derived from the idempotency key, so a relay that
deduplicates by Message-ID sees a resend as the same message.
"""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import aiosmtplib

from actors.providers.base import OutboundMessage, ProviderResult
from actors.recipients import validate_email, validate_header
from config.errors import DeliveryUnknownError, StepError
from config.settings import Settings


def _message_id(idempotency_key: str, sender: str) -> str:
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    domain = sender.rsplit("@", 1)[-1].strip("> ") or "herald.local"
    return f"<{digest}@{domain}>"


class SmtpProvider:
    name = "smtp"
    idempotent = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def compose(self, message: OutboundMessage) -> EmailMessage:
        """The message to send; a permanent StepError, before any connection, for a
        recipient that is not exactly one address or a header that is not one line
        (``email`` would raise outside the provider's error handling, leaving the
        step *sending* though nothing was sent)."""
        recipient = validate_email(message.recipient)
        subject = validate_header("subject", message.subject or "")
        mail = EmailMessage()
        try:
            mail["From"] = validate_header("sender (HERALD_EMAIL_FROM)", self.settings.email_from)
            mail["To"] = recipient
            mail["Subject"] = subject
            mail["Date"] = formatdate(localtime=False)
            mail["Message-ID"] = _message_id(message.idempotency_key, self.settings.email_from)
            mail["X-Herald-Idempotency-Key"] = validate_header("idempotency key", message.idempotency_key)
            mail.set_content(message.body)
            if message.html_body:
                mail.add_alternative(message.html_body, subtype="html")
        except (ValueError, TypeError, IndexError) as exc:
            # Whatever else the email package cannot make a message of: nothing was sent.
            raise StepError(f"the email could not be composed: {exc}") from None
        return mail

    async def send(self, message: OutboundMessage) -> ProviderResult:
        settings = self.settings
        mail = self.compose(message)
        client = _TrackedSMTP(
            hostname=settings.smtp_host, port=settings.smtp_port,
            username=settings.smtp_username or None, password=settings.smtp_password or None,
            use_tls=settings.smtp_tls, start_tls=settings.smtp_starttls or None,
            timeout=settings.http_timeout_s,
        )
        try:
            async with client:
                await client.send_message(mail)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0]
            raise StepError(f"SMTP server refused {message.recipient}: {refusal.code} {refusal.message}",
                            permanent=refusal.code >= 500) from None
        except aiosmtplib.SMTPResponseException as exc:
            # The server answered: whatever it said, it did not take the message.
            raise StepError(f"SMTP server answered {exc.code}: {exc.message}",
                            permanent=exc.code >= 500) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            if client.data_started:
                raise DeliveryUnknownError(
                    f"SMTP server stopped answering after the message was sent ({type(exc).__name__});"
                    " it may or may not have been accepted"
                ) from None
            raise StepError(f"SMTP server {settings.smtp_host}:{settings.smtp_port} failed before the"
                            f" message was sent ({type(exc).__name__}); will retry", permanent=False) from None
        return ProviderResult("sent", mail["Message-ID"], {"provider": "smtp", "id": mail["Message-ID"]})


class _TrackedSMTP(aiosmtplib.SMTP):
    """An SMTP client that records when the message itself starts to go out.

    Before DATA a lost connection means the server took nothing, so the send
    is retried; from DATA on the server may have accepted the message
    without Herald hearing it, so the outcome is unknown.
    """

    data_started = False

    async def data(self, message: str | bytes, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.data_started = True
        return await super().data(message, **kwargs)
