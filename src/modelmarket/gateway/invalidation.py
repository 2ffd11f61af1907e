"""Keeping a replica's snapshots current: the audit chain is the change feed, the bus only says "look now".

Every change a gateway snapshot depends on (keys, key policies, the catalogue, routes and providers, prices, plans,
subscriptions, limits) appends an audit record in the transaction that makes it. A replica remembers the audit
head it has seen; when told something changed (a message on the ``ChangeFeed``) or every ``poll_s`` as the
fallback, it reads the records after that head (one bounded query, usually empty), maps their actions to the
snapshots they touch and reloads only those. Checks never overlap (signals during one make one more check after
it), and the head moves only once the reloads succeeded, so a failed reload is retried at the next check.

Bound: a change committed anywhere is in force on every replica within ``poll_s`` plus one check (read the new
records, reload the touched snapshots); with a NATS bus, within the message's latency plus one check, ``poll_s``
remaining the bound when a message is lost. The periodic ``cache_refresh_s`` reload stays as a last resort.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from modelmarket.core.aio import wait_event

log = logging.getLogger(__name__)

KEYS, CATALOGUE, ROUTING, ECONOMY, EXPERIMENTS = "keys", "catalogue", "routing", "economy", "experiments"
SNAPSHOT_OF_ACTION: tuple[tuple[str, str], ...] = (
    ("account.", KEYS),
    ("key.", KEYS),
    ("privacy.", KEYS),  # key policies and capture opt-ins load with the keys
    ("model.", CATALOGUE),
    ("alias.", CATALOGUE),
    ("route.", ROUTING),
    ("provider.", ROUTING),
    ("price.", ECONOMY),
    ("plan.", ECONOMY),
    ("subscription.", ECONOMY),
    ("limits.", ECONOMY),
    ("experiment.", EXPERIMENTS),
    ("shadow.", EXPERIMENTS),
)
"""Audit action prefixes and the snapshot each touches; other actions (invoices, payouts, sessions, the gate's
submissions until the publish itself) touch none."""
PAGE_ROWS = 500
"""Audit records read per query while catching up."""
MAX_PAGES = 4
"""Pages read in one check; more changes than this reload every snapshot and jump to the head."""


class ChangeFeed(Protocol):
    """Tells every process that an audited change was committed (``adapters/bus/changes.py``)."""

    def publish(self) -> None:
        """Announce a committed change; never raises, never blocks for long."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from any thread) when a change is announced; returns the function that stops it."""
        ...

    def close(self) -> None: ...


def touched(actions: Iterable[str]) -> frozenset[str]:
    """The snapshots the audited ``actions`` change."""
    return frozenset(
        snapshot for action in actions for prefix, snapshot in SNAPSHOT_OF_ACTION if action.startswith(prefix)
    )


ReadChanges = Callable[[int, int], Sequence[tuple[int, str]]]
"""``(after_seq, limit)`` -> up to ``limit`` (seq, action) of the audit records after ``after_seq``, by seq."""


class Invalidator:
    """Follows the audit chain for one gateway and reloads the snapshots its changes touch."""

    def __init__(
        self,
        read_changes: ReadChanges,
        read_head: Callable[[], int],
        reloads: Mapping[str, Callable[[], Awaitable[None]]],
        poll_s: float,
        feed: ChangeFeed | None = None,
    ) -> None:
        self._read_changes = read_changes
        self._read_head = read_head
        self._reloads = dict(reloads)
        self.poll_s = poll_s
        self._feed = feed
        self.head: int | None = None
        """The newest audit seq whose changes this replica's snapshots reflect (None: not read yet)."""
        self.checks = 0
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    async def current_head(self) -> int:
        """The audit head now: read it before a full reload, then ``seen`` it after."""
        return await asyncio.to_thread(self._read_head)

    def seen(self, head: int) -> None:
        """Every snapshot was reloaded after ``head`` was read: changes up to it are in force."""
        if self.head is None or head > self.head:
            self.head = head

    def notify(self) -> None:
        """Something changed somewhere: check now (thread-safe; calls while a check runs make one more check)."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: the gateway is gone
            loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._follow())
        if self._feed is not None:
            self._unsubscribe = self._feed.subscribe(self.notify)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._loop = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        while True:
            await wait_event(self._wake, self.poll_s)
            self._wake.clear()
            try:
                await self.check()
            except Exception:  # keep serving from the last good snapshots; the next check retries
                log.exception("checking the audit chain for changes failed")

    async def check(self) -> frozenset[str]:
        """Reload what changed since ``head``; returns the snapshots reloaded."""
        self.checks += 1
        if self.head is None:
            return await self._reload_all(await self.current_head())
        changes = await asyncio.to_thread(self._changes_after, self.head)
        if changes is None:
            return await self._reload_all(await self.current_head())
        if not changes:
            return frozenset()
        names = touched(action for _, action in changes)
        await asyncio.gather(*(self._reloads[name]() for name in sorted(names) if name in self._reloads))
        self.seen(changes[-1][0])
        return names

    def _changes_after(self, head: int) -> list[tuple[int, str]] | None:
        """The (seq, action) of the records after ``head``; None when there are more than ``MAX_PAGES`` pages."""
        found: list[tuple[int, str]] = []
        for _ in range(MAX_PAGES):
            page = list(self._read_changes(head, PAGE_ROWS))
            found += page
            if len(page) < PAGE_ROWS:
                return found
            head = page[-1][0]
        return None

    async def _reload_all(self, head: int) -> frozenset[str]:
        await asyncio.gather(*(reload() for reload in self._reloads.values()))
        self.seen(head)
        return frozenset(self._reloads)
