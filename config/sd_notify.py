"""systemd's notify protocol: how a Herald process tells systemd it is ready,
alive, or stopping.

Under a ``Type=notify`` unit, systemd sets ``NOTIFY_SOCKET`` (a datagram
socket: a file-system path, or an abstract socket when it starts with ``@``)
and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (the watchdog's interval) and
``WATCHDOG_PID`` (the process expected to feed it). A process sends
newline-separated assignments: ``READY=1`` once it can do its work,
``WATCHDOG=1`` while it makes progress (systemd restarts a service that goes
``WatchdogSec`` without one), ``STOPPING=1`` as it stops, and ``STATUS=...``
for ``systemctl status``.

Outside systemd (no ``NOTIFY_SOCKET``) every call here does nothing. A send
that fails is logged once and never stops Herald: a service that cannot tell
systemd it is alive gets restarted, which the log explains.

This module only speaks the protocol. Each process decides when it is ready and
what proves its progress (see ``daemon.progress``, ``actors.middleware.systemd``
and ``dashboard.notify``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping

import structlog

from config.errors import HeraldConfigError

log = structlog.get_logger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def notify_address(value: str | None) -> str | bytes | None:
    """The address to send to: a path, or an abstract socket's name (``@name`` -> ``\\0name``).

    None without ``NOTIFY_SOCKET``, and for kinds of address Herald does not speak
    (systemd's ``vsock:``): that is logged, and the process runs on unannounced.
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning(f"{NOTIFY_SOCKET} is neither an absolute path nor an abstract socket ('@...');"
                " not notifying systemd", socket=value)
    return None


def watchdog_interval_s(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """systemd's watchdog interval in seconds, when this process (``pid``) is to feed it.

    None without ``WATCHDOG_USEC``, or when ``WATCHDOG_PID`` names another
    process (as in a child that inherited its parent's environment).
    """
    raw_usec = env.get(WATCHDOG_USEC)
    if not raw_usec:
        return None
    raw_pid = env.get(WATCHDOG_PID)
    if raw_pid:
        try:
            expected = int(raw_pid)
        except ValueError:
            raise HeraldConfigError(f"{WATCHDOG_PID} must be a process id (got {raw_pid!r})") from None
        if expected != (os.getpid() if pid is None else pid):
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        usec = 0
    if usec <= 0:
        raise HeraldConfigError(
            f"{WATCHDOG_USEC} must be a whole number of microseconds above 0 (got {raw_usec!r})")
    return usec / 1_000_000


def share_watchdog_with_children(env: MutableMapping[str, str] | None = None, pid: int | None = None) -> bool:
    """For a parent whose children do the work (``herald worker``: Dramatiq's parent
    process forks the worker processes): when systemd expects this process to feed
    the watchdog, let the children it starts feed it instead (their unit needs
    ``NotifyAccess=all``). Returns whether the watchdog was handed on."""
    env = os.environ if env is None else env
    if env.get(WATCHDOG_USEC) and env.get(WATCHDOG_PID) == str(os.getpid() if pid is None else pid):
        del env[WATCHDOG_PID]
        return True
    return False


class Notifier:
    """Sends notifications to systemd; does nothing when not run by systemd.

    Thread-safe and fork-safe: each send opens its own socket, as libsystemd's
    ``sd_notify`` does (Herald sends a few datagrams a minute).
    """

    def __init__(self, address: str | bytes | None, watchdog_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.watchdog_s = watchdog_s if address is not None else None
        self.clock = clock
        self._failed_once = False
        self._last_fed: float | None = None
        self._ready_sent = False
        self._lock = threading.Lock()

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """The notifier systemd's variables describe (of ``os.environ`` by default)."""
        env = os.environ if env is None else env
        return cls(notify_address(env.get(NOTIFY_SOCKET)), watchdog_interval_s(env, pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def feed_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half systemd's interval, so one late feed is no restart."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; whether systemd got them."""
        if self.address is None:
            return False
        data = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self.address)
        except OSError as exc:
            with self._lock:
                first, self._failed_once = not self._failed_once, True
            if first:  # once: a socket that is gone stays gone, and the log must not fill up
                log.warning("cannot notify systemd; further failures are not logged",
                            socket=_shown(self.address), error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (with a status line); only the first call sends READY=1."""
        with self._lock:
            first, self._ready_sent = not self._ready_sent, True
        lines = ["READY=1"] if first else []
        if status:
            lines.append(f"STATUS={status}")
        return bool(lines) and self.notify(*lines)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        """WATCHDOG=1 now (when systemd runs a watchdog for this process)."""
        if self.watchdog_s is None:
            return False
        with self._lock:
            self._last_fed = self.clock()
        return self.notify("WATCHDOG=1")

    def feed(self) -> bool:
        """WATCHDOG=1 unless sent within the last :attr:`feed_interval_s`: for callers
        that prove progress more often than systemd needs to hear about it."""
        interval = self.feed_interval_s
        if interval is None:
            return False
        with self._lock:
            due = self._last_fed is None or self.clock() - self._last_fed >= interval
        return self.watchdog() if due else False


async def feed_while(notifier: Notifier, stop: asyncio.Event,
                     healthy: Callable[[], bool] = lambda: True) -> None:
    """Feed the watchdog every :attr:`Notifier.feed_interval_s` from this event loop
    while ``healthy()`` says the process makes progress, until ``stop`` is set.

    Running on the loop proves the loop answers: a blocked loop stops feeding.
    """
    interval = notifier.feed_interval_s
    if interval is None:
        return
    while not stop.is_set():
        if healthy():
            notifier.watchdog()
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass


def _shown(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address
