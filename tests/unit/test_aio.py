"""``wait_event``: a loop waiting on an event with a timeout ends when cancelled, even when the event is set in
the same loop iteration as the cancellation (``asyncio.wait_for`` loses that cancellation on Python 3.11)."""

from __future__ import annotations

import asyncio

from modelmarket.core.aio import wait_event


async def _forever(event: asyncio.Event, woke: list[bool]) -> None:
    while True:  # the shape of every follower loop: the invalidator, the supervisor's waits
        woke.append(await wait_event(event, 10))
        event.clear()


def test_a_cancellation_that_comes_with_the_event_ends_the_loop() -> None:
    async def scenario() -> None:
        event, woke = asyncio.Event(), []
        task = asyncio.create_task(_forever(event, woke))
        await asyncio.sleep(0.01)  # waiting on the event
        event.set()  # another thread's notification and the shutdown, in one iteration
        task.cancel()
        await asyncio.wait({task}, timeout=2)
        assert task.cancelled()
        assert woke == []

    asyncio.run(scenario())


def test_it_says_whether_the_event_came_or_the_time_ran_out() -> None:
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        timed_out = await wait_event(event, 0.01)
        asyncio.get_running_loop().call_later(0.01, event.set)
        return timed_out, await wait_event(event, 5)

    assert asyncio.run(scenario()) == (False, True)
