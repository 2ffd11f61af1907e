"""The lab's repository on SQL: feedback on calls, summed per version in the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, case, func, insert, select, update

from modelmarket.adapters.store import schema as t
from modelmarket.lab.ports import (
    CallRef,
    ExperimentCall,
    FeedbackCounts,
    Observation,
    StoredBakeoff,
    StoredExperiment,
    StoredFeedback,
)

_F = t.call_feedback.c
_U = t.usage_events.c
_X = t.experiments.c
_C = t.experiment_calls.c
_V = t.model_versions.c


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
        _upsert(self.conn, t.call_feedback, "event_id", feedback.event_id, values)

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

    def feedback_since(self, models: Sequence[str], since: str, until: str) -> dict[str, tuple[int, int, int]]:
        if not models:
            return {}
        q = (
            select(_F.model_name, func.count(), func.sum(_F.score), func.count(_F.account_id.distinct()))
            .select_from(t.call_feedback.join(t.usage_events, _U.event_id == _F.event_id))
            .where(
                _F.model_name.in_(list(models)),
                _U.occurred_at >= since,  # the calls' own time: re-scoring an old call moves nothing now
                _U.occurred_at < until,
                _F.account_id != _U.provider_account_id,  # a provider does not rate its own model up
            )
            .group_by(_F.model_name)
        )
        return {r[0]: (int(r[1]), int(r[2] or 0), int(r[3])) for r in self.conn.execute(q)}

    def version_exists(self, model: str, version: str) -> bool:
        q = select(_V.version).where(_V.model_name == model, _V.version == version)
        return self.conn.execute(q).first() is not None

    def alias_version(self, model: str, alias: str) -> str | None:
        a = t.aliases.c
        return self.conn.execute(select(a.version).where(a.model_name == model, a.alias == alias)).scalar_one_or_none()

    def experiment(self, name: str) -> StoredExperiment | None:
        row = self.conn.execute(select(t.experiments).where(_X.name == name)).first()
        return None if row is None else _experiment(row)

    def experiments(self, status: str | None) -> list[StoredExperiment]:
        q = select(t.experiments).order_by(_X.started_at, _X.name)
        if status is not None:
            q = q.where(_X.status == status)
        return [_experiment(r) for r in self.conn.execute(q)]

    def put_experiment(self, experiment: StoredExperiment) -> None:
        values = {
            "model_name": experiment.model,
            "variants": experiment.variants_json,
            "metric": experiment.metric,
            "status": experiment.status,
            "started_at": experiment.started_at,
            "stopped_at": experiment.stopped_at,
            "promoted": experiment.promoted,
        }
        _upsert(self.conn, t.experiments, "name", experiment.name, values)

    def add_experiment_calls(self, calls: Sequence[ExperimentCall]) -> None:
        if calls:
            self.conn.execute(insert(t.experiment_calls), [c._asdict() for c in calls])

    def put_bakeoff(self, bakeoff: StoredBakeoff) -> None:
        self.conn.execute(insert(t.bakeoffs).values(id=bakeoff.id, created_at=bakeoff.created_at, doc=bakeoff.doc))
        self.conn.execute(
            insert(t.bakeoff_models), [{"bakeoff_id": bakeoff.id, "model_name": m} for m in sorted(set(bakeoff.models))]
        )

    def bakeoffs_of(self, model: str, limit: int) -> list[StoredBakeoff]:
        b, m = t.bakeoffs.c, t.bakeoff_models.c
        q = (
            select(b.id, b.created_at, b.doc)
            .join(t.bakeoff_models, m.bakeoff_id == b.id)
            .where(m.model_name == model)
            .order_by(b.created_at.desc(), b.id)
            .limit(limit)
        )
        return [StoredBakeoff(r.id, r.created_at, [model], r.doc) for r in self.conn.execute(q)]

    def observations(self, experiment: str, limit: int, since: str | None = None) -> list[Observation]:
        q = (
            select(
                _C.variant,
                _C.ok,
                _C.latency_us,
                _C.prediction,
                _F.score,
                _F.label,
                _U.amount,
                _C.event_id,
                _C.account_id,
            )
            .select_from(
                t.experiment_calls.outerjoin(t.call_feedback, _F.event_id == _C.event_id).outerjoin(
                    t.usage_events, _U.event_id == _C.event_id
                )
            )
            .where(_C.experiment == experiment)
            .order_by(_C.at.desc(), _C.id)
            .limit(limit)
        )
        if since is not None:
            q = q.where(_C.at > since)
        return [
            Observation(r.variant, bool(r.ok), int(r.latency_us), r.prediction, r.score, r.label, r.amount, r.event_id)
            for r in self.conn.execute(q)
        ]


def _stored(r: Any) -> StoredFeedback:
    return StoredFeedback(
        r.event_id, r.account_id, r.model_name, r.version, int(r.score), r.label, r.created_at, r.updated_at
    )


def _experiment(r: Any) -> StoredExperiment:
    return StoredExperiment(
        r.name, r.model_name, r.variants, r.metric, r.status, r.started_at, r.stopped_at, r.promoted
    )


def _upsert(conn: Connection, table: Any, key: str, value: str, values: dict[str, Any]) -> None:
    """Update the row whose ``key`` is ``value``, or insert it (the caller holds the lab's lock for it)."""
    if conn.execute(update(table).where(table.c[key] == value).values(values)).rowcount == 0:
        conn.execute(insert(table).values({key: value, **values}))
