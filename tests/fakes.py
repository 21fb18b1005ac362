"""Fakes at the network edge: an HTTP server and an SMTP server that record what they got.

Both run on 127.0.0.1 in the test's event loop. Responses are programmable
per path: a queue of answers (the last one repeats), optionally delayed.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
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
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)  # the fake is slow on purpose
        return web.json_response(answer.json if answer.json is not None else {}, status=answer.status,
                                 headers=answer.headers)


class _Handler:
    def __init__(self, server: FakeSMTPServer) -> None:
        self.server = server

    async def handle_RCPT(self, smtp: Any, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if self.server.refuse_with:
            return self.server.refuse_with
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: Any, session: Session, envelope: Envelope) -> str:
        self.server.messages.append(message_from_bytes(envelope.original_content or b""))
        return "250 Message accepted"


class FakeSMTPServer:
    """An aiosmtpd server on 127.0.0.1; ``refuse_with = "550 no such user"`` refuses recipients."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refuse_with: str | None = None
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
