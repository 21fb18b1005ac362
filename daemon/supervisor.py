"""`herald up`: start the Procfile's processes, watch them, stop them all together.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only
Herald, which then stops the children in order (and the embedded servers
after them). Children also get SIGTERM if Herald itself dies, so none is
left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import structlog

from config.settings import Settings

log = structlog.get_logger(__name__)

# The Procfile, as `herald up` runs it (tests check the two agree).
PROCESSES: dict[str, list[str]] = {
    "daemon": ["daemon"],
    "worker": ["worker"],
    "dashboard": ["dashboard"],
}
STOP_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent process dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``herald ARGS`` as a child in its own session."""
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: list[Child] = []

    def start(self) -> None:
        env = self.settings.child_env()
        for name, args in PROCESSES.items():
            self.children.append(Child(name, spawn(args, env)))
            log.info("process started", process=name, pid=self.children[-1].process.pid)

    def wait_for_dashboard(self, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        address = (self.settings.dashboard_host, self.settings.dashboard_port)
        while time.monotonic() < deadline:
            if self.exited() is not None:
                return False
            try:
                with socket.create_connection(address, timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def exited(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def run_until_signal(self) -> int:
        """Block until SIGINT/SIGTERM or a child exits; return the exit status."""
        received: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            if received:
                log.warning("second signal: killing processes now")
                self._kill_all()
                os._exit(1)
            received.append(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not received:
            child = self.exited()
            if child is not None:
                log.error("process exited; stopping Herald", process=child.name,
                          returncode=child.process.returncode)
                return 1
            time.sleep(0.2)  # a signal interrupts the sleep and runs on_signal
        log.info("stopping Herald", signal=signal.Signals(received[0]).name)
        return 0

    def stop(self) -> None:
        for child in self.children:
            if child.process.poll() is None:
                # The process itself, not its group: Dramatiq's master stops its
                # own workers, and a second SIGTERM would make them exit hard.
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("process did not stop in time; killing it", process=child.name)
                self._kill(child)
            log.info("process stopped", process=child.name, returncode=child.process.returncode)
        self._kill_all()  # anything a child left in its process group

    def _kill(self, child: Child) -> None:
        try:
            os.killpg(child.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.process.wait()

    def _kill_all(self) -> None:
        for child in self.children:
            try:
                os.killpg(child.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
