"""``AccountRepository`` on SQL."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Connection, insert, select, update

from modelmarket.accounts.ports import Account, Role, StoredKey
from modelmarket.adapters.store import schema as t


def _account(row: Any) -> Account:
    return Account(id=row.id, name=row.name, role=cast(Role, row.role), created_at=row.created_at)


def _key(row: Any) -> StoredKey:
    return StoredKey(row.id, row.account_id, row.key_hash, row.prefix, row.created_at, row.revoked_at)


class SqlAccountRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, account: Account) -> None:
        self.conn.execute(insert(t.accounts).values(**account.to_json()))

    def by_name(self, name: str) -> Account | None:
        row = self.conn.execute(select(t.accounts).where(t.accounts.c.name == name)).first()
        return None if row is None else _account(row)

    def by_id(self, account_id: str) -> Account | None:
        row = self.conn.execute(select(t.accounts).where(t.accounts.c.id == account_id)).first()
        return None if row is None else _account(row)

    def all(self) -> list[Account]:
        return [_account(r) for r in self.conn.execute(select(t.accounts).order_by(t.accounts.c.name))]

    def add_key(self, key: StoredKey) -> None:
        self.conn.execute(
            insert(t.api_keys).values(
                id=key.id,
                account_id=key.account_id,
                key_hash=key.key_hash,
                prefix=key.prefix,
                created_at=key.created_at,
                revoked_at=key.revoked_at,
            )
        )

    def key(self, key_id: str) -> StoredKey | None:
        row = self.conn.execute(select(t.api_keys).where(t.api_keys.c.id == key_id)).first()
        return None if row is None else _key(row)

    def keys_of(self, account_id: str) -> list[StoredKey]:
        k = t.api_keys.c
        rows = self.conn.execute(select(t.api_keys).where(k.account_id == account_id).order_by(k.created_at, k.id))
        return [_key(r) for r in rows]

    def revoke_key(self, key_id: str, revoked_at: str) -> None:
        self.conn.execute(update(t.api_keys).where(t.api_keys.c.id == key_id).values(revoked_at=revoked_at))

    def active_keys(self) -> list[tuple[str, str, Account]]:
        rows = self.conn.execute(
            select(t.api_keys.c.key_hash, t.api_keys.c.id.label("key_id"), t.accounts)
            .join(t.accounts, t.accounts.c.id == t.api_keys.c.account_id)
            .where(t.api_keys.c.revoked_at.is_(None))
        ).all()
        return [(r.key_hash, r.key_id, _account(r)) for r in rows]
