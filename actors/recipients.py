"""Recipient and header checks before sending: malformed input fails at once, never retried.

One recipient is one address. A rendered ``recipient`` such as
``victim@example.com,all-staff`` must not become two: SMTP and Mailgun both
read a list out of a ``To`` value, so commas, semicolons, angle brackets,
quotes, whitespace and control characters are refused outright rather than
parsed. Header values (a subject) must stay on one line: a CR or LF would
start a new header.
"""

from __future__ import annotations

import re
import unicodedata

from config.errors import StepError

MAX_EMAIL = 254  # RFC 5321's limit on a path, less the angle brackets
MAX_LOCAL_PART = 64
MAX_LABEL = 63
MAX_HEADER = 2000

# RFC 5322 "atext" (dots apart); quoted local parts, comments and address literals are not taken.
_LOCAL_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-")
_LABEL_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_PHONE_NOISE = re.compile(r"[ \t\-().]")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def _allowed(text: str, ascii_allowed: frozenset[str]) -> bool:
    """ASCII from ``ascii_allowed``; beyond ASCII (an internationalised address) letters,
    marks and digits only, never lookalike punctuation such as a fullwidth comma or at sign."""
    return all(char in ascii_allowed if char.isascii() else unicodedata.category(char)[0] in "LMN"
               for char in text)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def validate_email(value: str) -> str:
    """One plain address, ``local@domain.tld``; returns it without surrounding whitespace."""
    address = value.strip()
    reason = _email_problem(address)
    if reason:
        raise StepError(f"invalid email address {_shown(address)}: {reason}")
    return address


def _email_problem(address: str) -> str | None:
    if not address:
        return "empty"
    if len(address) > MAX_EMAIL:
        return f"longer than {MAX_EMAIL} characters"
    for char, what in ((",", "a comma"), (";", "a semicolon"), ("<", "an angle bracket"), (">", "an angle bracket"),
                       ('"', "a quote"), ("(", "a parenthesis"), (")", "a parenthesis"), ("[", "a bracket"),
                       ("]", "a bracket"), ("\\", "a backslash"), (":", "a colon")):
        if char in address:
            return f"one address only ({what} is not allowed)"
    if any(unicodedata.category(char)[0] in "CZ" for char in address):
        return "one address only, without spaces or control characters"
    if address.count("@") != 1:
        return "it needs exactly one @"
    local, domain = address.split("@")
    if not local or len(local) > MAX_LOCAL_PART:
        return f"the part before @ must have 1 to {MAX_LOCAL_PART} characters"
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return "dots in the part before @ must separate something"
    if not all(_allowed(atom, _LOCAL_ASCII) for atom in local.split(".")):
        return "unexpected characters before @"
    labels = domain.split(".")
    if len(labels) < 2:
        return "the domain needs a dot"
    for label in labels:
        if (not label or len(label) > MAX_LABEL or label.startswith("-") or label.endswith("-")
                or not _allowed(label, _LABEL_ASCII)):
            return f"the domain {_shown(domain)} is not a host name"
    return None


def validate_phone(value: str) -> str:
    """An E.164 number (``+15550101001``); spaces, dashes, dots and brackets are dropped."""
    number = _PHONE_NOISE.sub("", value.strip())
    if not _E164.match(number):
        raise StepError(f"invalid phone number {_shown(value.strip())}: expected E.164, like +15550101001")
    return number


def validate_header(name: str, value: str) -> str:
    """A header value (a subject, a sender) on one line, without control characters."""
    for char in value:
        if char in "\r\n\x85\u2028\u2029":
            raise StepError(f"the {name} contains a line break; it must be one line")
        if unicodedata.category(char) == "Cc" and char != "\t":
            raise StepError(f"the {name} contains a control character ({ord(char):#04x})")
    if len(value) > MAX_HEADER:
        raise StepError(f"the {name} is longer than {MAX_HEADER} characters")
    return value
