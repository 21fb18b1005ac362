"""Every action a workflow step can take, registered by the modules of this package.

Each is the spec the workflow model validates against (actors.model.actions)
with a handler; every spec has one.
"""

from __future__ import annotations

import importlib
import pkgutil

from actors.actions.base import ACTIONS, Action, Done, Outcome, StepRun, Wait, register
from actors.model.actions import SPECS, Param

__all__ = ["ACTIONS", "Action", "Done", "Outcome", "Param", "StepRun", "Wait", "register"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

if set(ACTIONS) != set(SPECS):  # pragma: no cover - a spec without a handler, or the reverse
    raise ImportError(f"actions and their specs differ: {sorted(set(ACTIONS) ^ set(SPECS))}")
