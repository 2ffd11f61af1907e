"""The lab's repository on SQL: feedback on calls, summed per version in the store."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, case, func, insert, select, update

from modelmarket.adapters.store import schema as t
from modelmarket.lab.ports import CallRef, FeedbackCounts, StoredFeedback

_F = t.call_feedback.c
_U = t.usage_events.c


class SqlLabRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def call(self, event_id: str) -> CallRef | None:
        row = self.conn.execute(
            select(_U.event_id, _U.account_id, _U.model_name, _U.version).where(_U.event_id == event_id)
        ).first()
        return None if row is None else CallRef(row.event_id, row.account_id, row.model_name, row.version)

    def feedback(self, event_id: str) -> StoredFeedback | None:
        row = self.conn.execute(select(t.call_feedback).where(_F.event_id == event_id)).first()
        return None if row is None else _stored(row)

    def put_feedback(self, feedback: StoredFeedback) -> None:
        values = {
            "account_id": feedback.account_id,
            "model_name": feedback.model,
            "version": feedback.version,
            "score": feedback.score,
            "label": feedback.label,
            "created_at": feedback.created_at,
            "updated_at": feedback.updated_at,
        }
        changed = self.conn.execute(update(t.call_feedback).where(_F.event_id == feedback.event_id).values(values))
        if changed.rowcount == 0:
            self.conn.execute(insert(t.call_feedback).values(event_id=feedback.event_id, **values))

    def feedback_counts(self, model: str | None = None) -> list[FeedbackCounts]:
        scores = [func.sum(case((_F.score == s, 1), else_=0)) for s in range(1, 6)]
        q = select(
            _F.model_name,
            _F.version,
            func.count(),
            func.sum(_F.score),
            *scores,
            func.count(_F.label),
        ).group_by(_F.model_name, _F.version)
        if model is not None:
            q = q.where(_F.model_name == model)
        return [
            FeedbackCounts(r[0], r[1], int(r[2]), int(r[3] or 0), tuple(int(x or 0) for x in r[4:9]), int(r[9]))  # type: ignore[arg-type]
            for r in self.conn.execute(q.order_by(_F.model_name, _F.version))
        ]


def _stored(r: Any) -> StoredFeedback:
    return StoredFeedback(
        r.event_id, r.account_id, r.model_name, r.version, int(r.score), r.label, r.created_at, r.updated_at
    )
