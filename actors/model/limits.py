"""How much one tenant's workflow may ask of a shared worker, in one place.

A workflow is checked against the ``WORKFLOW_*`` limits when it is validated
(saved, imported, loaded by a worker), so an oversized one is refused with the
field at fault and never reaches an event. Templates are checked against the
``TEMPLATE_*`` limits while they render: a template over a limit fails its step
with the reason, and the worker goes on with other tenants' work.

This module imports nothing from Herald, Dramatiq, Redis or the settings: the
daemon, the worker, the CLI and the dashboard read the same numbers.
"""

from __future__ import annotations

# --- workflow documents (checked at validation) --------------------------------
#: The definition as compact JSON (UTF-8 bytes).
WORKFLOW_MAX_BYTES = 256 * 1024
#: Objects and lists inside objects and lists, anywhere in the document.
WORKFLOW_MAX_JSON_DEPTH = 64
#: Steps (field-service format) or actions (CRM rules).
WORKFLOW_MAX_STEPS = 50
#: Leaf comparisons in the trigger conditions (each key of a shorthand map counts).
WORKFLOW_MAX_CONDITIONS = 200
#: Groups inside groups in the trigger conditions.
WORKFLOW_MAX_CONDITION_DEPTH = 20
#: ``matches`` conditions: each may take up to ``REGEX_TIMEOUT_S`` per event.
WORKFLOW_MAX_PATTERNS = 10
#: Characters of one template (any string in a step's configuration).
TEMPLATE_MAX_SOURCE = 20 * 1024

# --- regular expressions in conditions ----------------------------------------
REGEX_MAX_PATTERN = 256
REGEX_MAX_INPUT = 10_000
REGEX_TIMEOUT_S = 0.05

# --- rendering a template (checked while it renders) ---------------------------
#: Seconds one template (one field of a step) may take to render.
TEMPLATE_TIME_LIMIT_S = 1.0
#: Seconds all the templates of one step may take together.
STEP_TEMPLATES_TIME_LIMIT_S = 2.0
#: Characters one template may render.
TEMPLATE_MAX_OUTPUT = 256 * 1024
#: Size of any string, list or mapping a template builds: characters of text plus
#: items, counted through nested lists as often as they appear.
TEMPLATE_MAX_VALUE = 256 * 1024
#: Numbers ``range()`` may give a template.
TEMPLATE_MAX_RANGE = 10_000
#: Bits of an integer a template computes (about 1,200 decimal digits).
TEMPLATE_MAX_INT_BITS = 4096
#: Growth of the worker's resident memory while one template renders (where the
#: operating system reports it), measured after its first milliseconds.
TEMPLATE_MAX_MEMORY = 64 * 1024 * 1024
