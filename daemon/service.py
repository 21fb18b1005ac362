"""The daemon process: listener, dispatcher, WAL capture, sweeper, scheduler and heartbeat on one event loop.

SIGTERM or SIGINT sets a stop event and the tasks finish what they are doing
(a claimed batch is sent before the dispatcher stops); a second signal exits
at once. Nothing is lost either way: unsent work waits in the outbox.
"""

from __future__ import annotations

import asyncio
import os
import signal

import structlog

from actors.broker import send, setup_broker
from config.database import create_pool
from config.sd_notify import Notifier
from config.settings import Settings
from daemon import metrics
from daemon.dispatcher import Dispatcher
from daemon.heartbeat import Heartbeat
from daemon.listener import listen
from daemon.progress import CURRENT, Progress, watch
from daemon.retention import Retention, RetentionPolicy
from daemon.scheduler import Scheduler
from daemon.sweeper import Sweeper
from daemon.wal_capture import WalCapture

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0


async def run_daemon(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Run the daemon's tasks until stopped; return the process's exit status.

    Every loop survives database and Redis outages on its own; a task that
    ends any other way is a bug, so its traceback is logged, the others are
    stopped, and the daemon exits non-zero for its supervisor to restart it.
    """
    stop = stop or asyncio.Event()
    # systemd (Type=notify): READY=1 once the pool and the LISTEN connection are up,
    # WATCHDOG=1 while every loop makes progress, STOPPING=1 (see daemon.progress).
    notifier = Notifier.from_environ()
    progress = Progress(stall_s=settings.watchdog_s)
    setup_broker(settings)  # this process sends: match for new events, any actor for the sweeper
    _install_signal_handlers(stop)
    pool = await create_pool(settings.database_url, min_size=2, max_size=5)
    stop_metrics = metrics.serve(settings)
    status = 0
    try:
        dispatcher = Dispatcher(
            pool, lambda ids: send("match", ids),
            batch_size=settings.dispatch_batch_size, idle_s=settings.sweep_interval_s,
            max_in_flight=settings.dispatch_in_flight,
        )
        sweeper = Sweeper(pool, send, lease_s=settings.lease_s, interval_s=settings.sweep_interval_s,
                          liveness_s=settings.liveness_s, abandoned_s=settings.actor_time_limit_s + 5)
        # Tables captured from the WAL: their changes become events here, then wake the dispatcher.
        wal = WalCapture(pool, settings.database_url, interval_s=settings.sweep_interval_s,
                         on_events=lambda: dispatcher.notified(""))
        heartbeat = Heartbeat(pool, interval_s=settings.heartbeat_interval_s)
        scheduler = Scheduler(settings.database_url, pool, interval_s=settings.sweep_interval_s)
        # Pruning old rows is the leader's: it shares the scheduler's lock.
        retention = Retention(pool, RetentionPolicy.from_settings(settings), scheduler.is_leader)
        progress_token = CURRENT.set(progress)  # the loops' tasks copy it (see daemon.progress)
        tasks = [
            asyncio.create_task(listen(settings.database_url, dispatcher.notified, stop,
                                       on_listening=lambda: notifier.ready("running")), name="listener"),
            asyncio.create_task(dispatcher.run(stop), name="dispatcher"),
            asyncio.create_task(wal.run(stop), name="wal capture"),
            asyncio.create_task(sweeper.run(stop), name="sweeper"),
            asyncio.create_task(heartbeat.run(stop), name="heartbeat"),
            asyncio.create_task(scheduler.run(stop), name="scheduler"),
            asyncio.create_task(retention.run(stop), name="retention"),
            asyncio.create_task(watch(progress, notifier, stop), name="watchdog"),
        ]
        CURRENT.reset(progress_token)
        log.info("daemon started", instance=heartbeat.instance)
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is stopping:
                continue
            error = None if task.cancelled() else task.exception()
            if error is None and stop.is_set():
                continue  # it finished because Herald is stopping
            log.error("daemon task ended unexpectedly; stopping", task=task.get_name(),
                      exc_info=error if error is not None else False)
            status = 1
            stop.set()
        notifier.stopping()
        _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        stopping.cancel()
        log.info("daemon stopped", status=status)
    finally:
        stop_metrics()
        await pool.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().remove_signal_handler(signum)
    return status


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
