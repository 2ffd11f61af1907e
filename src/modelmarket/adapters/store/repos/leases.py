"""``LeaseRepository`` on SQL: the leased blocks of limits' allowance, one row per scope, limit, window, replica."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from modelmarket.adapters.store import schema as t
from modelmarket.billing.ports import StoredLease

_L = t.limit_leases.c


def _lease(row: Any) -> StoredLease:
    return StoredLease(row.scope, row.limit_name, row.window, row.replica, row.granted, row.used, row.expires_ms)


class SqlLeaseRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def leases(self, scope: str, limit: str, window: str) -> list[StoredLease]:
        query = select(t.limit_leases).where(_L.scope == scope, _L.limit_name == limit, _L.window == window)
        return [_lease(row) for row in self.conn.execute(query.order_by(_L.replica))]

    def put_lease(self, lease: StoredLease) -> None:
        where = (
            _L.scope == lease.scope,
            _L.limit_name == lease.limit,
            _L.window == lease.window,
            _L.replica == lease.replica,
        )
        values = {"granted": lease.granted, "used": lease.used, "expires_ms": lease.expires_ms}
        if not self.conn.execute(update(t.limit_leases).where(*where).values(**values)).rowcount:
            self.conn.execute(
                insert(t.limit_leases).values(
                    scope=lease.scope, limit_name=lease.limit, window=lease.window, replica=lease.replica, **values
                )
            )

    def held(self, replica: str) -> list[StoredLease]:
        return [_lease(row) for row in self.conn.execute(select(t.limit_leases).where(_L.replica == replica))]

    def drop_before(self, scope: str, limit: str, window: str) -> int:
        query = delete(t.limit_leases).where(_L.scope == scope, _L.limit_name == limit, _L.window < window)
        return int(self.conn.execute(query).rowcount or 0)
