"""The benchmark's providers, in a process of their own: a Mailgun-like email
endpoint and a Telnyx-like SMS endpoint that answer after a fixed delay and
record when each request arrived.

    python -m tests.bench.provider --delay-ms 20

They are ``tests.fakes.FlakyProvider`` (HTTP/1.1 on asyncio streams, the same
fake the end-to-end tests point Herald's mailgun and telnyx providers at), with
``latency`` as the think time and every request timestamped with
``time.time()`` the moment it has been read, before the delay. They run in
their own process so that the load generator's event loop cannot delay the
timestamps; both processes share the machine's clock.

On start the process prints one JSON line, ``{"email": url, "sms": url}``.
It then reads commands on stdin, one a line, and answers each with one line:

    count          -> "<emails> <sms>"   requests received since the last reset
    dump PATH      -> "ok"               writes every request since the last reset to PATH as JSON
    reset          -> "ok"               forgets what it received
    quit           -> exits

A dumped record is ``[channel, received_at, idempotency_key, text]``: for an
email the text is its subject (it names the job), for an SMS the message body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.fakes import FlakyProvider


class TimedProvider(FlakyProvider):
    """A FlakyProvider that always answers ``ok`` after ``delay_s`` and keeps every request with its arrival time."""

    def __init__(self, channel: str, *, dedupes: bool, delay_s: float) -> None:
        super().__init__(dedupes=dedupes, latency=lambda n: delay_s)
        self.channel = channel
        self.received: list[tuple[float, str, dict[str, str], bytes]] = []

    async def _answer(self, request: tuple[str, dict[str, str], bytes], writer: asyncio.StreamWriter) -> bool:
        # Parsing waits for the dump: the hot path only appends.
        self.received.append((time.time(), *request))
        return await super()._answer(request, writer)

    def reset(self) -> None:
        self.received.clear()
        self.delivered.clear()
        self._keys.clear()
        self.replays = 0
        self.requests = 0

    def records(self) -> list[list[Any]]:
        out: list[list[Any]] = []
        for at, path, headers, body in self.received:
            if path.startswith("/v2/"):  # Telnyx: JSON, the key in a header
                key, text = headers.get("idempotency-key", ""), json.loads(body)["text"]
            else:  # Mailgun: a form, the key in a custom variable
                form = dict(urllib.parse.parse_qsl(body.decode()))
                key, text = form.get("v:herald_idempotency_key", ""), form.get("subject", "")
            out.append([self.channel, at, key, text])
        return out


async def serve(delay_s: float) -> None:
    email = TimedProvider("email", dedupes=False, delay_s=delay_s)  # Mailgun delivers every request
    sms = TimedProvider("sms", dedupes=True, delay_s=delay_s)  # Telnyx honours Idempotency-Key
    async with email, sms:
        print(json.dumps({"email": email.url, "sms": sms.url}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode():
            command, _, arg = line.strip().partition(" ")
            if command == "count":
                answer = f"{len(email.received)} {len(sms.received)}"
            elif command == "dump":
                # Between phases, while nothing is sent: blocking for a moment is fine.
                Path(arg).write_text(json.dumps(email.records() + sms.records()))
                answer = "ok"
            elif command == "reset":
                email.reset()
                sms.reset()
                answer = "ok"
            elif command == "quit":
                break
            else:
                answer = f"unknown command {command!r}"
            sys.stdout.write(answer + "\n")
            sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=20.0, help="each answer's delay (default 20)")
    args = parser.parse_args()
    asyncio.run(serve(args.delay_ms / 1000))


if __name__ == "__main__":
    main()
