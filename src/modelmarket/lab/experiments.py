"""Experiments: two to four published versions of one model share its traffic, and the lab tells with statistics
whether one is better.

While an experiment runs, every call of the model that names no version (``/v2/models/M/infer``, ``"model": "M"``)
goes to a variant chosen by a stable hash of the caller's API key and the experiment's name, weighted by the split:
a key keeps its variant for the whole experiment (sticky), and different experiments shuffle keys independently.
A call naming a version or an alias is served as asked and is not part of the experiment.

The gateway records each experiment call (variant, success, latency, the first output value as the prediction,
the usage event) off its hot path (``gateway/experiments.py``). ``show`` reads them, joined with the calls'
feedback and billed amounts, and reports per variant the metric with its 95% interval, the test against the first
variant (the control) with its p-value, and the sample still needed (``lab.stats``). ``stop --promote V`` moves
the model's ``latest`` alias to V's version. Starting and stopping are audited.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelmarket.audit import chain as audit
from modelmarket.core.errors import Conflict, InvalidInput, NotFound
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.lab import stats
from modelmarket.lab.ports import ExperimentCall, LabUnitOfWork, Observation, StoredExperiment
from modelmarket.lab.stats import METRICS, Metric

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
VARIANT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,15}$")
MAX_VARIANTS = 4
MAX_WEIGHT = 1000
PROMOTED_ALIAS = "latest"
SHADOW = "shadow"
"""The ``metric`` of a shadow (``lab shadow``): its one variant is the candidate, its weight the share copied."""
STARTS_LOCK_KEY = "experiment-starts"
"""Every start takes this one key: a name is unique however many models start experiments at once."""
OBSERVATIONS_MAX = 200_000
"""Observations an experiment's report reads (the newest); more than this is a sample of them."""


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    version: str
    weight: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "weight": self.weight}


