"""Account and API key services. Keys are shown once at creation and stored only as SHA-256 hashes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelmarket.accounts.ports import ROLES, Account, AccountsUnitOfWork, Role, StoredKey
from modelmarket.audit import chain as audit
from modelmarket.core.clock import Clock
from modelmarket.core.errors import AlreadyExists, InvalidInput, NotFound
from modelmarket.core.ids import hash_api_key, new_api_key, new_id
from modelmarket.core.uow import UnitOfWorkFactory

ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
KEY_PREFIX_CHARS = 10
"""Characters of a key kept in clear to recognise it by (``mm_`` and 7 random ones): too few to guess the rest."""


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
    key_ids: dict[str, str] = field(default_factory=dict)
    """Key hash -> key id (per-key limits)."""

    def authenticate(self, secret: str) -> Account | None:
        return self.by_hash.get(hash_api_key(secret))

    def authenticate_key(self, secret: str) -> tuple[Account, str | None] | None:
        digest = hash_api_key(secret)
        account = self.by_hash.get(digest)
        return None if account is None else (account, self.key_ids.get(digest))


class AccountService:
    def __init__(self, uow: UnitOfWorkFactory[AccountsUnitOfWork], clock: Clock) -> None:
        self.uow = uow
        self.clock = clock

    def create(self, name: str, role: str, actor: str = "cli") -> Account:
        if not ACCOUNT_NAME_RE.match(name):
            raise InvalidInput(f"name: {name!r} must be 1-100 letters, digits, '.', '_' or '-'")
        now = self.clock()
        account = Account(id=new_id("acc_"), name=name, role=_role(role), created_at=now.isoformat())
        with self.uow.write() as uow:
            if uow.accounts.by_name(name) is not None:
                raise AlreadyExists(f"an account named {name!r} already exists")
            uow.accounts.add(account)
            audit.append(
                uow.audit,
                actor=actor,
                action="account.created",
                subject=name,
                payload={"account_id": account.id, "role": role},
                now=now,
            )
        return account

    def get(self, name: str) -> Account:
        with self.uow.read() as uow:
            account = uow.accounts.by_name(name)
        if account is None:
            raise NotFound(f"no account named {name!r} (create it with `modelmarket accounts create {name}`)")
        return account

    def list(self) -> list[Account]:
        with self.uow.read() as uow:
            return uow.accounts.all()

    def issue_key(self, account_name: str, actor: str = "cli") -> IssuedKey:
        secret = new_api_key()
        now = self.clock()
        with self.uow.write() as uow:
            account = uow.accounts.by_name(account_name)
            if account is None:
                raise NotFound(f"no account named {account_name!r}")
            key = StoredKey(
                id=new_id("key_"),
                account_id=account.id,
                key_hash=hash_api_key(secret),
                prefix=secret[:KEY_PREFIX_CHARS],
                created_at=now.isoformat(),
            )
            uow.accounts.add_key(key)
            # The audit record names the key by id and prefix only: never the secret or its hash.
            audit.append(
                uow.audit,
                actor=actor,
                action="key.created",
                subject=account.name,
                payload={"key_id": key.id, "prefix": key.prefix},
                now=now,
            )
        return IssuedKey(key_id=key.id, account=account, secret=secret, prefix=key.prefix)

    def keys(self, account_name: str) -> Sequence[StoredKey]:
        with self.uow.read() as uow:
            account = uow.accounts.by_name(account_name)
            if account is None:
                raise NotFound(f"no account named {account_name!r}")
            return uow.accounts.keys_of(account.id)

    def revoke_key(self, key_id: str, actor: str = "cli") -> StoredKey:
        """Revoke a key at once: the gateway stops accepting it within its cache refresh interval."""
        now = self.clock()
        with self.uow.write() as uow:
            key = uow.accounts.key(key_id)
            if key is None:
                raise NotFound(f"no API key with id {key_id!r} (see `modelmarket keys list ACCOUNT`)")
            if key.revoked_at is not None:
                return key
            account = uow.accounts.by_id(key.account_id)
            uow.accounts.revoke_key(key_id, now.isoformat())
            audit.append(
                uow.audit,
                actor=actor,
                action="key.revoked",
                subject=account.name if account else key.account_id,
                payload={"key_id": key.id, "prefix": key.prefix},
                now=now,
            )
        return StoredKey(key.id, key.account_id, key.key_hash, key.prefix, key.created_at, now.isoformat())

    def key_index(self) -> KeyIndex:
        with self.uow.read() as uow:
            keys = uow.accounts.active_keys()
            return KeyIndex(by_hash={h: account for h, _, account in keys}, key_ids={h: k for h, k, _ in keys})


def _role(role: str) -> Role:
    for known in ROLES:
        if known == role:
            return known
    raise InvalidInput(f"role: {role!r} is not one of {', '.join(ROLES)}")
