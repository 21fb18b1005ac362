"""The dashboard's pages and API, one module per page; each has a ``routes``
table that dashboard.app adds."""

from dashboard.views import account, health, overview, runs

VIEW_MODULES = (account, overview, runs, health)
