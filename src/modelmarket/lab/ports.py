"""What the lab needs from storage: feedback on calls, and the calls it is given on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
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


@dataclass(frozen=True, slots=True)
class StoredExperiment:
    name: str
    model: str
    variants_json: str
    """``[{"name", "version", "weight"}, ...]``; the first is the control."""
    metric: str
    status: str
    """``running`` or ``stopped``."""
    started_at: str
    stopped_at: str | None
    promoted: str | None


class ExperimentCall(NamedTuple):
    """One call an experiment assigned, as the gateway saw it."""

    id: str
    experiment: str
    variant: str
    version: str
    account_id: str
    ok: bool
    latency_us: int
    prediction: str | None
    """The answer's first output value, as text (bounded); None for a failed call or a binary answer."""
    event_id: str | None
    """The call's usage event (None for a failed call)."""
    at: str


class Observation(NamedTuple):
    """An experiment call with what the store knows of it since: its feedback and its billed amount."""

    variant: str
    ok: bool
    latency_us: int
    prediction: str | None
    score: int | None
    label: str | None
    amount: Fraction | None
    event_id: str | None = None
    """The call's usage event (a shadow copy carries the id of the call it copied)."""
    account_id: str = ""
    """The calling account (calls of one caller are not independent: a report counts the callers too)."""


@dataclass(frozen=True, slots=True)
class StoredBakeoff:
    id: str
    created_at: str
    models: list[str]
    doc: str
    """The leaderboard as JSON (``lab.bakeoff.Bakeoff.to_json``)."""


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

    def feedback_since(self, models: Sequence[str], since: str, until: str) -> dict[str, tuple[int, int, int]]:
        """Model -> (calls scored, sum of their scores, distinct accounts that scored them), over the calls made
        in [since, until); a score given by the model's own provider is left out."""
        ...

    def version_exists(self, model: str, version: str) -> bool: ...

    def alias_version(self, model: str, alias: str) -> str | None: ...

    def experiment(self, name: str) -> StoredExperiment | None: ...

    def experiments(self, status: str | None) -> list[StoredExperiment]:
        """By start time; ``status``: only those."""
        ...

    def put_experiment(self, experiment: StoredExperiment) -> None:
        """Insert or replace."""
        ...

    def add_experiment_calls(self, calls: Sequence[ExperimentCall]) -> None: ...

    def put_bakeoff(self, bakeoff: StoredBakeoff) -> None: ...

    def bakeoffs_of(self, model: str, limit: int) -> list[StoredBakeoff]:
        """The newest ``limit`` bake-offs ``model`` took part in."""
        ...

    def observations(self, experiment: str, limit: int, since: str | None = None) -> list[Observation]:
        """The experiment's newest ``limit`` calls (recorded after ``since``, an ISO UTC time) with their
        feedback and billed amount."""
        ...


class LabUnitOfWork(Protocol):
    @property
    def lab(self) -> LabRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    def lock(self, lock: Lock, key: str = "", *, shared: bool = False) -> None: ...
