"""What the accounts context needs from storage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from modelmarket.audit.ports import AuditRepository

Role = Literal["consumer", "provider", "operator"]
ROLES: tuple[Role, ...] = ("consumer", "provider", "operator")


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    role: Role
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An API key as stored: its SHA-256 hash and a short prefix to recognise it by, never the secret."""

    id: str
    account_id: str
    key_hash: str
    prefix: str
    created_at: str
    revoked_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.id,
            "prefix": self.prefix,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


class AccountRepository(Protocol):
    def add(self, account: Account) -> None: ...

    def by_name(self, name: str) -> Account | None: ...

    def by_id(self, account_id: str) -> Account | None: ...

    def all(self) -> list[Account]:
        """Every account, by name."""
        ...

    def add_key(self, key: StoredKey) -> None: ...

    def key(self, key_id: str) -> StoredKey | None: ...

    def keys_of(self, account_id: str) -> list[StoredKey]: ...

    def revoke_key(self, key_id: str, revoked_at: str) -> None: ...

    def active_keys(self) -> list[tuple[str, str, Account]]:
        """(key hash, key id, account) of every key not revoked."""
        ...


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A dashboard sign-in as stored: the SHA-256 of the cookie's secret (never the secret, never the API key)."""

    id: str
    account_id: str
    key_id: str
    """The API key it was signed in with: revoking that key ends the session."""
    csrf_token: str
    created_at: str
    expires_at: str


class SessionRepository(Protocol):
    def add(self, session: StoredSession) -> None: ...

    def get(self, session_id: str) -> StoredSession | None: ...

    def delete(self, session_id: str) -> bool:
        """Delete it; False when there was none."""
        ...

    def delete_expired(self, now: str) -> int:
        """Delete every session that expired at or before ``now``; how many."""
        ...

    def of_account(self, account_id: str) -> list[StoredSession]:
        """The account's sessions, oldest first."""
        ...


class AccountsUnitOfWork(Protocol):
    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def audit(self) -> AuditRepository: ...


class SessionsUnitOfWork(Protocol):
    @property
    def sessions(self) -> SessionRepository: ...

    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def audit(self) -> AuditRepository: ...
