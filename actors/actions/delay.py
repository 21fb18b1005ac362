"""delay: a durable wait, for a duration or until a time taken from the context.

The wait lives in PostgreSQL (the step is *waiting* with ``wake_at``), so it
survives restarts; the daemon's sweeper wakes due steps. ``cancel_on`` names
triggers (e.g. ``job_cancelled``) whose event, on the same record, cancels the
waiting run.
"""

from __future__ import annotations

import datetime as dt

from actors.actions.base import Action, Done, Outcome, StepRun, Wait, register
from actors.model.actions import UNTIL, DelaySecondsSpec, DelaySpec
from actors.model.durations import parse_duration
from config.errors import StepError


def _parse_time(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise StepError(f"delay until: {text!r} is not an ISO date or timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class _Delay(Action):
    def wake_at(self, run: StepRun, now: dt.datetime) -> dt.datetime:  # pragma: no cover - abstract
        raise NotImplementedError

    async def execute(self, run: StepRun) -> Outcome:
        if run.step["wake_at"] is not None:
            return Done({"waited_until": run.step["wake_at"].isoformat()})
        now = run.now()
        until = self.wake_at(run, now)
        run.rendered["until"] = until.isoformat()
        return Done({"waited_until": None}) if until <= now else Wait(until)


@register
class Delay(DelaySpec, _Delay):
    """A wait for a duration, or until a time from the context."""

    def wake_at(self, run: StepRun, now: dt.datetime) -> dt.datetime:
        config = run.config
        if "duration" in config:
            return now + parse_duration(config["duration"], "duration")
        until = _parse_time(run.render(UNTIL) or "")
        return until + parse_duration(config.get("offset", 0), "offset")


@register
class DelaySeconds(DelaySecondsSpec, _Delay):
    """The CRM rules' ``delay_seconds`` with ``seconds``."""

    def wake_at(self, run: StepRun, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=float(run.config["seconds"]))
