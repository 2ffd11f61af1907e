"""``GateRepository`` on SQL: submissions and their stages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from modelmarket.adapters.store import schema as t
from modelmarket.governance.model import ACTIVE_STATUSES, StageRecord, Submission

_S = t.submissions.c
_G = t.submission_stages.c


class SqlGateRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, submission: Submission) -> None:
        self.conn.execute(
            insert(t.submissions).values(
                id=submission.id,
                model_name=submission.model_name,
                version=submission.version,
                digest=submission.digest,
                provider_account_id=submission.provider_account_id,
                submitted_by=submission.submitted_by,
                status=submission.status,
                manifest_json=submission.manifest_json,
                artifacts_json=submission.artifacts_json,
                created_at=submission.created_at,
                updated_at=submission.updated_at,
                decided_by=submission.decided_by,
                decision_reason=submission.decision_reason,
                version_id=submission.version_id,
            )
        )
        for record in submission.stages:
            self.add_stage(submission.id, record)

    def get(self, submission_id: str) -> Submission | None:
        row = self.conn.execute(select(t.submissions).where(_S.id == submission_id)).first()
        return None if row is None else self._with_stages(row)

    def latest_for(self, model_name: str, version: str) -> Submission | None:
        row = self.conn.execute(
            select(t.submissions)
            .where(_S.model_name == model_name, _S.version == version)
            .order_by(_S.created_at.desc(), _S.id.desc())
            .limit(1)
        ).first()
        return None if row is None else self._with_stages(row)

    def list(self, statuses: Sequence[str], provider_account_id: str | None, limit: int) -> list[Submission]:
        query = select(t.submissions).order_by(_S.created_at.desc(), _S.id.desc()).limit(limit)
        if statuses:
            query = query.where(_S.status.in_(list(statuses)))
        if provider_account_id is not None:
            query = query.where(_S.provider_account_id == provider_account_id)
        return [_submission(row, ()) for row in self.conn.execute(query)]

    def count_active(self, provider_account_id: str) -> int:
        return int(
            self.conn.execute(
                select(func.count())
                .select_from(t.submissions)
                .where(_S.provider_account_id == provider_account_id, _S.status.in_(ACTIVE_STATUSES))
            ).scalar_one()
        )

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
        values: dict[str, Any] = {"status": status, "updated_at": updated_at}
        optional = {
            "artifacts_json": artifacts_json,
            "decided_by": decided_by,
            "decision_reason": decision_reason,
            "version_id": version_id,
        }
        values.update((k, v) for k, v in optional.items() if v is not None)
        query = update(t.submissions).where(_S.id == submission_id)
        if expected is not None:
            query = query.where(_S.status.in_(list(expected)))
        return bool(self.conn.execute(query.values(**values)).rowcount)

    def running(self, submitted_by_prefix: str) -> Sequence[Submission]:
        rows = self.conn.execute(
            select(t.submissions).where(
                _S.status == "running", _S.submitted_by.startswith(submitted_by_prefix, autoescape=True)
            )
        )
        return [_submission(row, ()) for row in rows]

    def add_stage(self, submission_id: str, record: StageRecord) -> None:
        seq = self.conn.execute(
            select(func.coalesce(func.max(_G.seq), 0)).where(_G.submission_id == submission_id)
        ).scalar_one()
        self.conn.execute(
            insert(t.submission_stages).values(
                submission_id=submission_id,
                seq=int(seq) + 1,
                stage=record.stage,
                status=record.status,
                started_at=record.started_at,
                duration_ms=record.duration_ms,
                summary=record.summary,
                report_json=json.dumps(record.report, sort_keys=True),
            )
        )

    def _with_stages(self, row: Any) -> Submission:
        rows = self.conn.execute(select(t.submission_stages).where(_G.submission_id == row.id).order_by(_G.seq)).all()
        stages = tuple(
            StageRecord(
                stage=r.stage,
                status=r.status,
                started_at=r.started_at,
                duration_ms=int(r.duration_ms),
                summary=r.summary,
                report=json.loads(r.report_json),
            )
            for r in rows
        )
        return _submission(row, stages)


def _submission(row: Any, stages: tuple[StageRecord, ...]) -> Submission:
    return Submission(
        id=row.id,
        model_name=row.model_name,
        version=row.version,
        digest=row.digest,
        provider_account_id=row.provider_account_id,
        submitted_by=row.submitted_by,
        status=row.status,
        manifest_json=row.manifest_json,
        artifacts_json=row.artifacts_json,
        created_at=row.created_at,
        updated_at=row.updated_at,
        decided_by=row.decided_by,
        decision_reason=row.decision_reason,
        version_id=row.version_id,
        stages=stages,
    )
