"""What the privacy context needs from storage: key policies, capture opt-ins and captured calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from modelmarket.accounts.ports import AccountRepository
from modelmarket.audit.ports import AuditRepository


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """The entities redacted from every call made with one API key (on top of the model's own ``redact:``)."""

    key_id: str
    account_id: str
    entities: tuple[str, ...]
    updated_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "account_id": self.account_id,
            "redact": list(self.entities),
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class CapturedCall:
    """One call's inputs and outputs as kept for an account that opted in: redacted of every entity, bounded."""

    id: str
    """The call's request id (its usage event id)."""
    account_id: str
    model: str
    version: str
    created_at: str
    input_text: str
    output_text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.id,
            "model": self.model,
            "version": self.version,
            "created_at": self.created_at,
            "input": self.input_text,
            "output": self.output_text,
        }


class PrivacyRepository(Protocol):
    def key_policies(self) -> list[KeyPolicy]:
        """Every key policy, by key id."""
        ...

    def key_policy(self, key_id: str) -> KeyPolicy | None: ...

    def put_key_policy(self, policy: KeyPolicy) -> None:
        """Insert or replace by key id."""
        ...

    def remove_key_policy(self, key_id: str) -> bool:
        """Delete it; False when there was none."""
        ...

    def capture_accounts(self) -> list[str]:
        """Ids of the accounts that opted in to keeping their calls."""
        ...

    def set_capture(self, account_id: str, on: bool, updated_at: str) -> bool:
        """Opt in or out; False when it already was so."""
        ...

    def add_captured(self, calls: list[CapturedCall], keep_per_account: int) -> None:
        """Store the calls (one already stored is left as it is), then drop each of their accounts' oldest calls
        beyond ``keep_per_account``."""
        ...

    def captured(self, account_id: str, limit: int) -> list[CapturedCall]:
        """The account's most recent calls, newest first."""
        ...

    def forget_captured(self, account_id: str) -> int:
        """Delete every captured call of the account; how many there were."""
        ...


class PrivacyUnitOfWork(Protocol):
    @property
    def privacy(self) -> PrivacyRepository: ...

    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def audit(self) -> AuditRepository: ...
