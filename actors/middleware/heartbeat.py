"""The worker heartbeat middleware: each Dramatiq worker process beats in
herald.heartbeats (kind 'worker') from boot until it has finished its messages.

The beat is what the sweeper and /health ask when they need to know whether
the worker process that claimed a step is still alive (see :mod:`actors.liveness`).
"""

from __future__ import annotations

import threading

import dramatiq
from dramatiq.middleware import Middleware

from actors.liveness import HeartbeatThread, worker_instance

FIRST_BEAT_TIMEOUT_S = 5.0


class WorkerHeartbeat(Middleware):
    """Starts this process's heartbeat thread at worker boot; records the stop at shutdown."""

    def __init__(self, database_url: str, interval_s: float) -> None:
        self.database_url = database_url
        self.interval_s = interval_s
        self._thread: HeartbeatThread | None = None

    @property
    def first_beat(self) -> threading.Event | None:
        """Set once this process has beaten, so its database connection works (None before boot)."""
        return None if self._thread is None else self._thread.first_beat

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._thread = HeartbeatThread(self.database_url, worker_instance(), kind="worker",
                                       interval_s=self.interval_s)
        self._thread.start()
        # Beat once before taking messages, so no claim names an unknown process.
        self._thread.first_beat.wait(FIRST_BEAT_TIMEOUT_S)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
