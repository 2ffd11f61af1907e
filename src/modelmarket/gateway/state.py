"""The gateway's in-memory views of keys and of the catalogue, each refreshed in the background on its own.

Requests authenticate and route against these snapshots: no database round trip on the hot path. A miss (an
unknown key or model) waits for a reload of that snapshot that began after the miss: concurrent misses share
one reload, and reloads start at most once per ``min_reload_s``, so a key or model created a moment ago works
at once while a flood of bad keys cannot hammer the store (it is throttled instead). Keys and the catalogue
reload separately: a burst of unknown keys never re-reads the catalogue, and a catalogue reload reads in full
only the versions it has not seen (``registry.CatalogueLoader``). A change made elsewhere (another replica, the
CLI) reaches the snapshots it touches through the ``Invalidator`` (``gateway/invalidation.py``), within
``MODELMARKET_INVALIDATION_POLL_S`` or a bus message; the periodic reload every ``refresh_s`` is the last resort.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from modelmarket.accounts import Account, KeyIndex
from modelmarket.gateway.economy import Economy
from modelmarket.gateway.invalidation import CATALOGUE, ECONOMY, EXPERIMENTS, KEYS, ROUTING, Invalidator
from modelmarket.gateway.privacy import PrivacyGuard
from modelmarket.registry import Catalogue

log = logging.getLogger(__name__)
T = TypeVar("T")
MIN_RELOAD_S = 0.5
"""Least time between two reloads of one snapshot triggered by misses."""


class Snapshot(Generic[T]):
    def __init__(self, name: str, load: Callable[[], T], initial: T, refresh_s: float, min_reload_s: float) -> None:
        self.name = name
        self._load = load
        self.value = initial
        self.refresh_s = refresh_s
        self.min_reload_s = min_reload_s
        self.loaded_at = -1e9
        self._reload_started = -1e9
        self._reload_lock = asyncio.Lock()
        self._miss_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def reload(self) -> None:
        async with self._reload_lock:
            self._reload_started = time.monotonic()
            self.value = await asyncio.to_thread(self._load)
            self.loaded_at = time.monotonic()

    async def reload_after_miss(self, missed_at: float) -> None:
        """Return once the snapshot reflects a reload that began after ``missed_at`` (time.monotonic())."""
        async with self._miss_lock:
            if self._reload_started > missed_at:
                return
            wait_s = self._reload_started + self.min_reload_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            await self.reload()

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.reload()
            except Exception:  # keep serving from the last good snapshot
                log.exception("refreshing the gateway's %s snapshot failed", self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class GatewayState:
    """Both snapshots; satisfies the data plane's ``CatalogueSource``."""

    def __init__(
        self,
        load_keys: Callable[[], KeyIndex],
        load_catalogue: Callable[[], Catalogue],
        refresh_s: float,
        min_reload_s: float = MIN_RELOAD_S,
        economy: Economy | None = None,
        load_routing: Callable[[], tuple[Mapping[str, Any], Any]] | None = None,
        make_router: Callable[[Any], Any] | None = None,
        privacy: PrivacyGuard | None = None,
        load_experiments: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.economy = economy
        self.privacy = privacy

        def load_keys_and_policies() -> KeyIndex:
            """Keys, then the key policies (read after them: a key's policy is never older than the key). Policies
            that fail to load keep the previous ones in force without holding back the keys (a revoked key stops
            working); only the first load must succeed, as no call may be served with policies never read."""
            index = load_keys()
            if privacy is not None:
                try:
                    privacy.load()
                except Exception:
                    if not privacy.loaded:
                        raise
                    log.exception("reloading the key privacy policies failed; the previous ones stay in force")
            return index

        self.keys = Snapshot("key", load_keys_and_policies, KeyIndex(by_hash={}), refresh_s, min_reload_s)
        self.models = Snapshot("catalogue", load_catalogue, Catalogue(models={}), refresh_s, min_reload_s)
        empty: tuple[Mapping[str, Any], Any] = ({}, None)
        self.routing = Snapshot("routing", load_routing or (lambda: empty), empty, refresh_s, min_reload_s)
        self._make_router = make_router
        no_experiments: Mapping[str, Any] = {}
        self.experiments = Snapshot(
            "experiments", load_experiments or (lambda: no_experiments), no_experiments, refresh_s, min_reload_s
        )
        """Model -> its running experiment (``lab.experiments``), reloaded when one starts or stops."""
        self._router: Any = None
        self._routes_seen: Any = None
        self.invalidator: Invalidator | None = None
        """Follows the audit chain and reloads what other processes changed (set by ``compose``)."""

    def reloaders(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """Each snapshot's reload, by the names ``gateway.invalidation`` maps audit actions to."""
        found: dict[str, Callable[[], Awaitable[None]]] = {
            KEYS: self.keys.reload,
            CATALOGUE: self.models.reload,
            ROUTING: self.routing.reload,
            EXPERIMENTS: self.experiments.reload,
        }
        if self.economy is not None:
            found[ECONOMY] = self.economy.reload
        return found

    def providers(self) -> Mapping[str, Any]:
        """Upstream providers by name (reloaded with the routes)."""
        return self.routing.value[0]

    def router(self) -> Any:
        """The routing engine over the latest routes; per-target measurements survive reloads."""
        table = self.routing.value[1]
        if table is not self._routes_seen:
            self._routes_seen = table
            if table is None or self._make_router is None:
                self._router = None
            elif self._router is None:
                self._router = self._make_router(table)
            else:
                self._router.update(table)
        return self._router

    @property
    def catalogue(self) -> Catalogue:
        return self.models.value

    async def reload_after_miss(self, missed_at: float) -> None:
        await self.models.reload_after_miss(missed_at)

    async def authenticate(self, secret: str) -> Account | None:
        found = await self.authenticate_key(secret)
        return None if found is None else found[0]

    async def authenticate_key(self, secret: str) -> tuple[Account, str | None] | None:
        """The account and key id of an active key; an unknown key waits for one (throttled) reload first."""
        found = self.keys.value.authenticate_key(secret)
        if found is None:
            await self.keys.reload_after_miss(time.monotonic())
            found = self.keys.value.authenticate_key(secret)
        return found

    async def reload(self) -> None:
        """Every snapshot; the audit head is read first, so a change committed during the reload is seen again."""
        head = None if self.invalidator is None else await self.invalidator.current_head()
        await asyncio.gather(self.keys.reload(), self.models.reload(), self.routing.reload(), self.experiments.reload())
        if self.economy is not None:
            await self.economy.reload()
        if head is not None and self.invalidator is not None:
            self.invalidator.seen(head)

    def start(self) -> None:
        self.keys.start()
        self.models.start()
        self.routing.start()
        self.experiments.start()
        if self.economy is not None:
            self.economy.start()
        if self.privacy is not None:
            self.privacy.start(self.catalogue)
        if self.invalidator is not None:
            self.invalidator.start()

    async def stop(self) -> None:
        if self.invalidator is not None:
            await self.invalidator.stop()
        await self.keys.stop()
        await self.models.stop()
        await self.routing.stop()
        await self.experiments.stop()
        if self.economy is not None:
            await self.economy.stop()
        if self.privacy is not None:
            await self.privacy.stop()
