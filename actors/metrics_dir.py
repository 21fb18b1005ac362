"""Where a worker group's metrics live between its processes, and who serves them.

``herald worker`` runs Dramatiq's command line, which forks several worker
processes. prometheus-client's multiprocess mode lets them share values: each
writes its own files in one directory, named by ``PROMETHEUS_MULTIPROC_DIR``,
which the library reads once, when it is imported. So this module imports no
prometheus-client at the top: :func:`prepare_multiprocess_dir` runs in
``herald worker`` before anything imports it and before Dramatiq forks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Read by Dramatiq's Prometheus middleware when it is imported (actors.middleware.metrics).
DRAMATIQ_PROM_VARIABLE = "dramatiq_prom_db"
DIR_PREFIX = "herald-worker-metrics-"


def prepare_multiprocess_dir() -> Path:
    """A new, empty directory for this worker group's values (under the temporary
    directory, private under systemd's ``PrivateTmp``), named in the environment
    the worker processes inherit.

    A fresh directory per start is the "cleared at start" the multiprocess mode
    needs: a restarted worker group starts its counters at zero, which Prometheus
    reads as a counter reset. Directories left by groups that died are removed."""
    parent = Path(tempfile.gettempdir())
    for stale in parent.glob(f"{DIR_PREFIX}*"):
        pid = stale.name.removeprefix(DIR_PREFIX)
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    path = parent / f"{DIR_PREFIX}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    os.environ[MULTIPROC_VARIABLE] = str(path)
    os.environ[DRAMATIQ_PROM_VARIABLE] = str(path)
    return path


def remove_multiprocess_dir(path: Path) -> None:
    """At the worker group's end: its values go with it."""
    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def serve_worker_metrics() -> int:
    """A Dramatiq fork function (``herald worker`` passes it as ``--fork-function``
    when HERALD_WORKER_METRICS_PORT is not 0): serve the worker group's values,
    summed over its processes, on HERALD_METRICS_HOST:HERALD_WORKER_METRICS_PORT
    until the worker stops."""
    from prometheus_client import CollectorRegistry, multiprocess

    from actors.metrics_http import serve_forever
    from config.settings import current

    settings = current()
    path = os.environ.get(MULTIPROC_VARIABLE)
    if not path:
        log.warning("worker metrics: no multiprocess directory; not serving")
        return 0

    def registry() -> CollectorRegistry:
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected, path=path)
        return collected

    return serve_forever(registry, settings, settings.worker_metrics_port, what="worker")
