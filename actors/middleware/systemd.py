"""The worker's side of systemd's notify protocol (``herald-worker.service``).

``herald worker`` is Dramatiq's parent process, which forks the worker
processes; systemd sees the parent as the service's main process. The parent
hands systemd's watchdog to its children (:func:`config.sd_notify.share_watchdog_with_children`),
and the unit has ``NotifyAccess=all`` so that systemd listens to them. Each
worker process, from this middleware:

- sends **READY=1** once it has beaten in herald.heartbeats (its database
  connection works) and its broker's Redis answers a PING; until then it keeps
  trying, and systemd keeps the unit "activating". The first worker process
  to get there makes the unit ready; the others' READY=1 change nothing.
- feeds the **watchdog** (WATCHDOG=1, at most every half interval) each time
  its actors' event loop answers the lifecycle middleware's watchdog thread
  (:class:`actors.middleware.lifecycle.WorkerLifecycle`). systemd restarts the
  unit when no worker process has fed it for ``WatchdogSec``: every process
  stopped, stuck with its threads, or unable to reach systemd. One process
  whose event loop is stuck while the others run is the lifecycle
  middleware's to handle: it exits (status 76) after ``HERALD_WATCHDOG``, and
  Dramatiq's parent then exits non-zero for ``Restart=on-failure``.
- sends **STOPPING=1** as it starts its shutdown.

Like the lifecycle middleware, it acts only in processes Dramatiq's command
line forked, never in a process that merely imports the broker.
"""

from __future__ import annotations

import os
import threading

import dramatiq
import redis
import structlog
from dramatiq.middleware import Middleware

from actors.middleware.heartbeat import WorkerHeartbeat
from actors.middleware.lifecycle import WorkerLifecycle
from config.sd_notify import Notifier

log = structlog.get_logger(__name__)

# Between two attempts to see the database and Redis before READY=1.
READY_RETRY_S = 1.0


class SystemdNotify(Middleware):
    """READY=1, WATCHDOG=1 and STOPPING=1 from each worker process (see the module)."""

    def __init__(self, ready_retry_s: float = READY_RETRY_S) -> None:
        self.ready_retry_s = ready_retry_s
        self.notifier: Notifier | None = None
        self._stopping = threading.Event()

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        self.notifier = Notifier.from_environ()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        notifier = self.notifier
        if notifier is None or not notifier.enabled:
            return
        for middleware in broker.middleware:
            if isinstance(middleware, WorkerLifecycle):
                middleware.loop_answered.append(notifier.feed)
        heartbeat = next((m for m in broker.middleware if isinstance(m, WorkerHeartbeat)), None)
        threading.Thread(target=self._announce_when_connected, args=(broker, heartbeat, notifier),
                         name="herald-systemd-ready", daemon=True).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stopping.set()
        if self.notifier is not None:
            self.notifier.stopping(f"worker process {os.getpid()} stopping")

    def _announce_when_connected(self, broker: dramatiq.Broker, heartbeat: WorkerHeartbeat | None,
                                 notifier: Notifier) -> None:
        waiting_for = ""
        while not self._stopping.is_set():
            missing = self._missing(broker, heartbeat)
            if not missing:
                notifier.ready(f"worker process {os.getpid()} running")
                log.info("worker process connected; told systemd it is ready", pid=os.getpid())
                return
            if missing != waiting_for:
                notifier.status(f"worker process {os.getpid()} waiting for {missing}")
                waiting_for = missing
            self._stopping.wait(self.ready_retry_s)

    def _missing(self, broker: dramatiq.Broker, heartbeat: WorkerHeartbeat | None) -> str:
        """What this process cannot reach yet ("" once it reaches both)."""
        beat = heartbeat.first_beat if heartbeat is not None else None
        if beat is not None and not beat.is_set():
            return "PostgreSQL"
        client = getattr(broker, "client", None)
        if client is not None:
            try:
                client.ping()
            except (redis.RedisError, OSError):
                return "Redis"
        return ""
