"""The workflow model: what a workflow is and how it reads an event.

Triggers, conditions, templates, column naming, durations, the duplicate,
retry and rate-limit policies, each action's parameters and the workflow's
validation. Pure: it imports no Dramatiq, Redis, database driver or settings,
so the worker, the daemon, the CLI, the dashboard and the test runner share it.
"""
