"""A stand-in for systemd's end of the notify protocol: a datagram socket the
test binds, whose NOTIFY_SOCKET a Herald process is given, and which records
what arrives and from which process (the kernel's sender credentials)."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field


@dataclass
class Notification:
    pid: int | None
    fields: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class NotifySocket:
    """Bound at a path, or in the abstract namespace when ``address`` starts with '@'."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.received: list[Notification] = []

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address}

    def receive(self) -> list[Notification]:
        """Every notification that arrived so far (new ones read first)."""
        while True:
            try:
                data, ancillary, _flags, _address = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return self.received
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            lines = data.decode().splitlines()
            self.received.append(Notification(pid, dict(line.split("=", 1) for line in lines if "=" in line)))

    def with_field(self, key: str, value: str | None = None, *, since: float = 0.0) -> list[Notification]:
        """Notifications carrying ``key`` (equal to ``value`` when given), received after ``since``."""
        return [n for n in self.receive() if n.at > since and key in n.fields
                and (value is None or n.fields[key] == value)]

    def close(self) -> None:
        self.sock.close()
