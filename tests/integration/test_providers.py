"""Providers against local fake servers: what they send, and how failures are sorted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from actors.providers import OutboundMessage, get_provider
from actors.providers.mailgun import MailgunProvider
from actors.providers.smtp import SmtpProvider
from actors.providers.telnyx import TelnyxProvider
from actors.providers.twilio import TwilioProvider
from actors.providers.webhook import close_sessions, deliver_webhook
from actors.recipients import validate_email, validate_phone
from config.errors import DeliveryUnknownError, HeraldConfigError, StepError
from config.settings import Settings
from tests.fakes import Answer, FakeHTTPServer, FakeSMTPServer

SECRET = "s3cret-key-never-shown"


def settings_for(url: str, **extra: str) -> Settings:
    return Settings.from_env({
        "HERALD_TELNYX_BASE_URL": url, "HERALD_TELNYX_API_KEY": SECRET,
        "HERALD_MAILGUN_BASE_URL": url, "HERALD_MAILGUN_API_KEY": SECRET, "HERALD_MAILGUN_DOMAIN": "mg.example.com",
        "HERALD_TWILIO_BASE_URL": url, "HERALD_TWILIO_ACCOUNT_SID": "AC1", "HERALD_TWILIO_AUTH_TOKEN": SECRET,
        "HERALD_SMS_FROM": "+15550000000", "HERALD_EMAIL_FROM": "Acme <ops@acme.example>",
        "HERALD_HTTP_TIMEOUT": "0.5", "HERALD_WEBHOOK_SIGNING_SECRET": SECRET, **extra,
    })


SMS = OutboundMessage("sms", "+15550101001", "Job done", "wf:1:step-2")
EMAIL = OutboundMessage("email", "maria@example.com", "Dear Maria", "wf:1:step-1", subject="Done",
                        html_body="<p>Dear Maria</p>")


@pytest.fixture(autouse=True, scope="module")
async def _close_webhook_sessions() -> AsyncIterator[None]:
    yield
    await close_sessions()


@pytest.fixture
async def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A safety net for tests of refused destinations: should the code under test
    fail to refuse one, the event loop still never connects to, or looks up, anything
    but loopback. Returns what was attempted and stopped."""
    loop = asyncio.get_running_loop()
    stopped: list[str] = []
    sock_connect, getaddrinfo = loop.sock_connect, loop.getaddrinfo

    def loopback(host: str) -> bool:
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return host == "localhost"

    async def guarded_connect(sock: socket.socket, address: Any) -> None:
        if not loopback(str(address[0])):
            stopped.append(f"connect {address[0]}")
            raise OSError(f"test guard: no connection to {address[0]}")
        await sock_connect(sock, address)

    async def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not loopback(name):
            stopped.append(f"lookup {name}")
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no lookup of {name}")
        return await getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(loop, "sock_connect", guarded_connect)
    monkeypatch.setattr(loop, "getaddrinfo", guarded_getaddrinfo)
    return stopped


@pytest.fixture
async def server() -> AsyncIterator[FakeHTTPServer]:
    async with FakeHTTPServer() as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_telnyx_sends_json_with_its_idempotency_key(server: FakeHTTPServer, session: Any) -> None:
    server.answer("/v2/messages", Answer(200, {"data": {"id": "msg-1"}}))
    result = await TelnyxProvider(settings_for(server.url), session).send(SMS)
    [sent] = server.requests
    assert (sent.method, sent.path) == ("POST", "/v2/messages")
    assert sent.json() == {"from": "+15550000000", "to": "+15550101001", "text": "Job done"}
    assert sent.headers["Authorization"] == f"Bearer {SECRET}"
    assert sent.headers["Idempotency-Key"] == "wf:1:step-2"
    assert (result.status, result.provider_message_id) == ("sent", "msg-1")


async def test_mailgun_sends_form_with_the_key_as_custom_variable(server: FakeHTTPServer, session: Any) -> None:
    server.answer("/v3/mg.example.com/messages", Answer(200, {"id": "<mg-1@mg.example.com>"}))
    result = await MailgunProvider(settings_for(server.url), session).send(EMAIL)
    [sent] = server.requests
    assert sent.form["to"] == "maria@example.com" and sent.form["subject"] == "Done"
    assert sent.form["text"] == "Dear Maria" and sent.form["html"] == "<p>Dear Maria</p>"
    assert sent.form["v:herald_idempotency_key"] == "wf:1:step-1"
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(f"api:{SECRET}".encode()).decode()
    assert result.provider_message_id == "<mg-1@mg.example.com>"


