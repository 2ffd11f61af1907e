"""What the lab needs from storage: feedback on calls, and the calls it is given on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from modelmarket.audit.ports import AuditRepository
from modelmarket.core.uow import Lock


class CallRef(NamedTuple):
    """A billed call, as its usage event recorded it."""

    event_id: str
    account_id: str
    model: str
    version: str


@dataclass(frozen=True, slots=True)
class StoredFeedback:
    event_id: str
    account_id: str
    model: str
    version: str
    score: int
    label: str | None
    created_at: str
    updated_at: str


class FeedbackCounts(NamedTuple):
    """One version's feedback: how many calls were scored, the sum of their scores, how many of each score
    (index 0 is score 1), and how many carry a label."""

    model: str
    version: str
    calls: int
    score_sum: int
    histogram: tuple[int, int, int, int, int]
    labelled: int


class LabRepository(Protocol):
    def call(self, event_id: str) -> CallRef | None:
        """The applied usage event ``event_id`` (any account's), else None."""
        ...

    def feedback(self, event_id: str) -> StoredFeedback | None: ...

    def put_feedback(self, feedback: StoredFeedback) -> None:
        """Insert or replace the feedback on one call."""
        ...

    def feedback_counts(self, model: str | None = None) -> list[FeedbackCounts]:
        """Per (model, version), summed in the store; ``model``: only its versions."""
        ...


class LabUnitOfWork(Protocol):
    @property
    def lab(self) -> LabRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    def lock(self, lock: Lock, key: str = "", *, shared: bool = False) -> None: ...
