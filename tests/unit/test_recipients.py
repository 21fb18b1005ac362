"""Recipients and header values: one address, one number, one line, or a clear permanent error."""

from __future__ import annotations

import pytest

from actors.recipients import validate_email, validate_header, validate_phone
from config.errors import StepError


@pytest.mark.parametrize("address", [
    "maria@example.com", "maria.lopez+jobs@example.co.uk", "o'brien@example.com", "user_1@sub-domain.example",
    "jörg@bücher.de", "x" * 64 + "@example.com", "a@" + ".".join(["b" * 63] * 3) + ".com",
])
def test_plain_addresses_pass(address: str) -> None:
    assert validate_email(f"  {address} ") == address


@pytest.mark.parametrize(("address", "words"), [
    ("victim@example.com,all-staff", "a comma"),
    ("victim@example.com, boss@example.com", "a comma"),
    ("victim@example.com;boss@example.com", "a semicolon"),
    ("Victim <victim@example.com>", "angle bracket"),
    ("<victim@example.com>", "angle bracket"),
    ('"victim,boss"@example.com', "a comma"),
    ("victim@[127.0.0.1]", "bracket"),
    ("victim(comment)@example.com", "parenthesis"),
    ("victim @example.com", "without spaces"),
    ("victim@example.com\r\nBcc: all@example.com", "one address only"),
    ("victim@exa\r\nmple.com", "without spaces or control characters"),
    ("victim@example.com\x00", "control characters"),
    ("vic\u200btim@example.com", "control characters"),  # zero-width space
    ("victim\uff20example.com", "exactly one @"),  # fullwidth at sign
    ("victim@example\uff0ecom", "domain"),  # fullwidth full stop
    ("victim@example.com@evil.example", "exactly one @"),
    ("maria@", "the domain needs a dot"),
    ("maria@localhost", "the domain needs a dot"),
    ("@example.com", "1 to 64 characters"),
    ("x" * 65 + "@example.com", "1 to 64 characters"),
    ("a@" + "b" * 250 + ".com", "longer than 254"),
    (".maria@example.com", "dots"),
    ("ma..ria@example.com", "dots"),
    ("maria@-example.com", "not a host name"),
    ("maria@exa_mple.com", "not a host name"),
    ("", "empty"),
])
def test_anything_but_one_plain_address_is_refused(address: str, words: str) -> None:
    with pytest.raises(StepError, match="invalid email address") as caught:
        validate_email(address)
    assert caught.value.permanent and words in str(caught.value)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize(("raw", "normal"), [
    ("+1 (555) 010-1001", "+15550101001"), ("+44 20 7946 0958", "+442079460958"), ("+15550101001", "+15550101001"),
])
def test_phone_numbers_are_normalised(raw: str, normal: str) -> None:
    assert validate_phone(raw) == normal


@pytest.mark.parametrize("raw", [
    "555-0101", "+0123456789", "+1555010100\uff11",  # a fullwidth digit
    "+1555\u0661\u0662\u0663\u0664\u0665\u0666",  # Arabic-Indic digits
    "+1555\n0101001", "+15550101001,+15550101002", "+1555010100112345678",
])
def test_anything_but_one_e164_number_is_refused(raw: str) -> None:
    with pytest.raises(StepError, match="invalid phone number") as caught:
        validate_phone(raw)
    assert caught.value.permanent


@pytest.mark.parametrize("value", ["Job Completed - Replace kitchen faucet", "Tabs\tare fine", "Ünïcödé ✓"])
def test_one_line_headers_pass(value: str) -> None:
    assert validate_header("subject", value) == value


@pytest.mark.parametrize(("value", "words"), [
    ("Done\r\nBcc: all@example.com", "line break"), ("Done\n", "line break"), ("Done\r", "line break"),
    ("Done\u2028more", "line break"), ("Done\x85", "line break"), ("Done\x00", "control character"),
    ("Done\x1b[31m", "control character"), ("x" * 2001, "longer than 2000"),
])
def test_headers_that_are_not_one_line_are_refused(value: str, words: str) -> None:
    with pytest.raises(StepError, match=words) as caught:
        validate_header("subject", value)
    assert caught.value.permanent and "the subject" in str(caught.value)
