"""What every action is: its spec (actors.model.actions: name, actor,
parameters and their checks) and a handler.

An action module defines one :class:`Action` subclass of its spec and
registers it with :func:`register`; the package imports every module.
``actor`` names the Dramatiq actor (and queue) that carries the action out. ``atomic`` actions only write to PostgreSQL, so their
effect commits in the same transaction as the step's status and can simply be
run again if a worker dies; the others hand a message to a provider and are
recorded *sending* before the call.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from actors.middleware.rate_limits import default_limit
from actors.model.actions import ActionSpec, Param
from actors.model.limits import STEP_TEMPLATES_TIME_LIMIT_S
from actors.model.rate_limits import RateLimit
from actors.model.templates import render
from config.errors import StepError
from config.settings import Settings


@dataclass
class StepRun:
    """A claimed step, with everything a handler needs to carry it out."""

    step: Mapping[str, Any]
    context: dict[str, Any]
    settings: Settings
    pool: asyncpg.Pool
    session: aiohttp.ClientSession
    # Atomic actions run inside the claiming transaction on this connection;
    # the others (which call a provider) hold none and use ``pool`` briefly.
    conn: asyncpg.Connection | None = None
    rendered: dict[str, Any] = field(default_factory=dict)
    # Preview (`herald test`, `herald workflows test`): render and check everything
    # as for real, then return what would be sent or written instead of doing it.
    # Nothing reaches a provider, the network or the messages table; records
    # actions read the target table's columns (when ``conn`` is given) and write nothing.
    preview: bool = False
    # The time the step runs at (a preview's event time); None: now.
    clock: dt.datetime | None = None
    # Seconds this step's templates have taken so far (STEP_TEMPLATES_TIME_LIMIT_S in all).
    render_seconds: float = field(default=0.0, init=False)
    # When this step began to run (``time.monotonic()``), just after its claim.
    started: float = field(default_factory=time.monotonic, init=False)

    def since_commit_s(self) -> float | None:
        """Seconds from the event's capture to now, for a step's first attempt (None
        for later attempts, whose wait is the retry's): the event's age at the claim,
        on PostgreSQL's clock, plus this process's time since, so hosts' clocks never mix."""
        age = self.step.get("event_age_s")
        if age is None or self.step.get("attempts") != 1:
            return None
        return float(age) + time.monotonic() - self.started

    def now(self) -> dt.datetime:
        return self.clock or dt.datetime.now(dt.UTC)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.step["config"])

    def rate_limit(self, actor_name: str) -> RateLimit | None:
        """The per-recipient limit for this step: the middleware's default for its actor
        (None: not limited), then the tenant's, then the workflow's."""
        default = default_limit(actor_name)
        if default is None:
            return None
        return default.override(self.step.get("tenant_rate_limit")).override(self.step.get("rate_limit"))

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt at one step of one run."""
        return f"{self.step['workflow_id']}:{self.step['event_id']}:{self.step['step_key']}"

    def param(self, param: Param) -> Any:
        found = param.find(self.config)
        return None if found is None else found[1]

    def render(self, param: Param, *, html: bool = False) -> str | None:
        """Render a template parameter (None when absent); keep it for the run's record."""
        value = self.param(param)
        if value is None:
            return None
        text = self._render(str(value), param.name, html)
        self.rendered[param.name] = text
        return text

    def render_object(self, value: Any, path: str) -> Any:
        """Render every string inside a JSON-like value."""
        if isinstance(value, str):
            return self._render(value, path, False)
        if isinstance(value, dict):
            return {k: self.render_object(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.render_object(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def _render(self, source: str, path: str, html: bool) -> str:
        """Render on the calling thread (the worker's event loop), within the time
        this step has left: each template stops at TEMPLATE_TIME_LIMIT_S and all of
        one step's at STEP_TEMPLATES_TIME_LIMIT_S, so a slow template holds the
        loop, and with it other tenants' steps, for at most that long."""
        started = time.monotonic()
        try:
            return render(source, self.context, field=path, html=html,
                          time_left=STEP_TEMPLATES_TIME_LIMIT_S - self.render_seconds)
        finally:
            self.render_seconds += time.monotonic() - started


@dataclass(frozen=True)
class Delivered:
    """A message the provider took: its row (``herald.messages``) is marked with the
    provider's answer in the statement that records the step sent."""

    message_id: int
    status: str
    provider_message_id: str | None


@dataclass(frozen=True)
class Done:
    """The step did its work; ``response`` is what the provider or database said;
    ``delivered``: the message it handed to a provider, to mark with the answer."""

    response: dict[str, Any] = field(default_factory=dict)
    delivered: Delivered | None = None


@dataclass(frozen=True)
class Wait:
    """The step waits until ``until`` (a delay), then the run goes on."""

    until: dt.datetime


Outcome = Done | Wait


class Action(ActionSpec):
    """Base of every action: its spec's name, actor and parameters; implement ``execute``."""

    async def execute(self, run: StepRun) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError


def require(value: str | None, what: str) -> str:
    """A rendered value that must not be empty (a recipient, a URL)."""
    if value is None or not value.strip():
        raise StepError(f"{what} is empty for this record")
    return value.strip()


ACTIONS: dict[str, Action] = {}


def register(action_class: type[Action]) -> type[Action]:
    """Class decorator: make an action available to workflows by its name."""
    ACTIONS[action_class.name] = action_class()
    return action_class
