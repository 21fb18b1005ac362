"""Workflow tests: `herald test` runs the cases of ``*.test.json`` files kept next to the workflows.

A test file names its workflow (a path relative to the test file) and holds
cases; each case gives an event and what the workflow should make of it:
whether it matches (and why not), and what each step would send, write or
wait for. A case runs the production code paths (the workflow parser, the
trigger and condition evaluation with its reasons, each action's own
parameter handling and the template renderer with its limits) with every
step in preview mode (:mod:`daemon.dry_run`): nothing is sent and nothing is
written, whatever providers are configured.

The format (every key not listed is refused, with the field at fault)::

    {
      "workflow": "job-completed.workflow.json",
      "defaults": {EVENT FIELDS shared by every case; "record" and "related" merge per key},
      "cases": [
        {
          "name": "a completed job emails the client",
          "event": {
            "operation": "update",                  # insert | update | delete (default: update
                                                    #   with "changes", else insert)
            "trigger": "job_completed",             # instead: a manual event (`herald trigger`)
            "entity": "job",                        # default: the workflow trigger's entity
            "record": {"id": 1, "status": "completed", ...},   # the row
            "changes": {"status": {"from": "in_progress", "to": "completed"}},
            "related": {"client": {"first_name": "Maria", ...}},
            "tenant": "1",                          # default "default"
            "at": "2024-05-01T09:00:00Z"            # the event's time (default: now)
          },
          "expect": {
            "matched": true,                        # default true
            "reason": "status did not change",      # a part of the match reason
            "steps": {                              # by step id; steps not named are not checked
              "step-1": {"recipient": "maria@example.com", "subject": "Job Completed - ...",
                         "body": {"contains": "Dear Maria"}},
              "wait": {"wait": "3d"},                # ends 3 days after the event ("until": ISO time)
              "task": {"row": {"title": "Call Maria"}},     # the columns named must match
              "update": {"fields": {"status": "invoiced"}},
              "hook": {"url": "https://...", "payload": {"job": {"id": 1}}},
              "broken": {"error": "client.lastName is undefined"}  # the step fails with this
            }
          }
        }
      ]
    }
"""

from daemon.workflow_tests.files import (
    SUFFIX,
    TestFileError,
    discover,
    display_path,
    load_test_file,
)
from daemon.workflow_tests.report import (
    describe_case,
    describe_mismatch,
    junit_xml,
    report_lines,
)
from daemon.workflow_tests.results import CaseResult, FileResult, Mismatch, TestSession
from daemon.workflow_tests.running import (
    build_event,
    run_case,
    run_test_file,
    run_tests,
)

__all__ = [
    "SUFFIX", "CaseResult", "FileResult", "Mismatch", "TestFileError", "TestSession", "build_event",
    "describe_case", "describe_mismatch", "discover", "display_path", "junit_xml", "load_test_file",
    "report_lines", "run_case", "run_test_file", "run_tests",
]
