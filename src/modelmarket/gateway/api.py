"""Marketplace API under ``/api/``: the catalogue and the caller's usage (and, from ``gateway/api_packages.py``,
publishing over HTTP). JSON in, JSON out.

Authentication is required by default: a route is public only if it is in ``PUBLIC_ROUTES``, and a test checks
that every other route answers 401 without a key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from modelmarket.accounts import Account
from modelmarket.audit import AuditService
from modelmarket.billing.lifecycle import InvoiceService
from modelmarket.billing.period import parse_period
from modelmarket.billing.pricing import PriceBook, price_now_json
from modelmarket.core.clock import utc_now
from modelmarket.core.errors import NotFound
from modelmarket.gateway.api_lab import lab_routes
from modelmarket.gateway.api_packages import PackageUploads, package_routes
from modelmarket.gateway.api_proofs import usage_event_proof
from modelmarket.lab import FeedbackService
from modelmarket.metering.usage import UsageService
from modelmarket.registry import model_summary
from modelmarket.registry.catalogue import Catalogue, ModelEntry
from modelmarket.registry.search import (
    Measured,
    SearchTexts,
    encode_cursor,
    listings,
    measured_json,
    parse_search,
    read_measured,
    search,
)

PUBLIC_ROUTES = frozenset({"/api/models", "/api/models/{name}", "/api/models/{name}/versions/{ref}"})
"""The only /api routes answered without an API key: the public catalogue."""

Authenticate = Callable[[Request], Awaitable[Account]]
log = logging.getLogger(__name__)
DEFAULT_CACHE_REFRESH_S = 2.0
"""``ApiContext.cache_refresh_s`` when not given (the default of ``MODELMARKET_CACHE_REFRESH_S``)."""


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass
class ApiContext:
    catalogue: Callable[[], Catalogue]
    usage: UsageService
    invoices: InvoiceService | None = None
    prices: Callable[[], PriceBook] | None = None
    """The gateway's price book: the catalogue shows the price in force now."""
    clock: Callable[[], datetime] | None = None
    cache_refresh_s: float = DEFAULT_CACHE_REFRESH_S
    """How long the catalogue's measured figures (latency, calls) are kept: ``MODELMARKET_CACHE_REFRESH_S``."""
    proofs: AuditService | None = None
    """Serves the inclusion proofs of the caller's usage events (``gateway/api_proofs.py``)."""
    packages: PackageUploads | None = None
    """Package uploads and the gate's publish queue; None: ``/api/packages`` answers 404."""
    feedback: FeedbackService | None = None
    """Feedback on calls (``gateway/api_lab.py``); None: ``/api/feedback`` answers 404."""


class MeasuredCache:
    """Every model's measured figures (``registry.search.read_measured``), read from the store when asked for and
    kept ``refresh_s``: however many catalogue requests come, at most one read per ``refresh_s`` (concurrent
    requests share it). A failed read is logged and the last figures are kept until the next one."""

    def __init__(self, load: Callable[[Catalogue, datetime], Mapping[str, Measured]], refresh_s: float) -> None:
        self._load = load
        self.refresh_s = refresh_s
        self.value: Mapping[str, Measured] = {}
        self.loaded_at: float | None = None
        self.loads = 0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self.loaded_at is not None and time.monotonic() - self.loaded_at < self.refresh_s

    async def get(self, catalogue: Catalogue, now: datetime) -> Mapping[str, Measured]:
        if self._fresh():
            return self.value
        async with self._lock:
            if not self._fresh():
                self.loads += 1
                try:
                    self.value = await asyncio.to_thread(self._load, catalogue, now)
                except Exception:  # a read path: the catalogue is still served, with the last figures
                    log.exception("reading the catalogue's measured figures failed; showing the previous ones")
                self.loaded_at = time.monotonic()
        return self.value


def measured_loader(usage: UsageService) -> Callable[[Catalogue, datetime], Mapping[str, Measured]]:
    def load(catalogue: Catalogue, now: datetime) -> Mapping[str, Measured]:
        with usage.uow.read() as uow:
            return read_measured(uow.usage, catalogue.names(), now)

    return load


