"""Providers deliver rendered messages. Which one serves a channel is a setting."""

from __future__ import annotations

import aiohttp

from actors.providers.base import OutboundMessage, Provider, ProviderResult
from actors.providers.capture import CaptureProvider
from actors.providers.mailgun import MailgunProvider
from actors.providers.smtp import SmtpProvider
from actors.providers.telnyx import TelnyxProvider
from actors.providers.twilio import TwilioProvider
from config.errors import HeraldConfigError
from config.settings import Settings

__all__ = ["OutboundMessage", "Provider", "ProviderResult", "get_provider"]

# Settings each provider cannot work without: (attribute, environment variable).
REQUIRED = {
    "mailgun": (("mailgun_domain", "HERALD_MAILGUN_DOMAIN"), ("mailgun_api_key", "HERALD_MAILGUN_API_KEY")),
    "telnyx": (("telnyx_api_key", "HERALD_TELNYX_API_KEY"), ("sms_from", "HERALD_SMS_FROM")),
    "twilio": (("twilio_account_sid", "HERALD_TWILIO_ACCOUNT_SID"),
               ("twilio_auth_token", "HERALD_TWILIO_AUTH_TOKEN"), ("sms_from", "HERALD_SMS_FROM")),
}

_built: dict[str, Provider] = {}


def get_provider(name: str, settings: Settings, session: aiohttp.ClientSession) -> Provider:
    """The process's provider called ``name`` (built once, sharing the session)."""
    if name in _built:
        return _built[name]
    for attribute, variable in REQUIRED.get(name, ()):
        if not getattr(settings, attribute):
            raise HeraldConfigError(f"the {name} provider needs {variable}")
    provider: Provider
    if name == "capture":
        provider = CaptureProvider()
    elif name == "smtp":
        provider = SmtpProvider(settings)
    elif name == "mailgun":
        provider = MailgunProvider(settings, session)
    elif name == "telnyx":
        provider = TelnyxProvider(settings, session)
    elif name == "twilio":
        provider = TwilioProvider(settings, session)
    else:
        raise HeraldConfigError(
            f"unknown provider {name!r} (email: capture, smtp, mailgun; sms: capture, telnyx, twilio)")
    _built[name] = provider
    return provider
