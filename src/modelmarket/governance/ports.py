"""What the publish gate needs from storage, and from the runtime (a model run in a sandbox for a trial)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from modelmarket.accounts.ports import AccountRepository
from modelmarket.audit.ports import AuditRepository
from modelmarket.governance.model import StageRecord, Submission
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.registry.ports import RegistryRepository


class GateRepository(Protocol):
    def add(self, submission: Submission) -> None: ...

    def get(self, submission_id: str) -> Submission | None:
        """The submission with its stages, oldest first."""
        ...

    def latest_for(self, model_name: str, version: str) -> Submission | None:
        """The newest submission of ``name@version``, with its stages."""
        ...

    def list(self, statuses: Sequence[str], provider_account_id: str | None, limit: int) -> list[Submission]:
        """Newest first, without stages; ``statuses`` empty means any."""
        ...

    def count_active(self, provider_account_id: str) -> int:
        """Submissions of this provider still running or pending review."""
        ...

    def update(
        self,
        submission_id: str,
        *,
        status: str,
        updated_at: str,
        artifacts_json: str | None = None,
        decided_by: str | None = None,
        decision_reason: str | None = None,
        version_id: str | None = None,
        expected: Sequence[str] | None = None,
    ) -> bool:
        """Set the status (and the other fields given); with ``expected``, only if the status is one of those.
        Whether the row changed."""
        ...

    def running(self, submitted_by_prefix: str) -> Sequence[Submission]:
        """Submissions still running whose ``submitted_by`` starts with the prefix (without stages)."""
        ...

    def add_stage(self, submission_id: str, record: StageRecord) -> None: ...


class GateUnitOfWork(Protocol):
    @property
    def gate(self) -> GateRepository: ...

    @property
    def registry(self) -> RegistryRepository: ...

    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def audit(self) -> AuditRepository: ...


class Trial(Protocol):
    """A model running in a sandboxed runner for the gate: calls go to it as OIP JSON requests."""

    def infer(self, request: dict[str, Any], binary: bytes = b"") -> dict[str, Any]:
        """The OIP answer to ``request`` (JSON; with ``binary``, the binary tensor extension's raw bytes after
        it); ``InvalidInput`` for a 4xx, ``DomainError`` for any other failure (with the runner's reason: a crash,
        a sandbox limit, a timeout)."""
        ...

    def rss_bytes(self) -> int | None:
        """The runner's resident memory now (its whole process tree), when known."""
        ...

    @property
    def profile(self) -> str:
        """The sandbox profile it runs under."""
        ...


class TrialRunner(Protocol):
    def open(self, version: VersionRecord) -> AbstractContextManager[Trial]:
        """Start ``version``'s runner under the sandbox the operator's policy gives it and wait until it is ready;
        stop it and remove its files on exit. ``NotReady`` with the reason when it does not start."""
        ...
