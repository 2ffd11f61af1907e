"""``bootstrap_gateway``: builds the gateway's parts from a Platform (the gateway's own composition root)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypeVar

from starlette.requests import Request

from modelmarket.accounts import Account
from modelmarket.billing import enforcement
from modelmarket.billing.leases import LeaseService
from modelmarket.bootstrap import Platform
from modelmarket.core.errors import MeteringHalted, NotFound
from modelmarket.core.ids import RequestIds
from modelmarket.gateway.api import ApiContext, build_router
from modelmarket.gateway.api_packages import PackageUploads
from modelmarket.gateway.app import GatewayApp, GatewayParts
from modelmarket.gateway.auth import authenticate
from modelmarket.gateway.backends import Backends
from modelmarket.gateway.dataplane import DataPlane
from modelmarket.gateway.economy import Economy
from modelmarket.gateway.experiments import ExperimentRecorder, Shadows
from modelmarket.gateway.invalidation import Invalidator
from modelmarket.gateway.metering_process import MeteringProcess
from modelmarket.gateway.openai_api import OpenAIEdge
from modelmarket.gateway.openai_plane import OpenAIPlane
from modelmarket.gateway.privacy import PrivacyGuard
from modelmarket.gateway.state import GatewayState
from modelmarket.observability.metrics import set_child_metrics_env
from modelmarket.observability.setup import gateway_observability
from modelmarket.registry import CatalogueLoader
from modelmarket.routing import Provider, Router, RouteTable
from modelmarket.runtime.sandbox import policy_from_settings
from modelmarket.runtime.supervisor import Supervisor
from modelmarket.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def child_env(settings: Settings, store_url: str) -> dict[str, str]:
    """The environment of the metering child: this gateway's settings, whatever the parent's environment says."""
    env = dict(os.environ)
    env["MODELMARKET_HOME"] = str(settings.home.resolve())
    env["MODELMARKET_DATABASE_URL"] = store_url
    env["MODELMARKET_EVENT_LOG_SYNC"] = settings.event_log_sync
    env["MODELMARKET_METERING_POLL_S"] = str(settings.metering_poll_s)
    env["MODELMARKET_PROVIDER_SHARE"] = str(settings.provider_share)  # the child rates events: same share
    env["MODELMARKET_PRICING_INTERVAL_S"] = str(settings.pricing_interval_s)
    env["MODELMARKET_INVOICE_GRACE_S"] = str(settings.invoice_grace_s)
    env["MODELMARKET_BUS_PARTITIONS"] = str(settings.bus_partitions)  # the child reads the same log
    env["MODELMARKET_BUS_NAMESPACE"] = settings.bus_namespace
    if settings.bus_url is not None:
        env["MODELMARKET_BUS_URL"] = settings.bus_url
    else:
        env.pop("MODELMARKET_BUS_URL", None)
    set_child_metrics_env(env, settings)  # PROMETHEUS_MULTIPROC_DIR: the child's metrics, merged into /metrics
    return env


def bootstrap_gateway(platform: Platform, preload: bool = True, metering_child: bool = True) -> GatewayParts:
    s = platform.settings
    loader = CatalogueLoader(platform.store)
    economy = Economy(
        lambda at: _read(platform, lambda uow: enforcement.policies(uow, at)),
        lambda ids, day, currencies: _used(platform, ids, day, currencies),
        platform.prices.book,
        platform.clock,
        s.cache_refresh_s,
    )
    if (fraction := s.resolved_lease_fraction) is not None:  # replicas on one store: limits hold by leases
        replica = f"{s.gateway_id}-{uuid.uuid4().hex[:12]}"
        economy.use_leases(LeaseService(platform.store, s.limit_lease_ttl_s), replica, Fraction(fraction))

    def load_routing() -> tuple[dict[str, Provider], RouteTable]:
        return {p.name: p for p in platform.routing.providers()}, platform.routing.table()

    def price_of(ref: str) -> Decimal | None:
        name, _, version_ref = ref.partition("@")
        try:
            version = state.catalogue.resolve(name, version_ref or None)
        except NotFound:
            return None
        return economy.price(version, platform.clock()).unit_price

    privacy = PrivacyGuard(
        platform.privacy, max_chars=s.redact_max_chars, timeout_s=s.redact_timeout_s, now=platform.clock
    )
    state = GatewayState(
        platform.accounts.key_index,
        loader.load,
        s.cache_refresh_s,
        economy=economy,
        load_routing=load_routing,
        make_router=lambda table: Router(table, price_of=price_of),
        privacy=privacy,
        load_experiments=platform.experiments.running,
    )
    state.invalidator = _invalidator(platform, state)
    writer = platform.metering.log_config.writer(s.event_batch_max, s.event_queue_max)  # per partition
    metering = MeteringProcess(s.home / "metering.log", child_env(s, platform.store.url)) if metering_child else None
    supervisor = Supervisor(
        platform.blobs,
        s.runners_dir,
        s.runner_start_timeout_s,
        s.runner_request_timeout_s,
        s.runner_pool_size,
        s.runner_max_restarts,
        s.max_request_bytes,
        sandbox_policy=policy_from_settings(s),
        hidden=(s.home.absolute(),),
        idle_s=s.replica_idle_s,
        scale_queue=s.replica_scale_queue,
    )
    checks: tuple[Callable[[], str | None], ...] = ()
    if metering is not None:
        checks = (lambda: _metering_problem(metering),)
    dataplane = DataPlane(
        state,
        supervisor,
        writer,
        platform.clock,
        source=f"modelmarket/{s.gateway_id}",
        max_request_bytes=s.max_request_bytes,
        request_ids=RequestIds("req_"),
        health_checks=checks,
        max_kept_answer_bytes=s.idempotency_max_answer_bytes,
        economy=economy,
    )
    backends = Backends(
        supervisor, state.providers, max_connections=s.runner_pool_size, timeout_s=s.runner_request_timeout_s
    )
    dataplane.backends = backends
    dataplane.privacy = privacy
    dataplane.router = state.router
    dataplane.experiments = lambda: state.experiments.value
    dataplane.experiment_recorder = ExperimentRecorder(platform.experiments.record_calls, platform.clock)
    dataplane.shadows = Shadows(dataplane.unbilled, dataplane.resolve, dataplane.experiment_recorder)
    plane = OpenAIPlane(dataplane, backends, state.router)
    openai_edge = OpenAIEdge(plane, dataplane, state, s.max_request_bytes)

    async def authenticate_request(request: Request) -> Account:
        return await authenticate(state, request.scope)

    uploads = PackageUploads.from_settings(platform.gate, s)
    api = build_router(
        ApiContext(
            lambda: state.catalogue,
            platform.usage,
            platform.invoices,
            lambda: economy.prices,
            platform.clock,
            cache_refresh_s=s.cache_refresh_s,
            packages=uploads,
            proofs=platform.audit,
            feedback=platform.feedback,
        ),
        authenticate_request,
    )
    observability, metrics_app = gateway_observability(s, supervisor, state)
    parts = GatewayParts(
        dataplane,
        state,
        api,
        writer,
        supervisor,
        metering,
        s.max_request_bytes,
        preload,
        platform.metering.halted,
        openai=openai_edge,
        backends=backends,
        publish_queue=uploads,
        observability=observability,
        metrics=metrics_app,
    )
    # -- dashboard (dashboard/app.py) --
    if s.dashboard_enabled:
        from modelmarket.dashboard.app import build_dashboard  # jinja2 and the pages only when served
        from modelmarket.dashboard.web import DashboardContext

        parts.dashboard = build_dashboard(DashboardContext(platform, parts))
    return parts


def _invalidator(platform: Platform, state: GatewayState) -> Invalidator:
    """Follows the audit chain (the change feed) and reloads the snapshots other processes changed."""

    def read_changes(after_seq: int, limit: int) -> list[tuple[int, str]]:
        return _read(platform, lambda uow: [(r.seq, r.action) for r in uow.audit.page(after_seq, limit)])

    def read_head() -> int:
        newest = _read(platform, lambda uow: uow.audit.newest())
        return 0 if newest is None else int(newest.seq)

    s = platform.settings
    return Invalidator(read_changes, read_head, state.reloaders(), s.invalidation_poll_s, platform.changes)


def _read(platform: Platform, fn: Callable[[Any], T]) -> T:
    with platform.store.read() as uow:
        return fn(uow)


def _used(
    platform: Platform, account_ids: list[str], day: date, currencies: dict[str, str]
) -> dict[str, enforcement.Used]:
    """Usage the limiter resumes from: the log is applied first, so calls answered before a restart count."""
    try:
        platform.metering.catch_up()
    except MeteringHalted as exc:  # the counters resume from what was applied; the halt is reported elsewhere
        log.warning("limits resume from usage applied before metering halted: %s", exc)
    return _read(platform, lambda uow: enforcement.used(uow, account_ids, day, currencies))


def _metering_problem(metering: MeteringProcess) -> str | None:
    failure = getattr(metering, "failure", None)
    return f"metering stopped: {failure}" if isinstance(failure, str) else None


def build_gateway(platform: Platform, preload: bool = True, on_ready: Callable[[], None] | None = None) -> GatewayApp:
    return GatewayApp(bootstrap_gateway(platform, preload), on_ready)
