"""The dashboard's pages and API, one module per page; each has a ``routes``
table that dashboard.app adds."""

from dashboard.views import (
    account,
    analytics,
    events,
    failures,
    health,
    metrics,
    overview,
    runs,
    users,
    workflow_tests,
    workflows,
)

VIEW_MODULES = (account, overview, runs, events, failures, workflows, workflow_tests, analytics, users, health, metrics)
