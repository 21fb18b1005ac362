"""Dramatiq's own message metrics for Herald's worker group.

Dramatiq's Prometheus middleware counts messages processed, errored, retried
and dead-lettered per queue and actor, in-progress messages, and message
durations, in prometheus-client's multiprocess mode. Herald uses it as it is,
except for its exposition server: that one listens on every address, with no
access check, from a directory every Dramatiq program on the machine shares.
Herald's worker serves the same values itself, with Herald's own, on its
``/metrics`` listener (see :mod:`actors.metrics_dir`), from a directory of its
own. Importing this module reads that directory (``dramatiq_prom_db``), so
only a worker process set up by ``herald worker`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dramatiq.middleware.prometheus import Prometheus


class DramatiqMetrics(Prometheus):
    """Dramatiq's Prometheus middleware, less its own HTTP server."""

    @property
    def forks(self) -> list[Callable[[], Any]]:
        return []
