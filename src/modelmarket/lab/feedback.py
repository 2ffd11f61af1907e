"""Feedback on calls: a consumer scores one of its own billed calls (1 to 5) and may give the ground truth
(``label``). Stored once per call (a second feedback on the same call replaces the first), linked to the call's
usage event, and counted per model version: the experiments and the bandit read these figures.

A call is named by its ``x-request-id`` (its usage event's id). Another account's call is not found, exactly like
an unknown one. A call whose event is in the log but not applied yet is applied first (``catch_up``), so feedback
can follow the answer at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.lab.ports import FeedbackCounts, LabUnitOfWork, StoredFeedback

SCORE_MIN, SCORE_MAX = 1, 5
LABEL_MAX_CHARS = 200
REQUEST_ID_MAX_CHARS = 64


@dataclass(frozen=True, slots=True)
class Feedback:
    request_id: str
    model: str
    version: str
    score: int
    label: str | None
    created_at: str
    updated_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "score": self.score,
            "label": self.label,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class VersionFeedback:
    """One version's feedback figures: calls scored, mean score (exact), scores 1..5, labelled calls."""

    model: str
    version: str
    calls: int
    mean_score: Fraction
    histogram: tuple[int, int, int, int, int]
    labelled: int

    @classmethod
    def of(cls, c: FeedbackCounts) -> VersionFeedback:
        return cls(c.model, c.version, c.calls, Fraction(c.score_sum, c.calls or 1), c.histogram, c.labelled)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "calls": self.calls,
            "mean_score": f"{float(self.mean_score):.4f}",
            "scores": {str(i + 1): n for i, n in enumerate(self.histogram)},
            "labelled": self.labelled,
        }


def parse_feedback(doc: Any) -> tuple[str, int, str | None]:
    """``{"request_id", "score", "label"?}`` checked field by field: (request id, score, label)."""
    if not isinstance(doc, dict):
        raise InvalidInput('body: a JSON object {"request_id": ..., "score": 1-5, "label": ...}')
    unknown = sorted(set(doc) - {"request_id", "score", "label"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(repr(k)[:40] for k in unknown[:5])}")
    request_id = doc.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= REQUEST_ID_MAX_CHARS:
        raise InvalidInput(f"request_id: the x-request-id of a billed answer (1-{REQUEST_ID_MAX_CHARS} characters)")
    score = doc.get("score")
    if type(score) is not int or not SCORE_MIN <= score <= SCORE_MAX:
        raise InvalidInput(f"score: a whole number from {SCORE_MIN} to {SCORE_MAX}, got {str(score)[:20]!r}")
    label = doc.get("label")
    if label is not None:
        if not isinstance(label, str) or not 0 < len(label) <= LABEL_MAX_CHARS:
            raise InvalidInput(f"label: a string of 1 to {LABEL_MAX_CHARS} characters (the call's ground truth)")
        if any(ord(ch) < 32 for ch in label):
            raise InvalidInput("label: control characters are not allowed")
    return request_id, score, label


class FeedbackService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[LabUnitOfWork],
        clock: Callable[[], datetime],
        catch_up: Callable[[], object] | None = None,
    ) -> None:
        self.uow = uow
        self.clock = clock
        self.catch_up = catch_up

    def give(self, account_id: str, request_id: str, score: int, label: str | None = None) -> tuple[Feedback, bool]:
        """Store ``account_id``'s feedback on its call ``request_id``. Returns it and whether it is new (False:
        it replaced an earlier one)."""
        parse_feedback({"request_id": request_id, "score": score, "label": label})
        if not self._applied(account_id, request_id) and self.catch_up is not None:
            self.catch_up()  # (for another account's call too: a 404 takes as long whoever's the id is)
        now = self.clock().astimezone(UTC).isoformat()
        with self.uow.write(Lock.LAB, request_id) as uow:
            call = uow.lab.call(request_id)
            if call is None or call.account_id != account_id:
                raise NotFound(f"no call {request_id!r} of this account (a billed answer's x-request-id)")
            before = uow.lab.feedback(request_id)
            stored = StoredFeedback(
                request_id,
                account_id,
                call.model,
                call.version,
                score,
                label,
                now if before is None else before.created_at,
                now,
            )
            uow.lab.put_feedback(stored)
        return _feedback(stored), before is None

    def _applied(self, account_id: str, request_id: str) -> bool:
        with self.uow.read() as uow:
            call = uow.lab.call(request_id)
        return call is not None and call.account_id == account_id

    def of_call(self, account_id: str, request_id: str) -> Feedback:
        with self.uow.read() as uow:
            found = uow.lab.feedback(request_id)
        if found is None or found.account_id != account_id:
            raise NotFound(f"no feedback on call {request_id[:64]!r} of this account")
        return _feedback(found)

    def per_version(self, model: str | None = None) -> list[VersionFeedback]:
        with self.uow.read() as uow:
            return [VersionFeedback.of(c) for c in uow.lab.feedback_counts(model)]


def _feedback(s: StoredFeedback) -> Feedback:
    return Feedback(s.event_id, s.model, s.version, s.score, s.label, s.created_at, s.updated_at)
