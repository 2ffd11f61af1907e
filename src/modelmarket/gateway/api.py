"""Marketplace API under ``/api/``: the catalogue and the caller's usage. JSON in, JSON out.

Authentication is required by default: a route is public only if it is in ``PUBLIC_ROUTES``, and a test checks
that every other route answers 401 without a key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from modelmarket.accounts import Account
from modelmarket.billing.lifecycle import InvoiceService
from modelmarket.billing.period import parse_period
from modelmarket.core.errors import NotFound
from modelmarket.metering.usage import UsageService
from modelmarket.registry import model_summary
from modelmarket.registry.catalogue import Catalogue

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


def build_router(ctx: ApiContext, authenticate: Authenticate) -> Router:
    async def models(request: Request) -> JSON:
        cat = ctx.catalogue()
        docs = [model_summary(cat.get(name)) for name in cat.names()]
        return JSON({"models": docs, "total": len(docs)})

    async def model(request: Request) -> JSON:
        return JSON(model_summary(ctx.catalogue().get(request.path_params["name"])))

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


def _authenticated(
    endpoint: Callable[[Request], Awaitable[JSON]], authenticate: Authenticate
) -> Callable[[Request], Awaitable[JSON]]:
    async def guarded(request: Request) -> JSON:
        request.state.account = await authenticate(request)
        return await endpoint(request)

    return guarded
