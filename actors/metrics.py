"""What the worker counts as it works: provider requests, step outcomes, retries,
rate-limit waits, finished runs, and two latency histograms.

These are things that *happen* in a worker process, so they are Prometheus
counters and histograms recorded where they happen. ``herald worker`` runs
Dramatiq's command line, which forks several processes: it points
prometheus-client's multiprocess mode at a fresh directory before forking
(see :mod:`actors.metrics_dir`), every worker process writes its values
there, and the worker's own ``/metrics`` listener (a Dramatiq fork process,
:func:`actors.metrics_dir.serve_worker_metrics`) adds them up. In any other process (a test, the
test runner) they simply count in memory.

Labels stay bounded: channel, provider, action and outcome come from short
fixed lists; tenant and workflow labels are given to at most
``HERALD_METRICS_TENANT_LABELS`` tenants per process (0, the default: none),
and everything beyond that is counted under ``other``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from actors.providers.base import OutboundMessage, ProviderResult
from config.errors import DeliveryUnknownError, StepError

# Seconds; from a quick capture to a slow provider at the edge of its timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Runs span several steps, retries and deliberate delays.
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
OTHER = "other"
# Workflows labelled per labelled tenant; a tenant's further workflows count as "other".
MAX_WORKFLOWS_PER_TENANT = 50

# Herald's own registry: a process that also uses the global one (a test) sees no clash.
REGISTRY = CollectorRegistry(auto_describe=True)

PROVIDER_REQUESTS = Counter(
    "herald_provider_requests", "Messages handed to a provider, by how the request ended"
    " (sent, captured, failed, retrying: a transient failure, unknown: outcome not known).",
    ["channel", "provider", "outcome"], registry=REGISTRY)
PROVIDER_REQUEST_SECONDS = Histogram(
    "herald_provider_request_duration_seconds", "How long provider requests took.",
    ["channel", "provider"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
COMMIT_TO_PROVIDER_SECONDS = Histogram(
    "herald_commit_to_provider_seconds", "From the business change's commit (its event's capture)"
    " to the start of the provider request, for a step's first attempt.",
    ["channel"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
STEPS = Counter(
    "herald_steps", "Steps finished or put back, by action and outcome (sent, failed, skipped,"
    " unknown: parked for a person, retry, rate_limited, waiting).",
    ["action", "outcome"], registry=REGISTRY)
RETRIES = Counter(
    "herald_step_retries", "Transient failures that will be retried (each spends one of the step's retries).",
    ["action"], registry=REGISTRY)
RATE_LIMIT_WAITS = Counter(
    "herald_rate_limit_waits", "Steps told to wait by a rate limit (a provider's 429 / Retry-After,"
    " or a recipient limit); no retry is spent.", ["action"], registry=REGISTRY)
RUNS = Counter(
    "herald_runs", "Runs finished, by status (completed, failed, skipped).",
    ["status"], registry=REGISTRY)
RUNS_BY_WORKFLOW = Counter(
    "herald_workflow_runs", "Runs finished per tenant and workflow, for the first"
    " HERALD_METRICS_TENANT_LABELS tenants (the others: tenant and workflow 'other').",
    ["tenant", "workflow", "status"], registry=REGISTRY)
RUN_SECONDS = Histogram(
    "herald_run_duration_seconds", "From a run's creation to its end.",
    ["status"], buckets=RUN_BUCKETS, registry=REGISTRY)


class TenantLabels:
    """Gives tenant and workflow labels to the first ``limit`` tenants seen (per
    process), and ``other`` to the rest, so a thousand tenants add no thousand series."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._workflows: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def labels(self, tenant: str, workflow: str) -> tuple[str, str] | None:
        """(tenant, workflow) to record under; None when tenant labels are off."""
        if self.limit <= 0:
            return None
        with self._lock:
            workflows = self._workflows.get(tenant)
            if workflows is None:
                if len(self._workflows) >= self.limit:
                    return OTHER, OTHER
                workflows = self._workflows[tenant] = set()
            if workflow not in workflows:
                if len(workflows) >= MAX_WORKFLOWS_PER_TENANT:
                    return tenant, OTHER
                workflows.add(workflow)
        return tenant, workflow


_tenant_labels: TenantLabels | None = None


def tenant_labels() -> TenantLabels:
    global _tenant_labels
    if _tenant_labels is None:
        from config.settings import current

        _tenant_labels = TenantLabels(current().metrics_tenant_labels)
    return _tenant_labels


def record_run_finished(status: str, seconds: float | None, tenant: str, workflow: str) -> None:
    """A run ended (``workflow``: its name)."""
    RUNS.labels(status).inc()
    if seconds is not None:
        RUN_SECONDS.labels(status).observe(max(seconds, 0.0))
    labelled = tenant_labels().labels(tenant, workflow)
    if labelled is not None:
        RUNS_BY_WORKFLOW.labels(*labelled, status).inc()


async def metered(send: Callable[[OutboundMessage], Awaitable[ProviderResult]], message: OutboundMessage,
                  provider: str, since_commit_s: float | None) -> ProviderResult:
    """``send(message)``, counted by outcome and timed; ``since_commit_s``: the
    commit-to-request latency to record (None: not a first attempt)."""
    if since_commit_s is not None:
        COMMIT_TO_PROVIDER_SECONDS.labels(message.channel).observe(max(since_commit_s, 0.0))
    started = time.monotonic()
    outcome = "unknown"  # cancelled mid-request: whether it went out is not known
    try:
        result = await send(message)
        outcome = result.status
        return result
    except StepError as exc:
        outcome = "unknown" if isinstance(exc, DeliveryUnknownError) else (
            "failed" if exc.permanent else "retrying")
        raise
    finally:
        PROVIDER_REQUESTS.labels(message.channel, provider, outcome).inc()
        PROVIDER_REQUEST_SECONDS.labels(message.channel, provider).observe(time.monotonic() - started)
