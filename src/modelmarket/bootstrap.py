"""The composition root: Settings -> adapters -> services. Nothing else constructs adapters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from modelmarket.accounts import AccountService
from modelmarket.adapters.blobs import BlobStore, FsBlobStore
from modelmarket.adapters.bus import SqliteEventLog
from modelmarket.adapters.store import Store, open_store
from modelmarket.core.clock import Clock, utc_now
from modelmarket.registry import RegistryService
from modelmarket.settings import Settings


@dataclass
class Platform:
    settings: Settings
    store: Store
    blobs: BlobStore
    clock: Clock
    accounts: AccountService
    registry: RegistryService

    def open_event_log(self) -> SqliteEventLog:
        return SqliteEventLog(self.settings.event_log_path, self.settings.event_log_sync)

    def close(self) -> None:
        self.store.dispose()


def bootstrap(
    settings: Settings | None = None,
    store: Store | None = None,
    blobs: BlobStore | None = None,
    clock: Clock | None = None,
    runtimes: Iterable[str] | None = None,
) -> Platform:
    settings = settings or Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = store or open_store(settings.resolved_database_url, lock_dir=settings.home)
    blobs = blobs or FsBlobStore(settings.blobs_dir)
    clock = clock or utc_now
    if runtimes is None:
        from modelmarket.runtime.plugins import available_runtimes

        runtimes = available_runtimes()
    return Platform(
        settings=settings,
        store=store,
        blobs=blobs,
        clock=clock,
        accounts=AccountService(store, clock),
        registry=RegistryService(store, blobs, clock, runtimes),
    )
