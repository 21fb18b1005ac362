"""One HTTP call to a provider, its failures sorted into what Herald does next.

What matters after a failure is whether the provider can have taken the
message, and that is decided by whether the request was written whole, not by
how the socket closed: the body is handed over by :class:`TrackedBody`, which
records that it was written.

| what happened | error | Herald |
|---|---|---|
| could not connect, connect timed out, or the connection failed before the request was written whole | StepError(permanent=False) | retry with backoff (the provider cannot have taken a partial request) |
| the request was written whole, then no answer: read timeout, the server closed the connection, a reset | DeliveryUnknownError | resend with the same key if the provider deduplicates by it, otherwise park the step for a person |
| 5xx | StepError(permanent=False) | retry with backoff |
| 429 | StepError(permanent=False, retry_after=Retry-After) | wait, budget untouched |
| other 4xx | StepError(permanent=True) | fail at once, with the provider's words |
| 2xx | the parsed JSON body (an unreadable body after a 2xx status still counts as taken) | sent |

Reasons never contain credentials: only the provider's name, the status and
an excerpt of its own error text.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp.abc import AbstractStreamWriter

from config.errors import DeliveryUnknownError, StepError
from config.settings import Settings

# Connecting is bounded separately: a request that never left may be retried.
CONNECT_TIMEOUT_S = 5.0
EXCERPT = 200


def timeout(settings: Settings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None, connect=min(CONNECT_TIMEOUT_S, settings.http_timeout_s),
        sock_read=settings.http_timeout_s,
    )


def retry_after_s(value: str | None) -> float:
    """Seconds from a Retry-After header (seconds or an HTTP date); 1 s if absent or odd."""
    if not value:
        return 1.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1.0
    return max(0.0, (moment - dt.datetime.now(dt.UTC)).total_seconds())


def _excerpt(body: str) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:EXCERPT]
    # Providers put their words under different keys.
    for key in ("message", "error", "detail", "errors"):
        if isinstance(parsed, dict) and key in parsed:
            return json.dumps(parsed[key])[:EXCERPT] if not isinstance(parsed[key], str) else parsed[key][:EXCERPT]
    return json.dumps(parsed)[:EXCERPT]


class TrackedBody(aiohttp.BytesPayload):
    """A request body that records whether it was handed to the connection whole."""

    def __init__(self, value: bytes, content_type: str) -> None:
        super().__init__(value, content_type=content_type)
        self.written = False

    async def write(self, writer: AbstractStreamWriter) -> None:
        await super().write(writer)
        self.written = True

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        self.written = True


def json_body(value: Any) -> TrackedBody:
    return TrackedBody(json.dumps(value, default=str).encode(), "application/json")


def form_body(fields: dict[str, str]) -> TrackedBody:
    return TrackedBody(urlencode(fields).encode(), "application/x-www-form-urlencoded")


async def request(
    session: aiohttp.ClientSession, method: str, url: str, *, provider: str, settings: Settings,
    body: TrackedBody, allow_redirects: bool = True, headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Perform the call; return (status, JSON body or text) for a 2xx, raise otherwise."""
    status: int | None = None
    try:
        async with session.request(method, url, timeout=timeout(settings), data=body, headers=headers,
                                   allow_redirects=allow_redirects) as response:
            status = response.status
            headers_in = response.headers
            text = await response.text()
    except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
        raise StepError(f"{provider} unreachable ({type(exc).__name__}); will retry", permanent=False) from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        if status is not None and 200 <= status < 300:
            # It answered that it took the message; only the rest of its answer was lost.
            return status, {}
        if status is not None or not body.written:
            # An error status, or a request that never reached the provider whole: nothing was taken.
            raise StepError(f"{provider} request failed before it was taken ({type(exc).__name__});"
                            " will retry", permanent=False) from None
        raise DeliveryUnknownError(
            f"{provider} got the whole request but gave no answer ({type(exc).__name__}); it may or may"
            " not have taken the message"
        ) from None
    if 200 <= status < 300:
        try:
            return status, json.loads(text) if text else {}
        except ValueError:
            return status, text
    if status == 429:
        wait = retry_after_s(headers_in.get("Retry-After"))
        raise StepError(f"{provider} is rate limiting (429); waiting {wait:g}s", permanent=False,
                        retry_after=wait)
    if status >= 500:
        raise StepError(f"{provider} answered {status}: {_excerpt(text)}", permanent=False)
    if 300 <= status < 400:
        raise StepError(f"{provider} answered {status} redirecting to {headers_in.get('Location')!r};"
                        " redirects are not followed")
    raise StepError(f"{provider} answered {status}: {_excerpt(text)}")


class HttpProvider:
    """Base of the providers that speak HTTP through the process's shared session."""

    name: str
    idempotent: bool

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session
