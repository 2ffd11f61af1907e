"""Marketplace API under ``/api/``: the catalogue and the caller's usage. JSON in, JSON out.

Authentication is required by default: a route is public only if it is in ``PUBLIC_ROUTES``, and a test checks
that every other route answers 401 without a key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from modelmarket.accounts import Account
from modelmarket.billing.lifecycle import InvoiceService
from modelmarket.billing.period import parse_period
from modelmarket.billing.pricing import PriceBook, price_now_json
from modelmarket.core.errors import NotFound
from modelmarket.metering.usage import UsageService
from modelmarket.registry import model_summary
from modelmarket.registry.catalogue import Catalogue, ModelEntry

PUBLIC_ROUTES = frozenset({"/api/models", "/api/models/{name}", "/api/models/{name}/versions/{ref}"})
"""The only /api routes answered without an API key: the public catalogue."""

Authenticate = Callable[[Request], Awaitable[Account]]


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


def build_router(ctx: ApiContext, authenticate: Authenticate) -> Router:
    async def models(request: Request) -> JSON:
        cat = ctx.catalogue()
        docs = [model_summary(cat.get(name), _price_now(ctx, cat.get(name))) for name in cat.names()]
        return JSON({"models": docs, "total": len(docs)})

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

    endpoints: list[tuple[str, Callable[[Request], Awaitable[JSON]]]] = [
        ("/api/models", models),
        ("/api/models/{name}", model),
        ("/api/models/{name}/versions/{ref}", version),
        ("/api/usage", usage),
        ("/api/invoices", invoices),
        ("/api/invoices/{invoice_id}", invoice),
    ]
    routes = [
        Route(path, endpoint if path in PUBLIC_ROUTES else _authenticated(endpoint, authenticate), methods=["GET"])
        for path, endpoint in endpoints
    ]
    return Router(routes=routes)


def _price_now(ctx: ApiContext, entry: ModelEntry) -> dict[str, Any] | None:
    if ctx.prices is None or ctx.clock is None:
        return None
    found = ctx.prices().in_force(entry.name, ctx.clock())
    return price_now_json(found, entry.resolve(None).manifest.pricing.price_per_iu)


def _authenticated(
    endpoint: Callable[[Request], Awaitable[JSON]], authenticate: Authenticate
) -> Callable[[Request], Awaitable[JSON]]:
    async def guarded(request: Request) -> JSON:
        request.state.account = await authenticate(request)
        return await endpoint(request)

    return guarded
