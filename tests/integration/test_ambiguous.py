"""After a failure, could the provider have taken the message? Decided by whether
the request was written whole, not by how the connection ended, against
providers that close or reset the connection on purpose."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from actors.providers.mailgun import MailgunProvider
from actors.providers.smtp import SmtpProvider
from actors.providers.telnyx import TelnyxProvider
from config.errors import DeliveryUnknownError, StepError
from config.settings import Settings
from tests.fakes import FakeSMTPServer, FlakyProvider
from tests.integration.test_providers import EMAIL, SMS, settings_for


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def providers(url: str, session: aiohttp.ClientSession) -> dict[str, object]:
    settings: Settings = settings_for(url)
    return {"telnyx": TelnyxProvider(settings, session), "mailgun": MailgunProvider(settings, session)}


@pytest.mark.parametrize("name", ["telnyx", "mailgun"])
@pytest.mark.parametrize("fault", ["close", "take_close", "reset", "take_reset"])
async def test_no_answer_to_a_whole_request_is_an_unknown_outcome(
    session: aiohttp.ClientSession, name: str, fault: str
) -> None:
    # Both socket-close forms, whether or not the provider kept the message:
    # Herald cannot tell, so the outcome is unknown (resent with the same key
    # only where the provider drops repeats; see actors.actions.delivery).
    async with FlakyProvider(dedupes=False, fault=lambda n: fault) as flaky:
        provider = providers(flaky.url, session)[name]
        with pytest.raises(DeliveryUnknownError, match="got the whole request but gave no answer"):
            await provider.send(EMAIL if name == "mailgun" else SMS)  # type: ignore[attr-defined]
    assert flaky.requests == 1 and len(flaky.delivered) == (1 if fault.startswith("take") else 0)


@pytest.mark.parametrize("fault", ["500", "take_500"])
async def test_an_error_status_is_transient_not_unknown(session: aiohttp.ClientSession, fault: str) -> None:
    async with FlakyProvider(dedupes=True, fault=lambda n: fault) as flaky:
        with pytest.raises(StepError) as caught:
            await providers(flaky.url, session)["telnyx"].send(SMS)  # type: ignore[attr-defined]
    assert not isinstance(caught.value, DeliveryUnknownError) and caught.value.permanent is False


async def test_a_connection_that_never_opened_is_retried(session: aiohttp.ClientSession) -> None:
    with pytest.raises(StepError) as caught:
        await providers(f"http://127.0.0.1:{unused_port()}", session)["telnyx"].send(SMS)  # type: ignore[attr-defined]
    assert not isinstance(caught.value, DeliveryUnknownError) and caught.value.permanent is False


@pytest.mark.parametrize(("drop_at", "unknown"), [("RCPT", False), ("DATA", True)])
async def test_smtp_connection_lost_before_data_is_retried_and_after_it_is_unknown(
    drop_at: str, unknown: bool
) -> None:
    with FakeSMTPServer() as smtp:
        smtp.drop_at = drop_at
        settings = settings_for("http://unused", HERALD_SMTP_HOST="127.0.0.1", HERALD_SMTP_PORT=str(smtp.port))
        with pytest.raises(StepError) as caught:
            await SmtpProvider(settings).send(EMAIL)
    assert isinstance(caught.value, DeliveryUnknownError) is unknown
    assert caught.value.permanent is unknown  # an unknown outcome is never retried blindly
    assert len(smtp.messages) == (1 if unknown else 0)
