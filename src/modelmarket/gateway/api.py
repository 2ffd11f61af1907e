"""Marketplace API under ``/api/``: the catalogue and the caller's usage. JSON in, JSON out."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from modelmarket.accounts import Account
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.metering.consumer import catch_up
from modelmarket.metering.usage import usage_summary
from modelmarket.runtime.asgi import Scope

if TYPE_CHECKING:
    from modelmarket.gateway.app import GatewayApp

_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def needs_auth(path: str) -> bool:
    return path.startswith("/api/usage")


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw).items()}


def _day(params: dict[str, str], key: str) -> str | None:
    value = params.get(key)
    if value is not None and not _DAY_RE.match(value):
        raise InvalidInput(f"query parameter {key!r}: {value!r} is not a date YYYY-MM-DD")
    return value


def _model_summary(gw: GatewayApp, name: str) -> dict[str, Any]:
    entry = gw.state.catalogue.get(name)
    latest = entry.resolve(None)
    m = latest.manifest
    return {
        "name": name,
        "latest": latest.version,
        "versions": [v.version for v in entry.sorted_versions()],
        "aliases": dict(sorted(entry.aliases.items())),
        "task": m.task,
        "modality": m.modality,
        "runtime": m.runtime,
        "license": m.license,
        "summary": m.card.summary,
        "pricing": {
            "unit": m.pricing.unit,
            "price_per_iu": str(m.pricing.price_per_iu),
            "currency": m.pricing.currency,
        },
    }


async def handle(gw: GatewayApp, scope: Scope, path: str, account: Account | None) -> tuple[int, bytes]:
    if scope["method"] != "GET":
        return 405, orjson.dumps({"error": f"{scope['method']} is not allowed on {path}"})
    params = _query(scope)
    if path == "/api/usage":
        assert account is not None
        since, until = _day(params, "since"), _day(params, "until")

        def read() -> dict[str, Any]:
            # Read-your-writes: apply events already in the log, so a call answered a moment ago is counted.
            event_log = gw.platform.open_event_log()
            try:
                catch_up(gw.platform.store, event_log)
            finally:
                event_log.close()
            with gw.platform.store.read() as conn:
                return usage_summary(conn, account.id, since, until).to_json()

        doc = await asyncio.to_thread(read)
        doc["account"] = account.name
        return 200, orjson.dumps(doc)
    if path == "/api/models":
        models = [
            _model_summary(gw, name)
            for name in sorted(gw.state.catalogue.models)
            if gw.state.catalogue.models[name].versions
        ]
        return 200, orjson.dumps({"models": models, "total": len(models)})
    if path.startswith("/api/models/"):
        parts = path[len("/api/models/") :].strip("/").split("/")
        if len(parts) == 1:
            return 200, orjson.dumps(_model_summary(gw, parts[0]))
        if len(parts) == 3 and parts[1] == "versions":
            return 200, orjson.dumps(gw.state.catalogue.resolve(parts[0], parts[2]).to_json())
    raise NotFound(f"no route GET {path}")
