"""What the daemon counts: events dispatched, and the sweeper's re-sends and parked steps.

The daemon is one process, so its values live in its own memory (no
multiprocess files) and its own ``/metrics`` listener serves them on
HERALD_METRICS_HOST:HERALD_DAEMON_METRICS_PORT (see :mod:`actors.metrics_http`
for who may read it). Each daemon counts what it did itself: with several
daemons, Prometheus adds them up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter

from actors.metrics_http import serve_in_thread
from config.settings import Settings

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_DISPATCHED = Counter(
    "herald_events_dispatched", "Outbox events this daemon claimed and sent to the match actor.",
    registry=REGISTRY)
SWEEPER_RESENT = Counter(
    "herald_sweeper_resent", "Work whose message was lost (or whose worker died) that the sweeper"
    " sent again: event (to match), run (to enrich), step (pending past its lease),"
    " stalled_step (sending, its worker gone; the provider drops repeats).",
    ["kind"], registry=REGISTRY)
SWEEPER_DUE = Counter(
    "herald_sweeper_due_sent", "Steps whose retry or wait came due that the sweeper sent to their actor.",
    registry=REGISTRY)
SWEEPER_PARKED = Counter(
    "herald_sweeper_parked", "Steps the sweeper parked as unknown (sending when their worker died;"
    " never resent blindly).", registry=REGISTRY)

# Sweeper.sweep's counts -> the kind label.
_RESENT_KINDS = {"events": "event", "runs": "run", "steps": "step", "resent": "stalled_step"}
for _kind in _RESENT_KINDS.values():
    SWEEPER_RESENT.labels(_kind)  # every kind shown from the start, at 0


def record_sweep(counts: Mapping[str, int]) -> None:
    """One sweep's counts (daemon.sweeper.Sweeper.sweep)."""
    for key, kind in _RESENT_KINDS.items():
        if counts.get(key):
            SWEEPER_RESENT.labels(kind).inc(counts[key])
    if counts.get("due"):
        SWEEPER_DUE.inc(counts["due"])
    if counts.get("parked"):
        SWEEPER_PARKED.inc(counts["parked"])


def serve(settings: Settings) -> Callable[[], None]:
    """Start the daemon's /metrics listener (none when the port is 0); returns its stop."""
    return serve_in_thread(lambda: REGISTRY, settings, settings.daemon_metrics_port, what="daemon")
