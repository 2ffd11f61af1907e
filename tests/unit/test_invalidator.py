"""The invalidator's rules without a store: only touched snapshots reload, the head moves after them, a failed reload
is retried, a replica too far behind reloads everything, and a notification from another thread wakes it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from modelmarket.adapters.bus.changes import LocalChangeFeed
from modelmarket.gateway.invalidation import MAX_PAGES, PAGE_ROWS, Invalidator

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


class Chain:
    def __init__(self) -> None:
        self.actions: list[str] = []
        self.reloaded: list[str] = []
        self.failing: set[str] = set()

    def read(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        return [(seq, a) for seq, a in enumerate(self.actions, start=1) if seq > after_seq][:limit]

    def head(self) -> int:
        return len(self.actions)

    def reloads(self) -> dict[str, Callable[[], Awaitable[None]]]:
        def reload(name: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                if name in self.failing:
                    raise RuntimeError(f"{name} store unreachable")
                self.reloaded.append(name)

            return run

        return {name: reload(name) for name in ("keys", "catalogue", "routing", "economy")}


async def test_only_the_touched_snapshots_reload_and_the_head_follows() -> None:
    chain = Chain()
    chain.actions += ["account.created", "key.created"]
    inv = Invalidator(chain.read, chain.head, chain.reloads(), poll_s=3600)
    inv.seen(chain.head())
    assert await inv.check() == frozenset() and chain.reloaded == []
    chain.actions += ["invoice.finalized", "price.set", "alias.moved"]
    assert await inv.check() == {"economy", "catalogue"}
    assert sorted(chain.reloaded) == ["catalogue", "economy"] and inv.head == 5
    chain.reloaded.clear()
    chain.actions.append("key.revoked")
    chain.failing = {"keys"}
    with pytest.raises(RuntimeError):
        await inv.check()
    assert inv.head == 5  # not moved: the revocation is looked at again
    chain.failing = set()
    assert await inv.check() == {"keys"} and inv.head == 6


async def test_a_replica_too_far_behind_reloads_everything() -> None:
    chain = Chain()
    inv = Invalidator(chain.read, chain.head, chain.reloads(), poll_s=3600)
    inv.seen(0)
    chain.actions += ["invoice.finalized"] * (PAGE_ROWS * MAX_PAGES + 1)
    assert await inv.check() == {"keys", "catalogue", "routing", "economy"}
    assert inv.head == chain.head()


async def test_a_change_announced_from_another_thread_wakes_the_follower() -> None:
    chain = Chain()
    feed = LocalChangeFeed()
    inv = Invalidator(chain.read, chain.head, chain.reloads(), poll_s=3600, feed=feed)
    inv.seen(0)
    inv.start()
    try:
        chain.actions.append("route.changed")
        announcer = threading.Thread(target=feed.publish)  # as a store commit in a worker thread would
        announcer.start()
        announcer.join()
        for _ in range(200):
            if chain.reloaded:
                break
            await asyncio.sleep(0.01)
        assert chain.reloaded == ["routing"] and inv.head == 1
    finally:
        await inv.stop()
    feed.publish()  # after stop: nobody listens, nothing fails