def build_router(ctx: ApiContext, authenticate: Authenticate) -> Router:
    measured = MeasuredCache(measured_loader(ctx.usage), ctx.cache_refresh_s)
    texts = SearchTexts()

    async def models(request: Request) -> JSON:
        """The catalogue searched, filtered, sorted and paged (``registry/search.py``)."""
        query = parse_search(request.query_params)
        cat, now = ctx.catalogue(), (ctx.clock or utc_now)()
        figures = await measured.get(cat, now)
        page = search(listings(cat, _prices_in_force(ctx, cat, now), figures), query, texts)
        docs = [model_summary(x.entry, _price_now(ctx, x.entry, now), measured_json(x.measured)) for x in page.listings]
        cursor = None if page.next_offset is None else encode_cursor(page.next_offset, query)
        return JSON({"models": docs, "total": page.total, "next_cursor": cursor})

    async def model(request: Request) -> JSON:
        entry = ctx.catalogue().get(request.path_params["name"])
        return JSON(model_summary(entry, _price_now(ctx, entry)))

    async def version(request: Request) -> JSON:
        params = request.path_params
        return JSON(ctx.catalogue().resolve(params["name"], params["ref"]).to_json())

    async def usage(request: Request) -> JSON:
        account: Account = request.state.account
        since, until = request.query_params.get("since"), request.query_params.get("until")
        summary = await asyncio.to_thread(ctx.usage.summary, account.id, since, until)
        return JSON({**summary.to_json(), "account": account.name})

    async def invoices(request: Request) -> JSON:
        account: Account = request.state.account
        if ctx.invoices is None:
            raise NotFound("invoices are not served here")
        raw = request.query_params.get("period")
        period = None if raw is None else parse_period(raw)
        docs = await asyncio.to_thread(ctx.invoices.invoices, account.id, period)
        return JSON({"account": account.name, "invoices": [d.to_json() for d in docs]})

    async def invoice(request: Request) -> JSON:
        account: Account = request.state.account
        if ctx.invoices is None:
            raise NotFound("invoices are not served here")
        wanted = request.path_params["invoice_id"]
        doc = await asyncio.to_thread(ctx.invoices.invoice, wanted, account.id)  # another account's: not found
        return JSON(doc.to_json())

    async def event_proof(request: Request) -> JSON:
        account: Account = request.state.account
        if ctx.proofs is None:
            raise NotFound("proofs are not served here")
        event_id = request.path_params["event_id"]
        return JSON(await asyncio.to_thread(usage_event_proof, ctx.proofs, ctx.usage, event_id, account.id))

    endpoints: list[tuple[str, Callable[[Request], Awaitable[JSON]]]] = [
        ("/api/models", models),
        ("/api/models/{name}", model),
        ("/api/models/{name}/versions/{ref}", version),
        ("/api/usage", usage),
        ("/api/invoices", invoices),
        ("/api/invoices/{invoice_id}", invoice),
        ("/api/usage/events/{event_id}/proof", event_proof),
    ]
    routes = [
        Route(path, endpoint if path in PUBLIC_ROUTES else _authenticated(endpoint, authenticate), methods=["GET"])
        for path, endpoint in endpoints
    ]
    routes.extend(package_routes(ctx.packages, authenticate))  # each authenticates itself
    routes.extend(lab_routes(ctx.feedback, authenticate))  # each authenticates itself
    return Router(routes=routes)


def price_now(book: PriceBook | None, entry: ModelEntry, at: datetime) -> dict[str, Any] | None:
    """The price in force as the catalogue shows it (``price_now``), or None without a price book."""
    if book is None:
        return None
    return price_now_json(book.in_force(entry.name, at), entry.resolve(None).manifest.pricing.price_per_iu)


def prices_in_force(book: PriceBook | None, cat: Catalogue, at: datetime) -> dict[str, Decimal] | None:
    """The price per IU in force of every model (None without a price book: the manifests' prices)."""
    if book is None:
        return None
    return {
        name: book.in_force(name, at).unit_price(cat.get(name).resolve(None).manifest.pricing.price_per_iu)
        for name in cat.names()
    }


def _price_now(ctx: ApiContext, entry: ModelEntry, at: datetime | None = None) -> dict[str, Any] | None:
    if ctx.prices is None or ctx.clock is None:
        return None
    return price_now(ctx.prices(), entry, ctx.clock() if at is None else at)


def _prices_in_force(ctx: ApiContext, cat: Catalogue, at: datetime) -> dict[str, Decimal] | None:
    if ctx.prices is None or ctx.clock is None:
        return None
    return prices_in_force(ctx.prices(), cat, at)


def _authenticated(
    endpoint: Callable[[Request], Awaitable[JSON]], authenticate: Authenticate
) -> Callable[[Request], Awaitable[JSON]]:
    async def guarded(request: Request) -> JSON:
        request.state.account = await authenticate(request)
        return await endpoint(request)

    return guarded
