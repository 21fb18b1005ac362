"""Providers deliver rendered messages. Which one serves a channel is a setting."""

from __future__ import annotations

from actors.providers.base import OutboundMessage, Provider, ProviderResult
from actors.providers.capture import CaptureProvider
from config.errors import HeraldConfigError

__all__ = ["OutboundMessage", "Provider", "ProviderResult", "get_provider"]

_PROVIDERS: dict[str, Provider] = {"capture": CaptureProvider()}


def get_provider(name: str) -> Provider:
    try:
        return _PROVIDERS[name]
    except KeyError:
        raise HeraldConfigError(
            f"unknown provider {name!r} (available: {', '.join(sorted(_PROVIDERS))})"
        ) from None