async def test_twilio_sends_form_and_is_not_resend_safe(server: FakeHTTPServer, session: Any) -> None:
    path = "/2010-04-01/Accounts/AC1/Messages.json"
    server.answer(path, Answer(201, {"sid": "SM1"}))
    result = await TwilioProvider(settings_for(server.url), session).send(SMS)
    [sent] = server.on(path)
    assert sent.form == {"From": "+15550000000", "To": "+15550101001", "Body": "Job done"}
    # Twilio's Messages API takes no idempotency key: an ambiguous attempt must be parked, not resent.
    assert "I-Twilio-Idempotency-Token" not in sent.headers and not TwilioProvider.idempotent
    assert result.provider_message_id == "SM1"


@pytest.mark.parametrize(
    ("answer", "permanent", "retry_after", "words"),
    [
        (Answer(500, {"message": "upstream down"}), False, None, "telnyx answered 500: upstream down"),
        (Answer(503), False, None, "telnyx answered 503"),
        (Answer(429, headers={"Retry-After": "2"}), False, 2.0, "rate limiting"),
        (Answer(422, {"errors": [{"detail": "invalid 'to' number"}]}), True, None, "invalid 'to' number"),
        (Answer(400, {"message": "bad request"}), True, None, "telnyx answered 400: bad request"),
        (Answer(302, headers={"Location": "https://elsewhere.example/"}), True, None, "redirects are not followed"),
    ],
)
async def test_http_failures_are_sorted(
    server: FakeHTTPServer, answer: Answer, permanent: bool, retry_after: float | None, words: str,
) -> None:
    server.answer("/v2/messages", answer)
    async with aiohttp.ClientSession() as session:
        provider = TelnyxProvider(settings_for(server.url), session)
        with pytest.raises(StepError) as caught:
            if answer.status == 302:
                # Providers never follow redirects blindly either; webhooks never do.
                await deliver_webhook(f"{server.url}/v2/messages", {}, settings=settings_for(
                    server.url, HERALD_WEBHOOK_ALLOW_PRIVATE="true"), idempotency_key="k")
            else:
                await provider.send(SMS)
    assert caught.value.permanent is permanent
    assert caught.value.retry_after == retry_after
    assert words in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_no_answer_after_sending_is_unknown_not_retried(server: FakeHTTPServer, session: Any) -> None:
    server.answer("/v2/messages", Answer(200, {"data": {"id": "late"}}, delay_s=3))
    with pytest.raises(DeliveryUnknownError, match="may or may not have taken the message"):
        await TelnyxProvider(settings_for(server.url), session).send(SMS)
    assert len(server.requests) == 1  # it did reach the provider


async def test_nobody_listening_is_transient(session: Any) -> None:
    provider = TelnyxProvider(settings_for(f"http://127.0.0.1:{unused_port()}"), session)
    with pytest.raises(StepError) as caught:
        await provider.send(SMS)
    assert caught.value.permanent is False and "unreachable" in str(caught.value)


def test_missing_provider_settings_name_the_variable_not_the_value() -> None:
    with pytest.raises(HeraldConfigError, match="HERALD_TELNYX_API_KEY"):
        get_provider("telnyx", Settings.from_env({"HERALD_SMS_FROM": "+15550000000"}), None)  # type: ignore[arg-type]
    with pytest.raises(HeraldConfigError, match="unknown provider 'fax'"):
        get_provider("fax", Settings.from_env({}), None)  # type: ignore[arg-type]


async def test_smtp_sends_text_and_html_with_a_stable_message_id() -> None:
    with FakeSMTPServer() as smtp:
        settings = settings_for("http://unused", HERALD_SMTP_HOST="127.0.0.1", HERALD_SMTP_PORT=str(smtp.port))
        first = await SmtpProvider(settings).send(EMAIL)
        again = await SmtpProvider(settings).send(EMAIL)
    [mail, resent] = smtp.messages
    assert (mail["To"], mail["Subject"], mail["From"]) == ("maria@example.com", "Done", "Acme <ops@acme.example>")
    parts = {part.get_content_type(): part.get_payload(decode=True).decode().strip() for part in mail.walk()
             if not part.is_multipart()}
    assert parts == {"text/plain": "Dear Maria", "text/html": "<p>Dear Maria</p>"}
    assert mail["Message-ID"] == resent["Message-ID"] == first.provider_message_id == again.provider_message_id


@pytest.mark.parametrize(("reply", "permanent"), [("550 5.1.1 no such user", True), ("451 4.3.0 try later", False)])
async def test_smtp_refusals_are_sorted_by_code(reply: str, permanent: bool) -> None:
    with FakeSMTPServer() as smtp:
        smtp.refuse_with = reply
        settings = settings_for("http://unused", HERALD_SMTP_HOST="127.0.0.1", HERALD_SMTP_PORT=str(smtp.port))
        with pytest.raises(StepError) as caught:
            await SmtpProvider(settings).send(EMAIL)
    assert caught.value.permanent is permanent and reply.split()[-1] in str(caught.value)


