"""Recipient checks before sending: a malformed address fails at once, never retried."""

from __future__ import annotations

import re

from config.errors import StepError

# Deliberately simple: one @, no spaces, a dotted domain. The provider judges the rest.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_NOISE = re.compile(r"[\s\-().]")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def validate_email(value: str) -> str:
    address = value.strip()
    if not _EMAIL.match(address):
        raise StepError(f"invalid email address {address!r}")
    return address


def validate_phone(value: str) -> str:
    """An E.164 number (``+15550101001``); spaces, dashes and brackets are dropped."""
    number = _PHONE_NOISE.sub("", value.strip())
    if not _E164.match(number):
        raise StepError(f"invalid phone number {value.strip()!r}: expected E.164, like +15550101001")
    return number
