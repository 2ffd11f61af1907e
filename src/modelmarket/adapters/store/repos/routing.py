"""``RoutingRepository`` on SQL: routes (the applied spec as canonical JSON, its digest and revision) and
providers (the API key's environment variable name, never a key)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, delete, insert, select, update

from modelmarket.adapters.store import schema as t
from modelmarket.core.errors import ensure
from modelmarket.routing.ports import StoredRoute
from modelmarket.routing.spec import Provider, RouteSpec, check_protocol

_R = t.routes.c
_P = t.providers.c


def _route(row: Any) -> StoredRoute:
    spec = RouteSpec.from_json(orjson.loads(row.spec))
    ensure(spec.digest == row.digest, f"route {row.name!r}: the stored spec does not match its digest")
    return StoredRoute(spec, int(row.revision), row.updated_at)


def _provider(row: Any) -> Provider:
    return Provider(
        row.name, row.base_url, check_protocol(row.protocol), row.api_key_env, row.created_at, row.updated_at
    )


class SqlRoutingRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def routes(self) -> list[StoredRoute]:
        return [_route(r) for r in self.conn.execute(select(t.routes).order_by(_R.name))]

    def route(self, name: str) -> StoredRoute | None:
        row = self.conn.execute(select(t.routes).where(_R.name == name)).first()
        return None if row is None else _route(row)

    def put_route(self, route: StoredRoute) -> None:
        values = {
            "spec": route.spec.canonical_json().decode(),
            "digest": route.digest,
            "revision": route.revision,
            "updated_at": route.updated_at,
        }
        done = self.conn.execute(update(t.routes).where(_R.name == route.name).values(**values))
        if done.rowcount == 0:
            self.conn.execute(insert(t.routes).values(name=route.name, **values))

    def remove_route(self, name: str) -> bool:
        return bool(self.conn.execute(delete(t.routes).where(_R.name == name)).rowcount)

    def providers(self) -> list[Provider]:
        return [_provider(r) for r in self.conn.execute(select(t.providers).order_by(_P.name))]

    def provider(self, name: str) -> Provider | None:
        row = self.conn.execute(select(t.providers).where(_P.name == name)).first()
        return None if row is None else _provider(row)

    def put_provider(self, provider: Provider) -> None:
        values = {
            "base_url": provider.base_url,
            "protocol": provider.protocol,
            "api_key_env": provider.api_key_env,
            "created_at": provider.created_at,
            "updated_at": provider.updated_at,
        }
        done = self.conn.execute(update(t.providers).where(_P.name == provider.name).values(**values))
        if done.rowcount == 0:
            self.conn.execute(insert(t.providers).values(name=provider.name, **values))

    def remove_provider(self, name: str) -> bool:
        return bool(self.conn.execute(delete(t.providers).where(_P.name == name)).rowcount)
