"""Fakes at the network edge: an HTTP server and an SMTP server that record what they got.

Both run on 127.0.0.1 in the test's event loop. Responses are programmable
per path: a queue of answers (the last one repeats), optionally delayed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import urllib.parse
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiohttp import web
from aiohttp.test_utils import unused_port
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # longer than the client's timeout: "took the request, never answered"
    until: Callable[[], bool] | None = None  # hold the answer until this holds, at most delay_s


class _WebFake:
    """A local aiohttp server on a free port; subclasses add their routes."""

    def __init__(self) -> None:
        self.port = unused_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class FakeHTTPServer(_WebFake):
    """``async with FakeHTTPServer() as server: server.answer("/v2/messages", Answer(500), Answer(200))``"""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Recorded] = []
        self.held: list[tuple[str, bool]] = []  # (path, whether its answer's ``until`` came true in time)
        self._answers: dict[str, deque[Answer]] = defaultdict(lambda: deque([Answer(200, {})]))

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    def answer(self, path: str, *answers: Answer) -> None:
        self._answers[path] = deque(answers)

    def on(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        form = {}
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), body, form))
        queue = self._answers[request.path]
        answer = queue.popleft() if len(queue) > 1 else queue[0]
        if answer.until is not None:
            deadline = time.monotonic() + answer.delay_s
            while not answer.until() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            self.held.append((request.path, answer.until()))
        elif answer.delay_s:
            await asyncio.sleep(answer.delay_s)  # the fake is slow on purpose
        return web.json_response(answer.json if answer.json is not None else {}, status=answer.status,
                                 headers=answer.headers)


class _Handler:
    def __init__(self, server: FakeSMTPServer) -> None:
        self.server = server

    async def handle_RCPT(self, smtp: Any, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if self.server.drop_at == "RCPT":
            smtp.transport.close()  # gone before the message was sent
        if self.server.refuse_with:
            return self.server.refuse_with
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: Any, session: Session, envelope: Envelope) -> str:
        self.server.messages.append(message_from_bytes(envelope.original_content or b""))
        if self.server.drop_at == "DATA":
            smtp.transport.close()  # took the message, then the connection went before the 250
        return "250 Message accepted"


class FakeSMTPServer:
    """An aiosmtpd server on 127.0.0.1; ``refuse_with = "550 no such user"`` refuses recipients;
    ``drop_at = "RCPT"`` or ``"DATA"`` drops the connection at that command without an answer."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refuse_with: str | None = None
        self.drop_at: str | None = None
        self.port = unused_port()
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> FakeSMTPServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


class FakeTelnyx(_WebFake):
    """A Telnyx messages endpoint that, like the real one, delivers each
    Idempotency-Key once. ``delivered`` maps key -> text; ``replays`` counts
    requests that repeated a key (answered, not delivered again)."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered: dict[str, str] = {}
        self.replays = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/messages", self._messages)

    async def _messages(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        body = await request.json()
        if key in self.delivered:
            self.replays += 1
        else:
            self.delivered[key] = body["text"]
        return web.json_response({"data": {"id": f"msg-{key}"}})


class FlakyProvider:
    """A provider at the socket level, misbehaving on purpose: an HTTP/1.1
    server on 127.0.0.1 written on asyncio streams, so that it can read a whole
    request and then close the connection, or reset it, without an answer.

    It serves an SMS endpoint (``/v2/messages``, Telnyx-like: JSON, the key in
    the ``Idempotency-Key`` header) and an email endpoint
    (``/v3/<domain>/messages``, Mailgun-like: a form, the key in
    ``v:herald_idempotency_key``). With ``dedupes`` it delivers each key once,
    as Telnyx does; without, every request it takes is a delivery, as Mailgun's.

    ``fault(n)`` says what happens to the n-th request (see ``FAULTS``);
    ``latency(n)`` how long it thinks first.
    """

    FAULTS = ("ok", "500", "take_500", "close", "take_close", "reset", "take_reset")

    def __init__(self, *, dedupes: bool, fault: Any = lambda n: "ok", latency: Any = lambda n: 0.0) -> None:
        self.dedupes = dedupes
        self.fault = fault
        self.latency = latency
        self.port = unused_port()
        self.requests = 0
        self.faults: dict[str, int] = defaultdict(int)
        self.delivered: list[tuple[str, str]] = []  # (idempotency key, text), one per message sent on
        self.replays = 0  # requests that repeated a delivered key (dedupes only)
        self._keys: set[str] = set()
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FlakyProvider:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def texts(self) -> list[str]:
        return [text for _, text in self.delivered]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                if not await self._answer(request, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    async def _answer(self, request: tuple[str, dict[str, str], bytes], writer: asyncio.StreamWriter) -> bool:
        """Act on one request; False when the connection was dropped on purpose."""
        path, headers, body = request
        number = self.requests
        self.requests += 1
        fault = self.fault(number)
        self.faults[fault] += 1
        await asyncio.sleep(self.latency(number))  # the provider's own think time
        if fault.startswith("take") or fault == "ok":
            self._take(path, headers, body)
        if fault.endswith("close"):
            writer.close()
            return False
        if fault.endswith("reset"):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        status, answer = (500, b'{"errors":[{"detail":"try again"}]}') if fault.endswith("500") else (
            200, json.dumps({"data": {"id": f"msg-{number}"}, "id": f"<msg-{number}@fake>"}).encode())
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % (status, len(answer)) + answer)
        await writer.drain()
        return True

    def _take(self, path: str, headers: dict[str, str], body: bytes) -> None:
        if path.startswith("/v2/"):
            key, text = headers.get("idempotency-key", ""), json.loads(body)["text"]
        else:
            form = dict(urllib.parse.parse_qsl(body.decode()))
            key, text = form.get("v:herald_idempotency_key", ""), form["text"]
        if self.dedupes and key in self._keys:
            self.replays += 1
            return
        self._keys.add(key)
        self.delivered.append((key, text))


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    """One HTTP/1.1 request with a Content-Length body, or None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {name.strip().lower(): value.strip() for name, value in
               (line.split(":", 1) for line in lines[1:] if ":" in line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return path, headers, body
