"""The example Grafana dashboard and Prometheus alert rules in config/monitoring/
parse, and use only metrics Herald (or Dramatiq's middleware) exports."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO

MONITORING = REPO / "config" / "monitoring"
METRIC_NAME = re.compile(r"\b((?:herald|dramatiq)_[a-z_]+)\b")


def exported_names() -> set[str]:
    """Every sample name the dashboard's, the worker's and the daemon's /metrics can show."""
    import actors.metrics
    import daemon.metrics
    from dashboard.views.metrics import StateCollector

    state = CollectorRegistry()
    state.register(StateCollector(
        {"captured": 1, "backlog": {"pending": 0, "dispatched": 0, "oldest_s": None},
         "processes": {"worker": (1, 0)}, "runs": {}, "steps": {}},
        {"round_trip_ms": 1.0, "queues": {"match": {"ready": 0, "unacked": 0, "delayed": 0, "dead": 0}}}, 0.01))
    names: set[str] = set()
    for registry in (state, actors.metrics.REGISTRY, daemon.metrics.REGISTRY):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            if family.type == "counter":
                names.add(f"{family.name}_total")
            if family.type == "histogram":
                names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    return names


def test_the_grafana_dashboard_parses_and_uses_only_exported_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert dashboard["title"] == "Herald" and len(expressions) >= 15
    used = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert used and used <= exported_names(), used - exported_names()
    for needed in ("herald_outbox_oldest_age_seconds", "herald_queue_messages", "herald_processes_live",
                   "herald_commit_to_provider_seconds_bucket", "herald_run_duration_seconds_bucket",
                   "herald_provider_requests_total", "herald_sweeper_resent_total"):
        assert needed in used


def test_the_alert_rules_parse_and_cover_backlog_failures_and_workers() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    [group] = rules["groups"]
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    assert {"HeraldOutboxBacklogOld", "HeraldRunFailureRate", "HeraldNoLiveWorker"} <= set(alerts)
    exported = exported_names()
    for rule in alerts.values():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        used = set(METRIC_NAME.findall(rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)
        assert rule["expr"].count("(") == rule["expr"].count(")")
