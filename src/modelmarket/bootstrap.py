"""The composition root: Settings -> adapters -> services. The only place that constructs adapters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from modelmarket.accounts import AccountService
from modelmarket.adapters.blobs import open_blobs
from modelmarket.adapters.bus.changes import LocalChangeFeed, NatsChangeFeed, make_change_feed
from modelmarket.adapters.bus.opening import LogConfig
from modelmarket.adapters.store import SqlStore, open_store
from modelmarket.audit import AuditService
from modelmarket.audit.checkpoints import CheckpointKey
from modelmarket.billing.ledger import LedgerService
from modelmarket.billing.lifecycle import InvoiceService
from modelmarket.billing.pricing import PriceService
from modelmarket.billing.rating import Rater
from modelmarket.billing.replay import PriceReplayService
from modelmarket.billing.subscriptions import PlanService
from modelmarket.core.clock import Clock, utc_now
from modelmarket.governance.gate import GateService
from modelmarket.governance.policy import load_policy
from modelmarket.governance.ports import TrialRunner
from modelmarket.lab import FeedbackService
from modelmarket.lab.bakeoff import BakeoffService
from modelmarket.lab.experiments import ExperimentService
from modelmarket.metering import MeteringService, UsageService
from modelmarket.metering.ports import EventLog
from modelmarket.metering.usage import CATCH_UP_MAX_RECORDS
from modelmarket.metering.usage_tree import UsageTree
from modelmarket.privacy import PrivacyService
from modelmarket.registry import RegistryService
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.registry.ports import BlobStore, RuntimeCatalog
from modelmarket.routing import RoutingService
from modelmarket.settings import Settings


class PluginRuntimes:
    """The runtimes installed as entry points (``modelmarket.runtimes``), as the registry sees them."""

    def __init__(self, names: Iterable[str] | None = None) -> None:
        from modelmarket.runtime.plugins import available_runtimes

        self._names = tuple(available_runtimes() if names is None else names)

    def names(self) -> Iterable[str]:
        return self._names

    def validate(self, runtime: str, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        from modelmarket.runtime.plugins import validate_runtime_parameters

        validate_runtime_parameters(runtime, parameters, artifacts)


@dataclass
class Platform:
    settings: Settings
    store: SqlStore
    blobs: BlobStore
    clock: Clock
    accounts: AccountService
    registry: RegistryService
    metering: MeteringService
    usage: UsageService
    audit: AuditService
    plans: PlanService
    invoices: InvoiceService
    ledger: LedgerService
    prices: PriceService
    routing: RoutingService
    gate: GateService
    privacy: PrivacyService
    replays: PriceReplayService
    feedback: FeedbackService
    experiments: ExperimentService
    bakeoffs: BakeoffService
    changes: LocalChangeFeed | NatsChangeFeed = field(default_factory=LocalChangeFeed)
    """Announces audited commits to the gateway replicas (``gateway/invalidation.py``)."""

    def close(self) -> None:
        self.changes.close()  # announcements under way are sent first (bounded)
        self.store.dispose()


def bootstrap(
    settings: Settings | None = None,
    store: SqlStore | None = None,
    blobs: BlobStore | None = None,
    clock: Clock | None = None,
    runtimes: RuntimeCatalog | None = None,
) -> Platform:
    settings = settings or Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = store or open_store(
        settings.resolved_database_url, lock_dir=settings.home, create=settings.database_per_home
    )
    checkpoint_key = CheckpointKey(settings.keys_dir)
    # Audit appends sign the audit tree's checkpoints with the home's key, which also keeps the latest ones in the
    # keys folder, outside the store; AuditService gets the same key, so `audit verify` reads those copies.
    store.signer = checkpoint_key
    changes = make_change_feed(settings.bus_url, settings.bus_namespace)
    store.on_audited_commit = changes.publish  # every audited commit of this process tells the replicas to look
    blobs = blobs or open_blobs(settings)
    clock = clock or utc_now
    runtimes = runtimes or PluginRuntimes()

    log_config = LogConfig(
        settings.bus_url,
        settings.bus_namespace,
        settings.bus_partitions,
        settings.event_log_path,
        settings.event_log_sync,
        settings.idempotency_ttl_s,
    )
    open_log: Callable[..., EventLog] = log_config.open_log  # (partition=0, consumer=the partition's metering one)

    rater = Rater(settings.provider_share, clock)
    usage_tree = UsageTree(checkpoint_key, clock, settings.usage_checkpoint_s)
    projectors = (rater, usage_tree)
    metering = MeteringService(
        store, open_log, clock, settings.metering_poll_s, projectors=projectors, partitions=log_config.partitions
    )
    metering.log_config = log_config  # the gateway's writer is made from the same configuration
    registry = RegistryService(store, blobs, clock, runtimes)
    policy = load_policy(settings.gate_policy)
    if settings.gate_review is not None:
        policy = policy.with_review(settings.gate_review)  # type: ignore[arg-type]
    gate = GateService(store, registry, blobs, _trial_runner(settings, blobs), policy, clock)
    prices = PriceService(store, clock)

    def list_price(version: VersionRecord, at: datetime) -> Decimal:
        """The list price per IU in force (the operator's, else the manifest's), without the dynamic factor."""
        listed = prices.book().in_force(version.model_name, at).list_price
        return version.manifest.pricing.price_per_iu if listed is None else listed

    return Platform(
        settings=settings,
        store=store,
        blobs=blobs,
        clock=clock,
        accounts=AccountService(store, clock),
        registry=registry,
        metering=metering,
        usage=UsageService(store, metering),
        audit=AuditService(store, checkpoint_key, usage_partitions=log_config.partitions),
        plans=PlanService(store, clock),
        invoices=InvoiceService(store, metering, clock, settings.invoice_grace_s),
        ledger=LedgerService(store, metering, clock, open_log),
        prices=prices,
        routing=RoutingService(store, clock, published_models=lambda: registry.catalogue().names()),
        gate=gate,
        privacy=PrivacyService(
            store,
            clock,
            capture_max_chars=settings.capture_max_chars,
            capture_max_calls=settings.capture_max_calls,
        ),
        replays=PriceReplayService(store, metering, clock, settings.provider_share, rater.charges),
        feedback=FeedbackService(store, clock, lambda: metering.catch_up(CATCH_UP_MAX_RECORDS)),
        experiments=ExperimentService(store, clock, registry.move_alias),
        bakeoffs=BakeoffService(store, gate.trials, registry.catalogue, list_price, clock),
        changes=changes,
    )


def _trial_runner(settings: Settings, blobs: BlobStore) -> TrialRunner:
    """The gate's sandbox for trials: the gateway's sandbox rules, its own folder (``MODELMARKET_HOME/gate``)."""
    from modelmarket.runtime.sandbox import policy_from_settings
    from modelmarket.runtime.trial import SandboxTrialRunner

    return SandboxTrialRunner(
        blobs,
        settings.home / "gate",
        policy_from_settings(settings),
        start_timeout_s=settings.runner_start_timeout_s,
        max_request_bytes=settings.max_request_bytes,
        hidden=(settings.home.absolute(),),
    )
