"""The dashboard's pages and API, one module per page; each has a ``routes``
table that dashboard.app adds."""

from dashboard.views import account, analytics, events, failures, health, overview, runs, users, workflows

VIEW_MODULES = (account, overview, runs, events, failures, workflows, analytics, users, health)
