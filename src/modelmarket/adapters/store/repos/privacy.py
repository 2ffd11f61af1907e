"""``PrivacyRepository`` on SQL: key policies, capture opt-ins and captured calls (already redacted and bounded
by the service before they reach this module)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from modelmarket.adapters.store import schema as t
from modelmarket.privacy.ports import CapturedCall, KeyPolicy

_K = t.key_privacy.c
_O = t.capture_optins.c
_C = t.captured_calls.c


def _policy(row: Any) -> KeyPolicy:
    return KeyPolicy(row.key_id, row.account_id, tuple(n for n in row.entities.split(",") if n), row.updated_at)


def _call(row: Any) -> CapturedCall:
    return CapturedCall(row.id, row.account_id, row.model, row.version, row.created_at, row.input_text, row.output_text)


class SqlPrivacyRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def key_policies(self) -> list[KeyPolicy]:
        return [_policy(r) for r in self.conn.execute(select(t.key_privacy).order_by(_K.key_id))]

    def key_policy(self, key_id: str) -> KeyPolicy | None:
        row = self.conn.execute(select(t.key_privacy).where(_K.key_id == key_id)).first()
        return None if row is None else _policy(row)

    def put_key_policy(self, policy: KeyPolicy) -> None:
        values = {
            "account_id": policy.account_id,
            "entities": ",".join(policy.entities),
            "updated_at": policy.updated_at,
        }
        done = self.conn.execute(update(t.key_privacy).where(_K.key_id == policy.key_id).values(**values))
        if done.rowcount == 0:
            self.conn.execute(insert(t.key_privacy).values(key_id=policy.key_id, **values))

    def remove_key_policy(self, key_id: str) -> bool:
        return bool(self.conn.execute(delete(t.key_privacy).where(_K.key_id == key_id)).rowcount)

    def capture_accounts(self) -> list[str]:
        return [r.account_id for r in self.conn.execute(select(_O.account_id).order_by(_O.account_id))]

    def set_capture(self, account_id: str, on: bool, updated_at: str) -> bool:
        present = self.conn.execute(select(_O.account_id).where(_O.account_id == account_id)).first() is not None
        if on and not present:
            self.conn.execute(insert(t.capture_optins).values(account_id=account_id, updated_at=updated_at))
            return True
        if not on and present:
            self.conn.execute(delete(t.capture_optins).where(_O.account_id == account_id))
            return True
        return False

    def add_captured(self, calls: list[CapturedCall], keep_per_account: int) -> None:
        if not calls:
            return
        ids = [c.id for c in calls]
        stored = {r.id for r in self.conn.execute(select(_C.id).where(_C.id.in_(ids)))}
        rows = [
            {
                "id": c.id,
                "account_id": c.account_id,
                "model": c.model,
                "version": c.version,
                "created_at": c.created_at,
                "input_text": c.input_text,
                "output_text": c.output_text,
            }
            for c in calls
            if c.id not in stored
        ]
        if rows:
            self.conn.execute(insert(t.captured_calls), rows)
        for account_id in sorted({c.account_id for c in calls}):
            self._prune(account_id, keep_per_account)

    def _prune(self, account_id: str, keep: int) -> None:
        count = self.conn.execute(
            select(func.count()).select_from(t.captured_calls).where(_C.account_id == account_id)
        ).scalar_one()
        if count <= keep:
            return
        oldest = (
            select(_C.id)
            .where(_C.account_id == account_id)
            .order_by(_C.created_at, _C.id)
            .limit(count - keep)
            .scalar_subquery()
        )
        self.conn.execute(delete(t.captured_calls).where(_C.id.in_(oldest)))

    def captured(self, account_id: str, limit: int) -> list[CapturedCall]:
        query = (
            select(t.captured_calls)
            .where(_C.account_id == account_id)
            .order_by(_C.created_at.desc(), _C.id.desc())
            .limit(limit)
        )
        return [_call(r) for r in self.conn.execute(query)]

    def forget_captured(self, account_id: str) -> int:
        return int(self.conn.execute(delete(t.captured_calls).where(_C.account_id == account_id)).rowcount)
