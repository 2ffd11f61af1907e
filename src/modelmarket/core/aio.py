"""Small asyncio helpers the event loops of the gateway and the runners share."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passed; True when it was set.

    Not ``asyncio.wait_for(event.wait(), ...)``: on Python 3.11 that returns normally, and the caller's task forgets
    it was cancelled, when the cancellation and the event come in the same loop iteration (fixed in 3.12). A loop
    that waits so would then never end: a gateway's shutdown, or closing the event loop, would wait for it
    forever. ``asyncio.timeout`` delivers the cancellation.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
