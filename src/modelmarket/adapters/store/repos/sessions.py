"""``SessionRepository`` on SQL: dashboard sessions by the SHA-256 of their cookie's secret."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, insert, select

from modelmarket.accounts.ports import StoredSession
from modelmarket.adapters.store import schema as t

_S = t.dashboard_sessions.c


def _session(row: Any) -> StoredSession:
    return StoredSession(row.id, row.account_id, row.key_id, row.csrf_token, row.created_at, row.expires_at)


class SqlSessionRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, session: StoredSession) -> None:
        self.conn.execute(
            insert(t.dashboard_sessions).values(
                id=session.id,
                account_id=session.account_id,
                key_id=session.key_id,
                csrf_token=session.csrf_token,
                created_at=session.created_at,
                expires_at=session.expires_at,
            )
        )

    def get(self, session_id: str) -> StoredSession | None:
        row = self.conn.execute(select(t.dashboard_sessions).where(_S.id == session_id)).first()
        return None if row is None else _session(row)

    def delete(self, session_id: str) -> bool:
        return bool(self.conn.execute(delete(t.dashboard_sessions).where(_S.id == session_id)).rowcount)

    def delete_expired(self, now: str) -> int:
        return int(self.conn.execute(delete(t.dashboard_sessions).where(_S.expires_at <= now)).rowcount)

    def of_account(self, account_id: str) -> list[StoredSession]:
        query = select(t.dashboard_sessions).where(_S.account_id == account_id).order_by(_S.created_at, _S.id)
        return [_session(r) for r in self.conn.execute(query)]
