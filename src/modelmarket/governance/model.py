"""The publish gate's records: a submission (a package on its way to the catalogue) and its stages. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

STAGES: tuple[str, ...] = ("validate", "store", "scan", "smoke_test", "benchmark", "bias", "review", "publish")
"""The stages in the order they run. A failed stage stops the submission; the version never reaches the catalogue."""

StageStatus = Literal["running", "passed", "failed", "skipped", "waiting", "approved", "rejected"]
SubmissionStatus = Literal["running", "failed", "pending_review", "rejected", "published"]
SUBMISSION_STATUSES: tuple[str, ...] = ("running", "failed", "pending_review", "rejected", "published")
ACTIVE_STATUSES: tuple[str, ...] = ("running", "pending_review")
"""A submission in one of these still holds its ``name@version``: another cannot be submitted meanwhile."""


@dataclass(frozen=True, slots=True)
class StageRecord:
    stage: str
    status: StageStatus
    started_at: str
    duration_ms: int
    summary: str
    """One line for people: what the stage found ("3 files, all allowed", "p50 1.2 ms", "blocked: ...")."""
    report: dict[str, Any] = field(default_factory=dict)
    """The stage's figures and findings as JSON values."""

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "status": self.status,
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
            "summary": self.summary,
            "report": self.report,
        }


@dataclass(frozen=True, slots=True)
class Submission:
    """A package submitted for publication: its manifest and stored artifacts, and where the gate has got to."""

    id: str
    model_name: str
    version: str
    digest: str
    provider_account_id: str
    submitted_by: str
    status: SubmissionStatus
    manifest_json: str
    artifacts_json: str
    """``[[path, sha256, size_bytes], ...]`` once stored; ``[]`` before."""
    created_at: str
    updated_at: str
    decided_by: str | None = None
    decision_reason: str | None = None
    version_id: str | None = None
    """The published version's id, once published."""
    stages: tuple[StageRecord, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.model_name}@{self.version}"

    def stage(self, name: str) -> StageRecord | None:
        found = [s for s in self.stages if s.stage == name]
        return found[-1] if found else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model_name,
            "version": self.version,
            "ref": self.ref,
            "digest": self.digest,
            "provider_account_id": self.provider_account_id,
            "submitted_by": self.submitted_by,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "decided_by": self.decided_by,
            "decision_reason": self.decision_reason,
            "version_id": self.version_id,
            "stages": [s.to_json() for s in self.stages],
        }
