"""The worker-process lifecycle middleware: a Dramatiq worker process never
outlives its parent and never hangs.

``herald worker`` runs Dramatiq's command line: a parent process that forks
the worker processes. Left alone, each of these leaves a process that holds
messages and consumes nothing, or consumes unsupervised, forever:

- **The parent dies** (``kill -9``): its worker processes go on consuming.
  Each asks the kernel for a signal when its parent dies (``PR_SET_PDEATHSIG``),
  and a thread also watches the parent's pid (the parent could die before the
  request); either way the process stops as if its parent had told it to.
  The signal is SIGUSR1, not SIGTERM: the kernel sends it once per thread of
  the dying parent, and a second SIGTERM makes Dramatiq's worker process exit
  hard, half-way through its shutdown.
- **Stopping hangs**: with Redis gone, Dramatiq's requeue on shutdown raises,
  or an ack is retried forever; the shutdown never completes and the event
  loop thread (not a daemon thread) keeps the process alive. Once shutdown
  starts, the process has ``shutdown_timeout_s``; then it exits with
  :data:`EXIT_SHUTDOWN_TIMEOUT`.
- **The event loop stops answering** (a blocking call in an async actor, a
  deadlock): every async actor waits forever. A watchdog thread schedules a
  trivial callback on the loop; if it has not run within ``watchdog_s``, the
  process exits with :data:`EXIT_WATCHDOG`.
- **A second SIGTERM** ("stop now"): Dramatiq's worker process answers it with
  ``sys.exit`` half-way through its shutdown, and then waits for the event
  loop thread that nobody stops any more. It exits at once instead.

A worker process that exits non-zero makes Dramatiq's parent stop the others
and exit with that status, so ``herald up`` (or systemd's
``Restart=on-failure``) starts the worker again; the work the process held is
redelivered, or sent again by the daemon's sweeper. The hooks act only in
processes Dramatiq's command line forked (from ``after_process_boot`` on),
never in a process that merely imports the broker.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import dramatiq
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware

if TYPE_CHECKING:
    from config.settings import Settings

log = structlog.get_logger(__name__)

# Exit statuses of a worker process that gave up on itself (Dramatiq's own are 0-4).
EXIT_SHUTDOWN_TIMEOUT = 75
EXIT_WATCHDOG = 76
EXIT_KILLED = 1  # Dramatiq's own status for a worker process told twice to stop
# The longest a worker process takes to stop (its in-flight actors included)
# before it exits anyway; at most the watchdog's limit.
SHUTDOWN_TIMEOUT_S = 15.0
PARENT_CHECK_INTERVAL_S = 1.0
PARENT_DEATH_SIGNAL = signal.SIGUSR1
PR_SET_PDEATHSIG = 1


class WorkerLifecycle(Middleware):
    """Ties each worker process to its parent and bounds how long it may be stuck.

    Parameters:
      watchdog_s: longest the asyncio event loop may go without running a
        scheduled callback before the process exits (EXIT_WATCHDOG).
      shutdown_timeout_s: longest the process may take to stop, from the
        start of its shutdown or its parent's death (EXIT_SHUTDOWN_TIMEOUT).
    """

    def __init__(self, *, watchdog_s: float = 30.0, shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
                 parent_check_interval_s: float = PARENT_CHECK_INTERVAL_S) -> None:
        self.watchdog_s = watchdog_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.parent_check_interval_s = parent_check_interval_s
        self._worker_process = False
        self._parent_pid: int | None = None
        self._death_signal_set = False
        self._stop_requested = threading.Lock()  # taken once: the first request stops the worker
        self._stopping = threading.Event()
        self._deadline_armed = threading.Lock()
        self._deadline: threading.Thread | None = None
        # Called (from the watchdog thread) each time the event loop answers: proof of
        # progress for systemd's watchdog (actors.middleware.systemd).
        self.loop_answered: list[Callable[[], None]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerLifecycle:
        return cls(watchdog_s=settings.watchdog_s,
                   shutdown_timeout_s=min(SHUTDOWN_TIMEOUT_S, settings.watchdog_s))

    # -- hooks ----------------------------------------------------------------

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        """In a worker process Dramatiq forked: die with the parent."""
        self._worker_process = True
        parent = multiprocessing.parent_process()
        self._parent_pid = parent.pid if parent is not None and parent.pid else os.getppid()
        self._chain_sigterm()
        signal.signal(PARENT_DEATH_SIGNAL, self._on_parent_death)
        self._death_signal_set = (set_parent_death_signal(PARENT_DEATH_SIGNAL)
                                  and os.getppid() == self._parent_pid)
        _start_thread("herald-parent-watch", self._watch_parent)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not self._worker_process:
            return
        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            _start_thread("herald-loop-watchdog", self._watch_loop, loop_thread.loop)
        log.info("worker process running", pid=os.getpid(), parent=self._parent_pid,
                 watchdog_s=self.watchdog_s, shutdown_timeout_s=self.shutdown_timeout_s)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._worker_process:
            self._arm_deadline("shutdown")

    # -- the threads ------------------------------------------------------------

    def _chain_sigterm(self) -> None:
        """The first SIGTERM goes to Dramatiq's handler (a graceful stop); a second exits at once."""
        dramatiq_handler = signal.getsignal(signal.SIGTERM)
        received = 0

        def on_sigterm(signum: int, frame: object) -> None:
            nonlocal received
            received += 1
            if received > 1:
                _exit(EXIT_KILLED, "second SIGTERM: exiting now")
            if callable(dramatiq_handler):
                dramatiq_handler(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _on_parent_death(self, _signum: int, _frame: object) -> None:
        self._request_stop()

    def _request_stop(self) -> None:
        """Stop the worker the way its parent would have: one SIGTERM, however often asked."""
        if self._stop_requested.acquire(blocking=False):
            os.kill(os.getpid(), signal.SIGTERM)

    def _watch_parent(self) -> None:
        while True:
            if os.getppid() != self._parent_pid:
                log.error("the worker's parent process is gone; stopping", parent=self._parent_pid)
                self._arm_deadline("parent gone")
                if not self._death_signal_set:  # the kernel will not tell the worker
                    self._request_stop()
                return
            if self._stopping.wait(self.parent_check_interval_s):
                return

    def _watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        interval = min(1.0, self.watchdog_s / 4)
        while not self._stopping.is_set():
            answered = threading.Event()
            try:
                loop.call_soon_threadsafe(answered.set)
            except RuntimeError:  # the loop is closed: the worker is stopping
                return
            if not answered.wait(self.watchdog_s) and not self._stopping.is_set():
                _exit(EXIT_WATCHDOG, "the event loop has not answered; exiting for a restart",
                      watchdog_s=self.watchdog_s)
            for callback in list(self.loop_answered):
                callback()
            self._stopping.wait(interval)

    def _arm_deadline(self, reason: str) -> None:
        """From now on, the process has shutdown_timeout_s to end; never disarmed."""
        self._stopping.set()
        with self._deadline_armed:
            if self._deadline is None:
                self._deadline = _start_thread("herald-shutdown-deadline", self._expire, reason)

    def _expire(self, reason: str) -> None:
        threading.Event().wait(self.shutdown_timeout_s)
        _exit(EXIT_SHUTDOWN_TIMEOUT, "the worker process did not stop in time; exiting",
              reason=reason, timeout_s=self.shutdown_timeout_s)


def _start_thread(name: str, target: Callable[..., None], *args: object) -> threading.Thread:
    # Daemon threads: they must never be what keeps the process alive.
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


def set_parent_death_signal(signum: signal.Signals) -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(signum))) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def _exit(status: int, message: str, **details: object) -> None:
    log.error(message, pid=os.getpid(), exit_status=status, **details)
    for stream in (sys.stderr, sys.stdout):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
    os._exit(status)
