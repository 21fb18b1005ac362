"""The worker's delivery slots: a step is claimed only when a slot is free, and
every slot comes back, even from a step cancelled mid-way."""

from __future__ import annotations

import asyncio

from actors.steps import Slots


async def test_take_waits_for_a_free_slot_and_takes_what_is_free() -> None:
    slots = Slots(3)
    assert await slots.take(5) == 3 and slots.free == 0
    waiting = asyncio.create_task(slots.take(4))
    await asyncio.sleep(0)  # let it start waiting (a scheduling point, not a timing guess)
    assert not waiting.done()
    slots.give(2)
    assert await asyncio.wait_for(waiting, 5) == 2 and slots.free == 0


async def test_a_cancelled_user_gives_its_slot_back() -> None:
    slots = Slots(1)

    async def step() -> None:
        taken = await slots.take(1)
        try:
            await asyncio.Event().wait()  # a provider that never answers
        finally:
            slots.give(taken)

    running = asyncio.create_task(step())
    await asyncio.sleep(0)
    assert slots.free == 0
    running.cancel()  # the actor's time limit
    await asyncio.gather(running, return_exceptions=True)
    assert slots.free == 1
    assert await asyncio.wait_for(slots.take(1), 5) == 1


async def test_a_cancelled_waiter_does_not_swallow_a_wake_up() -> None:
    slots = Slots(1)
    await slots.take(1)
    first = asyncio.create_task(slots.take(1))
    second = asyncio.create_task(slots.take(1))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    slots.give(1)
    assert await asyncio.wait_for(second, 5) == 1