async def test_webhook_is_signed_and_verifiable(server: FakeHTTPServer) -> None:
    settings = settings_for(server.url, HERALD_WEBHOOK_ALLOW_PRIVATE="true")
    await deliver_webhook(f"{server.url}/hooks/jobs", {"job": {"id": 1}}, settings=settings, idempotency_key="k1")
    [sent] = server.on("/hooks/jobs")
    timestamp, signature = (part.split("=", 1)[1] for part in sent.headers["X-Herald-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + sent.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected)
    assert sent.json() == {"job": {"id": 1}} and sent.headers["X-Herald-Idempotency-Key"] == "k1"


# Every spelling of a refused address: {port} is a live local server's, which must get nothing.
@pytest.mark.parametrize(
    ("url", "extra", "words"),
    [
        ("http://127.0.0.1:{port}/hook", {}, "loopback address"),
        ("http://169.254.169.254/latest/meta-data", {}, "link-local address"),
        ("http://10.1.2.3/hook", {}, "private address"),
        ("http://localhost:{port}/hook", {}, "resolves to a loopback address"),
        ("ftp://example.com/hook", {}, "only http and https"),
        ("https://evil.example.net/hook", {"HERALD_WEBHOOK_ALLOWLIST": "*.acme.example,hooks.partner.example"},
         "not in HERALD_WEBHOOK_ALLOWLIST"),
        # Unicode spellings that yarl (and so aiohttp) normalises to the address itself.
        ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/hook", {}, "loopback address"),  # fullwidth
        ("http://\u2460\u2461\u2466.\u24ea.\u24ea.\u2460:{port}/hook", {}, "loopback address"),  # circled
        ("http://127\u30020\u30020\u30021:{port}/hook", {}, "loopback address"),  # ideographic full stops
        ("http://127\uff0e0\uff0e0\uff0e1:{port}/hook", {}, "loopback address"),  # fullwidth full stops
        ("http://\uff11\uff16\uff19.\uff12\uff15\uff14.\uff11\uff16\uff19.\uff12\uff15\uff14/latest",
         {}, "link-local address"),
        ("http://169\u3002254\u3002169\u3002254/latest", {}, "link-local address"),
        ("http://\u2460\u2465\u2468.\u2461\u2464\u2463.\u2460\u2465\u2468.\u2461\u2464\u2463/latest",
         {}, "link-local address"),
        ("http://\uff11\uff10.\uff11.\uff12.\uff13/hook", {}, "private address"),
        ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:{port}/hook", {},
         "resolves to a loopback address"),  # fullwidth "localhost"
        # IPv6 forms, IPv4 embedded in IPv6.
        ("http://[::1]:{port}/hook", {}, "loopback address"),
        ("http://[0:0:0:0:0:0:0:1]:{port}/hook", {}, "loopback address"),
        ("http://[::ffff:127.0.0.1]:{port}/hook", {}, "loopback address"),
        ("http://[::ffff:7f00:1]:{port}/hook", {}, "loopback address"),
        ("http://[::ffff:169.254.169.254]/latest", {}, "link-local address"),
        ("http://[64:ff9b::7f00:1]:{port}/hook", {}, "loopback address"),  # NAT64
        ("http://[2002:7f00:1::]:{port}/hook", {}, "loopback address"),  # 6to4
        ("http://[fe80::1%25lo]:{port}/hook", {}, "link-local address"),
        ("http://[fd00::1]/hook", {}, "private address"),
        ("http://[::]:{port}/hook", {}, "unspecified address"),
        # Legacy IPv4 forms: decimal, octal, hex, short.
        ("http://2130706433:{port}/hook", {}, "loopback address"),
        ("http://0x7f.1:{port}/hook", {}, "loopback address"),
        ("http://0x7f000001:{port}/hook", {}, "loopback address"),
        ("http://0177.0.0.1:{port}/hook", {}, "loopback address"),
        ("http://127.1:{port}/hook", {}, "loopback address"),
        ("http://0:{port}/hook", {}, "unspecified address"),
        ("http://2852039166/latest", {}, "link-local address"),  # 169.254.169.254
        # Allowed privately, a legacy form is still refused rather than retried in vain.
        ("http://2130706433:{port}/hook", {"HERALD_WEBHOOK_ALLOW_PRIVATE": "true"}, "write the address as 127.0.0.1"),
        # Hosts that are no host names.
        ("http://exa mple.com/hook", {}, "not a valid host name"),
        ("http://ex%41mple.com/hook", {}, "not a valid host name"),
        ("http://ex\u200bample.com/hook", {}, "not a valid URL"),
        ("http://[::1/hook", {}, "not a valid URL"),
        # The allowlist judges the normalised host too.
        ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/hook",
         {"HERALD_WEBHOOK_ALLOWLIST": "*.acme.example"}, "not in HERALD_WEBHOOK_ALLOWLIST"),
    ],
)
async def test_webhook_destinations_are_checked(
    server: FakeHTTPServer, loopback_only: list[str], url: str, extra: dict[str, str], words: str
) -> None:
    target = url.replace("{port}", str(server.port))
    with pytest.raises(StepError) as caught:
        await deliver_webhook(target, {}, settings=settings_for("http://unused", **extra), idempotency_key="k")
    assert caught.value.permanent and words in str(caught.value)
    assert SECRET not in str(caught.value)
    assert server.requests == [] and loopback_only == []


