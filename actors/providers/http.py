"""One HTTP call to a provider, its failures sorted into what Herald does next.

| what happened | error | Herald |
|---|---|---|
| could not connect, or connect timed out (nothing sent) | StepError(permanent=False) | retry with backoff |
| sent, then no answer in time | DeliveryUnknownError | park the step for a person |
| 5xx | StepError(permanent=False) | retry with backoff |
| 429 | StepError(permanent=False, retry_after=Retry-After) | wait, budget untouched |
| other 4xx | StepError(permanent=True) | fail at once, with the provider's words |
| 2xx | the parsed JSON body | sent |

Reasons never contain credentials: only the provider's name, the status and
an excerpt of its own error text.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from typing import Any

import aiohttp

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


async def request(
    session: aiohttp.ClientSession, method: str, url: str, *, provider: str, settings: Settings,
    allow_redirects: bool = True, **kwargs: Any,
) -> tuple[int, Any]:
    """Perform the call; return (status, JSON body or text) for a 2xx, raise otherwise."""
    try:
        async with session.request(method, url, timeout=timeout(settings),
                                   allow_redirects=allow_redirects, **kwargs) as response:
            text = await response.text()
            status = response.status
            headers = response.headers
    except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
        raise StepError(f"{provider} unreachable ({type(exc).__name__}); will retry", permanent=False) from None
    except (TimeoutError, aiohttp.SocketTimeoutError, aiohttp.ServerDisconnectedError) as exc:
        raise DeliveryUnknownError(
            f"{provider} took the request but gave no answer ({type(exc).__name__}); it may or may"
            " not have been delivered"
        ) from None
    except aiohttp.ClientError as exc:
        raise StepError(f"{provider} request failed ({type(exc).__name__}); will retry", permanent=False) from None
    if 200 <= status < 300:
        try:
            return status, json.loads(text) if text else {}
        except ValueError:
            return status, text
    if status == 429:
        wait = retry_after_s(headers.get("Retry-After"))
        raise StepError(f"{provider} is rate limiting (429); waiting {wait:g}s", permanent=False,
                        retry_after=wait)
    if status >= 500:
        raise StepError(f"{provider} answered {status}: {_excerpt(text)}", permanent=False)
    if 300 <= status < 400:
        raise StepError(f"{provider} answered {status} redirecting to {headers.get('Location')!r};"
                        " redirects are not followed")
    raise StepError(f"{provider} answered {status}: {_excerpt(text)}")


class HttpProvider:
    """Base of the providers that speak HTTP through the process's shared session."""

    name: str
    idempotent: bool

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session