@dataclass(frozen=True)
class Experiment:
    name: str
    model: str
    variants: tuple[Variant, ...]
    metric: Metric
    status: str
    started_at: str
    stopped_at: str | None = None
    promoted: str | None = None

    @property
    def total_weight(self) -> int:
        return sum(v.weight for v in self.variants)

    def assign(self, key: str) -> Variant:
        """The variant of the caller ``key`` (its API key id): a stable hash, weighted by the split."""
        digest = hashlib.sha256(f"{self.name}\0{key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % self.total_weight
        for variant in self.variants:
            if point < variant.weight:
                return variant
            point -= variant.weight
        return self.variants[-1]  # unreachable: the weights add up to the total

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise InvalidInput(f"experiment {self.name!r} has no variant {name!r} ({', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "variants": [v.to_json() for v in self.variants],
            "split": "/".join(str(v.weight) for v in self.variants),
            "metric": self.metric,
            "status": self.status,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "promoted": self.promoted,
        }

    def stored(self) -> StoredExperiment:
        variants = json.dumps([v.to_json() for v in self.variants], separators=(",", ":"))
        return StoredExperiment(
            self.name, self.model, variants, self.metric, self.status, self.started_at, self.stopped_at, self.promoted
        )

    @classmethod
    def of(cls, s: StoredExperiment) -> Experiment:
        variants = tuple(Variant(v["name"], v["version"], int(v["weight"])) for v in json.loads(s.variants_json))
        return cls(s.name, s.model, variants, s.metric, s.status, s.started_at, s.stopped_at, s.promoted)  # type: ignore[arg-type]


def parse_variants(text: str, split: str | None) -> tuple[Variant, ...]:
    """``A=1.0.0,B=2.0.0`` and ``50/50`` (even when no split is given)."""
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    if not 2 <= len(pairs) <= MAX_VARIANTS:
        raise InvalidInput(f"--variants: 2 to {MAX_VARIANTS} NAME=VERSION pairs, e.g. A=1.0.0,B=2.0.0")
    weights = [1] * len(pairs)
    if split is not None:
        parts = split.split("/")
        if len(parts) != len(pairs) or not all(p.isdigit() and 0 < int(p) <= MAX_WEIGHT for p in parts):
            raise InvalidInput(
                f"--split: {len(pairs)} whole numbers from 1 to {MAX_WEIGHT} separated by '/', one per variant "
                f"(e.g. {'/'.join(['50'] * len(pairs)) if len(pairs) == 2 else '/'.join(['1'] * len(pairs))})"
            )
        weights = [int(p) for p in parts]
    out = []
    for pair, weight in zip(pairs, weights, strict=True):
        name, sep, version = pair.partition("=")
        if not sep or not VARIANT_RE.match(name) or not version:
            raise InvalidInput(f"--variants: {pair[:40]!r} is not NAME=VERSION (a name of letters, digits, '-', '_')")
        out.append(Variant(name, version, weight))
    if len({v.name for v in out}) != len(out):
        raise InvalidInput("--variants: each variant needs its own name")
    if len({v.version for v in out}) != len(out):
        raise InvalidInput("--variants: each variant needs its own version")
    return tuple(out)


FEW_CALLERS = 10
"""Fewer distinct callers than this in a variant: its calls are far from independent (a key keeps its variant),
and the report says so beside the p-value."""


@dataclass(frozen=True)
class VariantReport:
    variant: Variant
    calls: int
    errors: int
    estimate: stats.Estimate
    comparison: stats.Comparison | None
    """None for the control."""
    callers: int = 0
    """Distinct calling accounts."""

    def to_json(self) -> dict[str, Any]:
        return {
            **self.variant.to_json(),
            "calls": self.calls,
            "callers": self.callers,
            "few_callers": self.callers < FEW_CALLERS,
            "errors": self.errors,
            "metric": self.estimate.to_json(),
            "against_control": None if self.comparison is None else self.comparison.to_json(),
        }


@dataclass(frozen=True)
class ExperimentReport:
    experiment: Experiment
    variants: tuple[VariantReport, ...]

    def to_json(self) -> dict[str, Any]:
        return {**self.experiment.to_json(), "alpha": stats.ALPHA, "power": stats.POWER, "results": [
            v.to_json() for v in self.variants
        ]}  # fmt: skip


def metric_values(metric: Metric, observations: Sequence[Observation]) -> list[float]:
    """One variant's observations as the numbers its metric is computed on."""
    if metric == "error_rate":
        return [0.0 if o.ok else 1.0 for o in observations]
    if metric == "latency_p95":
        return [o.latency_us / 1000 for o in observations if o.ok]
    if metric == "feedback":
        return [float(o.score) for o in observations if o.score is not None]
    if metric == "accuracy":
        return [1.0 if o.prediction == o.label else 0.0 for o in observations if o.label is not None]
    # revenue_per_call: a failed call earns 0; a served call not rated yet is left out (it would count as 0)
    return [float(o.amount or 0) if o.ok else 0.0 for o in observations if not o.ok or o.amount is not None]


def report(experiment: Experiment, observations: Sequence[Observation]) -> ExperimentReport:
    by_variant: dict[str, list[Observation]] = {v.name: [] for v in experiment.variants}
    for o in observations:
        if o.variant in by_variant:
            by_variant[o.variant].append(o)
    values = {name: metric_values(experiment.metric, obs) for name, obs in by_variant.items()}
    control = experiment.variants[0].name
    out = []
    for v in experiment.variants:
        obs = by_variant[v.name]
        comparison = None
        if v.name != control:
            comparison = stats.compare(experiment.metric, values[control], values[v.name])
        errors = sum(1 for o in obs if not o.ok)
        estimate = stats.estimate(experiment.metric, values[v.name])
        out.append(VariantReport(v, len(obs), errors, estimate, comparison, len({o.account_id for o in obs})))
    return ExperimentReport(experiment, tuple(out))


@dataclass(frozen=True)
class ShadowReport:
    shadow: Experiment
    calls: int
    """Calls copied (with the primary's answer recorded)."""
    copies: int
    """Copies the candidate answered or failed (a copy still under way is not counted yet)."""
    failures: int
    agreement: stats.Estimate
    """Share of the answered copies whose prediction equals the primary's."""
    primary_ms: tuple[float | None, float | None]
    """(p50, p95) latency of the primary calls, ms."""
    shadow_ms: tuple[float | None, float | None]

    def to_json(self) -> dict[str, Any]:
        def ms(pair: tuple[float | None, float | None]) -> dict[str, float | None]:
            return {
                "p50": None if pair[0] is None else round(pair[0], 3),
                "p95": None if pair[1] is None else round(pair[1], 3),
            }

        return {
            **self.shadow.to_json(),
            "candidate": self.shadow.variants[0].version,
            "percent": self.shadow.variants[0].weight,
            "calls": self.calls,
            "copies": self.copies,
            "failures": self.failures,
            "agreement": self.agreement.to_json(),
            "latency_ms": {"primary": ms(self.primary_ms), "shadow": ms(self.shadow_ms)},
        }


def _quantiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, -(-int(q * 100) * len(ordered) // 100) - 1))]

    return at(0.5), at(0.95)


def shadow_report(shadow: Experiment, observations: Sequence[Observation]) -> ShadowReport:
    primaries = {o.event_id: o for o in observations if o.variant == "primary"}
    copies = [o for o in observations if o.variant == SHADOW and o.event_id in primaries]
    answered = [o for o in copies if o.ok]
    agree = [1.0 if o.prediction == primaries[o.event_id].prediction else 0.0 for o in answered]
    return ShadowReport(
        shadow,
        len(primaries),
        len(copies),
        len(copies) - len(answered),
        stats.estimate("accuracy", agree),
        _quantiles([p.latency_us / 1000 for p in primaries.values()]),
        _quantiles([o.latency_us / 1000 for o in answered]),
    )


class ExperimentService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[LabUnitOfWork],
        clock: Callable[[], datetime],
        move_alias: Callable[[str, str, str, str], None],
    ) -> None:
        """``move_alias(model, alias, version, actor)``: the registry's (audited itself)."""
        self.uow = uow
        self.clock = clock
        self.move_alias = move_alias

    def start(
        self, name: str, model: str, variants: tuple[Variant, ...], metric: str, actor: str = "cli"
    ) -> Experiment:
        if not NAME_RE.match(name):
            raise InvalidInput(f"name: {name[:70]!r} must be lowercase letters, digits and '-' (at most 63)")
        if metric not in METRICS:
            raise InvalidInput(f"--metric: one of {', '.join(METRICS)}, got {metric[:40]!r}")
        now = self.clock().astimezone(UTC).isoformat()
        with self.uow.write(Lock.LAB, STARTS_LOCK_KEY) as uow:
            for v in variants:
                if not uow.lab.version_exists(model, v.version):
                    raise NotFound(f"model {model!r} has no published version {v.version!r} (variant {v.name})")
            if uow.lab.experiment(name) is not None:
                raise Conflict(f"an experiment named {name!r} exists already (names are never reused)")
            running = [e for e in uow.lab.experiments("running") if e.model == model]
            if running:
                raise Conflict(f"model {model!r} is in experiment {running[0].name!r} already: stop it first")
            experiment = Experiment(name, model, variants, metric, "running", now)
            uow.lab.put_experiment(experiment.stored())
            audit.append(
                uow.audit,
                actor=actor,
                action="experiment.start",
                subject=name,
                payload=experiment.to_json(),
                now=self.clock(),
            )
        return experiment

    def start_shadow(self, name: str, model: str, candidate: str, percent: int, actor: str = "cli") -> Experiment:
        """Copy ``percent`` of the calls of ``model`` that name no version to its version ``candidate``: never
        billed, never returned (``gateway/experiments.Shadows``); audited."""
        if not NAME_RE.match(name):
            raise InvalidInput(f"name: {name[:70]!r} must be lowercase letters, digits and '-' (at most 63)")
        if not 0 < percent <= 100:
            raise InvalidInput(f"--percent: a whole number from 1 to 100, got {percent}")
        now = self.clock().astimezone(UTC).isoformat()
        with self.uow.write(Lock.LAB, STARTS_LOCK_KEY) as uow:
            if not uow.lab.version_exists(model, candidate):
                raise NotFound(f"model {model!r} has no published version {candidate!r}")
            if uow.lab.alias_version(model, PROMOTED_ALIAS) == candidate:
                raise InvalidInput(f"{model}@{candidate} serves the calls already: shadow another version")
            if uow.lab.experiment(name) is not None:
                raise Conflict(f"an experiment named {name!r} exists already (names are never reused)")
            running = [e for e in uow.lab.experiments("running") if e.model == model]
            if running:
                raise Conflict(f"model {model!r} is in experiment {running[0].name!r} already: stop it first")
            shadow = Experiment(name, model, (Variant(SHADOW, candidate, percent),), SHADOW, "running", now)  # type: ignore[arg-type]
            uow.lab.put_experiment(shadow.stored())
            audit.append(
                uow.audit, actor=actor, action="shadow.start", subject=name, payload=shadow.to_json(), now=self.clock()
            )
        return shadow

    def shadow_report(self, name: str) -> ShadowReport:
        shadow = self.get(name)
        if shadow.metric != SHADOW:
            raise InvalidInput(f"{name!r} is an experiment, not a shadow: `lab experiment show {name}`")
        return shadow_report(shadow, self.observations(name))

    def get(self, name: str) -> Experiment:
        with self.uow.read() as uow:
            found = uow.lab.experiment(name)
        if found is None:
            raise NotFound(f"no experiment {name[:70]!r}")
        return Experiment.of(found)

    def all(self) -> list[Experiment]:
        with self.uow.read() as uow:
            return [Experiment.of(e) for e in uow.lab.experiments(None)]

    def running(self) -> dict[str, Experiment]:
        """Model -> its running experiment (what the gateway loads)."""
        with self.uow.read() as uow:
            return {e.model: Experiment.of(e) for e in uow.lab.experiments("running")}

    def set_split(self, name: str, weights: dict[str, int], actor: str = "cli") -> Experiment:
        """Give the running experiment's variants new weights (each 0 < w <= MAX_WEIGHT); audited."""
        model = self.get(name).model  # the lock its start and stop take: a stop is never undone by a split
        with self.uow.write(Lock.LAB, f"experiment:{model}") as uow:
            found = uow.lab.experiment(name)
            if found is None or found.status != "running":
                raise Conflict(f"experiment {name!r} is not running")
            current = Experiment.of(found)
            if set(weights) != set(current.names) or not all(0 < w <= MAX_WEIGHT for w in weights.values()):
                raise InvalidInput(f"weights: 1 to {MAX_WEIGHT} for each of {', '.join(current.names)}")
            variants = tuple(Variant(v.name, v.version, weights[v.name]) for v in current.variants)
            changed = Experiment(name, current.model, variants, current.metric, "running", current.started_at)
            uow.lab.put_experiment(changed.stored())
            audit.append(
                uow.audit, actor=actor, action="experiment.split", subject=name, payload=changed.to_json(),
                now=self.clock(),
            )  # fmt: skip
        return changed

    def note(self, action: str, subject: str, payload: dict[str, Any], actor: str = "cli") -> None:
        """An audit record of the lab's own (a canary's promotion or rollback, with the figures behind it)."""
        with self.uow.write(Lock.LAB, f"note:{subject}") as uow:
            audit.append(
                uow.audit, actor=actor, action=action, subject=subject, payload=_texts(payload), now=self.clock()
            )

    def current_version(self, model: str) -> str:
        """The version a call of ``model`` naming none goes to now (its ``latest``)."""
        with self.uow.read() as uow:
            found = uow.lab.alias_version(model, PROMOTED_ALIAS)
        if found is None:
            raise NotFound(f"model {model!r} is not published (or has no {PROMOTED_ALIAS!r} alias)")
        return found

    def observations(self, name: str, since: str | None = None) -> list[Observation]:
        with self.uow.read() as uow:
            return uow.lab.observations(name, OBSERVATIONS_MAX, since)

    def record_calls(self, calls: Sequence[ExperimentCall]) -> None:
        """The calls the gateways assigned (``gateway/experiments.ExperimentRecorder``), in one transaction."""
        with self.uow.write() as uow:
            uow.lab.add_experiment_calls(calls)

    def show(self, name: str) -> ExperimentReport:
        experiment = self.get(name)
        if experiment.metric == SHADOW:
            raise InvalidInput(f"{name!r} is a shadow, not an experiment: `lab shadow show {name}`")
        with self.uow.read() as uow:
            observations = uow.lab.observations(name, OBSERVATIONS_MAX)
        return report(experiment, observations)

    def stop(self, name: str, promote: str | None = None, actor: str = "cli") -> ExperimentReport:
        """End the experiment (its report is kept); ``promote``: move the model's ``latest`` alias to that
        variant's version."""
        now = self.clock().astimezone(UTC).isoformat()
        experiment = self.get(name)
        shadow = experiment.metric == SHADOW
        if shadow and promote is not None:
            raise InvalidInput("a shadow has nothing to promote: start an experiment or a canary of its candidate")
        chosen = None if promote is None else experiment.variant(promote)
        if experiment.status != "running":
            raise Conflict(f"experiment {name!r} is not running")
        if chosen is not None:  # first: a stop recorded as promoted always has its alias moved (audited itself)
            self.move_alias(experiment.model, PROMOTED_ALIAS, chosen.version, actor)
        with self.uow.write(Lock.LAB, f"experiment:{experiment.model}") as uow:
            found = uow.lab.experiment(name)
            if found is None or found.status != "running":
                raise Conflict(f"experiment {name!r} is not running")
            experiment = Experiment.of(found)  # as it is now (a bandit may have moved its split meanwhile)
            observations = uow.lab.observations(name, OBSERVATIONS_MAX)
            final = ExperimentReport(experiment, ()) if shadow else report(experiment, observations)
            results: Any = [v.to_json() for v in final.variants]
            if shadow:
                results = shadow_report(experiment, observations).to_json()
            stopped = Experiment(
                name, experiment.model, experiment.variants, experiment.metric, "stopped", experiment.started_at, now,
                None if chosen is None else chosen.name,
            )  # fmt: skip
            uow.lab.put_experiment(stopped.stored())
            audit.append(
                uow.audit,
                actor=actor,
                action="shadow.stop" if shadow else "experiment.stop",
                subject=name,
                payload={**stopped.to_json(), "results": _texts(results)},
                now=self.clock(),
            )
        return ExperimentReport(stopped, final.variants)


def _texts(doc: Any) -> Any:
    """``doc`` with its floats as text (audit payloads hold no floats: they are hashed as canonical JSON)."""
    if isinstance(doc, float):
        return f"{doc:.6g}"
    if isinstance(doc, dict):
        return {k: _texts(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_texts(v) for v in doc]
    return doc
