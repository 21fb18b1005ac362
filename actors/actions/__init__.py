"""Every action a workflow step can take, registered by the modules of this package."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from actors.actions.base import ACTIONS, Action, Done, Outcome, Param, StepRun, Wait, register
from config.errors import WorkflowValidationError

__all__ = ["ACTIONS", "Action", "Done", "Outcome", "Param", "StepRun", "Wait", "get_action", "register"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def get_action(name: Any, field: str) -> Action:
    if name not in ACTIONS:
        known = ", ".join(sorted(ACTIONS))
        raise WorkflowValidationError(field, f"unknown action {name!r} (known: {known})")
    return ACTIONS[name]
