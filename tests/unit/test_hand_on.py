"""Which steps a message carries out itself and which it sends on (actors.steps._hand_on):
the next step of a run, due now, runs in the same message while its time allows;
a step that waits or is retried later, or one due after the message's deadline,
goes to its actor's queue; a chained step that fails is sent to its actor too."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from actors import steps
from actors.steps import FollowUp


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    record: dict[str, list[Any]] = {"ran": [], "sent": []}

    async def run_steps(step_ids: list[int], actor_name: str, deadline: float) -> None:
        if step_ids == [666]:
            raise ConnectionResetError("PostgreSQL went away")
        record["ran"].append((actor_name, step_ids))

    def send(actor_name: str, ids: list[int], *, delay_ms: int | None = None) -> None:
        record["sent"].append((actor_name, ids, delay_ms))

    monkeypatch.setattr(steps, "run_steps", run_steps)
    monkeypatch.setattr(steps, "send", send)
    return record


async def test_steps_due_now_run_in_the_message_and_later_ones_are_queued(recorded: dict[str, list[Any]]) -> None:
    await steps._hand_on([
        FollowUp(1, "sms"), FollowUp(2, "email"), FollowUp(3, "sms"),
        FollowUp(4, "sms", delay_s=30.0),  # a retry in 30 s
        FollowUp(5, "create_task"),
    ], deadline=time.monotonic() + 60)
    assert sorted(recorded["ran"]) == [("email", [2]), ("records", [5]), ("sms", [1, 3])]
    assert recorded["sent"] == [("sms", [4], 30_000)]


async def test_past_the_deadline_everything_is_queued(recorded: dict[str, list[Any]]) -> None:
    await steps._hand_on([FollowUp(1, "sms"), FollowUp(2, "email")], deadline=time.monotonic() - 1)
    assert recorded["ran"] == []
    assert sorted(recorded["sent"]) == [("email", [2], 0), ("sms", [1], 0)]


async def test_a_chained_step_that_fails_is_sent_to_its_actor_and_the_failure_raised(
    recorded: dict[str, list[Any]]
) -> None:
    with pytest.raises(ConnectionResetError):
        await steps._hand_on([FollowUp(666, "sms"), FollowUp(7, "email")], deadline=time.monotonic() + 60)
    assert recorded["ran"] == [("email", [7])]  # the others still run
    assert recorded["sent"] == [("sms", [666], None)]


async def test_a_message_being_cancelled_queues_its_follow_ups(recorded: dict[str, list[Any]]) -> None:
    finished = asyncio.Event()

    async def message() -> None:
        try:
            await asyncio.Event().wait()  # a provider call when the worker stops
        finally:
            await steps._hand_on([FollowUp(1, "sms")], deadline=time.monotonic() + 60)
            finished.set()

    task = asyncio.create_task(message())
    await asyncio.sleep(0)  # let it start waiting (a scheduling point, not a timing guess)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()
    assert recorded["ran"] == [] and recorded["sent"] == [("sms", [1], 0)]
