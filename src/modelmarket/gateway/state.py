"""The gateway's in-memory view of keys and the catalogue, refreshed in the background.

Requests authenticate and route against these snapshots: no database round trip on the hot path. A miss (an
unknown key or model) waits for a reload that began after the miss: concurrent misses share one reload, and
reloads start at most once per ``min_reload_s``, so a key or model created a moment ago works at once while a
flood of bad keys cannot hammer the store (it is throttled instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from modelmarket.accounts import KeyIndex
from modelmarket.bootstrap import Platform
from modelmarket.registry.service import Catalogue

log = logging.getLogger(__name__)


class GatewayState:
    def __init__(self, platform: Platform, refresh_s: float, min_reload_s: float = 0.5) -> None:
        self.platform = platform
        self.refresh_s = refresh_s
        self.min_reload_s = min_reload_s
        self.keys = KeyIndex(by_hash={})
        self.catalogue = Catalogue(models={})
        self._reload_started = -1e9
        self._reload_lock = asyncio.Lock()
        self._miss_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def _load(self) -> tuple[KeyIndex, Catalogue]:
        return self.platform.accounts.key_index(), self.platform.registry.catalogue()

    async def reload(self) -> None:
        async with self._reload_lock:
            self._reload_started = time.monotonic()
            self.keys, self.catalogue = await asyncio.to_thread(self._load)

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
                log.exception("refreshing the gateway's key and catalogue snapshot failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