async def test_webhook_to_an_allowed_private_address_goes_to_the_normalised_host(server: FakeHTTPServer) -> None:
    """With private addresses allowed, a Unicode spelling reaches the address it normalises to."""
    settings = settings_for("http://unused", HERALD_WEBHOOK_ALLOW_PRIVATE="true")
    url = f"http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{server.port}/hooks/jobs"
    await deliver_webhook(url, {"job": 1}, settings=settings, idempotency_key="k2")
    [sent] = server.on("/hooks/jobs")
    assert sent.json() == {"job": 1}


@pytest.mark.parametrize(("raw", "ok"), [("maria@example.com", True), ("maria@", False), ("a b@c.d", False),
                                         ("victim@example.com,all-staff", False)])
def test_email_addresses_are_checked(raw: str, ok: bool) -> None:
    if ok:
        assert validate_email(raw) == raw
    else:
        with pytest.raises(StepError, match="invalid email address"):
            validate_email(raw)


@pytest.mark.parametrize(("raw", "normal"), [("+1 (555) 010-1001", "+15550101001"), ("555-0101", None),
                                             ("+0123456789", None)])
def test_phone_numbers_are_checked(raw: str, normal: str | None) -> None:
    if normal:
        assert validate_phone(raw) == normal
    else:
        with pytest.raises(StepError, match="invalid phone number"):
            validate_phone(raw)


@pytest.mark.parametrize("recipient", ["victim@example.com,all-staff", "victim@example.com;boss@example.com",
                                       "Victim <victim@example.com>", "victim@example.com all-staff@example.com",
                                       "victim@example.com\r\nBcc: all-staff@example.com"])
async def test_smtp_sends_to_one_address_or_none(recipient: str) -> None:
    with FakeSMTPServer() as smtp:
        settings = settings_for("http://unused", HERALD_SMTP_HOST="127.0.0.1", HERALD_SMTP_PORT=str(smtp.port))
        with pytest.raises(StepError, match="invalid email address") as caught:
            await SmtpProvider(settings).send(replace(EMAIL, recipient=recipient))
    assert caught.value.permanent
    assert smtp.messages == []  # nothing went out, to anyone


@pytest.mark.parametrize("subject", ["Done\r\nBcc: all-staff@example.com", "Done\nX-Evil: 1", "Done\r", "Done\x00"])
async def test_smtp_refuses_a_subject_that_is_not_one_line_before_sending(subject: str) -> None:
    with FakeSMTPServer() as smtp:
        settings = settings_for("http://unused", HERALD_SMTP_HOST="127.0.0.1", HERALD_SMTP_PORT=str(smtp.port))
        with pytest.raises(StepError, match="subject contains a") as caught:
            await SmtpProvider(settings).send(replace(EMAIL, subject=subject))
    # A permanent StepError is what the step records as failed with its reason (not left *sending*).
    assert type(caught.value) is StepError and caught.value.permanent
    assert smtp.messages == []


@pytest.mark.parametrize(("change", "words"), [
    ({"subject": "Done\r\nBcc: all-staff@example.com"}, "subject contains a line break"),
    ({"recipient": "victim@example.com,all-staff@example.com"}, "invalid email address"),
])
async def test_mailgun_refuses_header_injection_before_sending(
    server: FakeHTTPServer, session: Any, change: dict[str, str], words: str,
) -> None:
    with pytest.raises(StepError, match=words) as caught:
        await MailgunProvider(settings_for(server.url), session).send(replace(EMAIL, **change))
    assert type(caught.value) is StepError and caught.value.permanent
    assert server.requests == []
