"""Account and API key services. Keys are shown once at creation and stored only as SHA-256 hashes."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import insert, select

from modelmarket.adapters.store import Store
from modelmarket.adapters.store import schema as t
from modelmarket.audit import chain as audit
from modelmarket.core.errors import AlreadyExists, InvalidInput, NotFound
from modelmarket.core.ids import hash_api_key, new_api_key, new_id

Role = Literal["consumer", "provider", "operator"]
ROLES: tuple[Role, ...] = ("consumer", "provider", "operator")
ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    role: Role
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    account: Account
    secret: str  # shown once, never stored
    prefix: str


@dataclass(frozen=True, slots=True)
class KeyIndex:
    """Snapshot of every active key hash -> account, for authenticating without a database round trip."""

    by_hash: dict[str, Account]

    def authenticate(self, secret: str) -> Account | None:
        return self.by_hash.get(hash_api_key(secret))


def _account(row: Any) -> Account:
    return Account(id=row.id, name=row.name, role=cast(Role, row.role), created_at=row.created_at)


class AccountService:
    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    def create(self, name: str, role: str, actor: str = "cli") -> Account:
        if not ACCOUNT_NAME_RE.match(name):
            raise InvalidInput(f"name: {name!r} must be 1-100 letters, digits, '.', '_' or '-'")
        if role not in ROLES:
            raise InvalidInput(f"role: {role!r} is not one of {', '.join(ROLES)}")
        now = self.clock()
        account = Account(id=new_id("acc_"), name=name, role=role, created_at=now.isoformat())
        with self.store.write() as conn:
            if conn.execute(select(t.accounts.c.id).where(t.accounts.c.name == name)).first() is not None:
                raise AlreadyExists(f"an account named {name!r} already exists")
            conn.execute(insert(t.accounts).values(**account.to_json()))
            audit.append(
                conn,
                actor=actor,
                action="account.created",
                subject=name,
                payload={"account_id": account.id, "role": role},
                now=now,
            )
        return account

    def get(self, name: str) -> Account:
        with self.store.read() as conn:
            row = conn.execute(select(t.accounts).where(t.accounts.c.name == name)).first()
        if row is None:
            raise NotFound(f"no account named {name!r}")
        return _account(row)

    def list(self) -> list[Account]:
        with self.store.read() as conn:
            return [_account(r) for r in conn.execute(select(t.accounts).order_by(t.accounts.c.name))]

    def issue_key(self, account_name: str, actor: str = "cli") -> IssuedKey:
        account = self.get(account_name)
        secret = new_api_key()
        key_id = new_id("key_")
        prefix = secret[:10]
        now = self.clock()
        with self.store.write() as conn:
            conn.execute(
                insert(t.api_keys).values(
                    id=key_id,
                    account_id=account.id,
                    key_hash=hash_api_key(secret),
                    prefix=prefix,
                    created_at=now.isoformat(),
                    revoked_at=None,
                )
            )
            # The audit record names the key by id and prefix only: never the secret or its hash.
            audit.append(
                conn,
                actor=actor,
                action="key.created",
                subject=account.name,
                payload={"key_id": key_id, "prefix": prefix},
                now=now,
            )
        return IssuedKey(key_id=key_id, account=account, secret=secret, prefix=prefix)

    def key_index(self) -> KeyIndex:
        with self.store.read() as conn:
            rows = conn.execute(
                select(t.api_keys.c.key_hash, t.accounts)
                .join(t.accounts, t.accounts.c.id == t.api_keys.c.account_id)
                .where(t.api_keys.c.revoked_at.is_(None))
            ).all()
        return KeyIndex(by_hash={r.key_hash: _account(r) for r in rows})
