"""Bake-offs: the same labelled set through several published models, each in its own sandbox, and a leaderboard
(``modelmarket lab bakeoff M1 M2 ... --dataset FILE``).

The dataset is JSON Lines, one example per line: ``{"inputs": [<OIP input tensors>], "label": "<ground truth>"}``
(at most ``DATASET_MAX_ROWS`` lines and ``DATASET_MAX_BYTES``). Every model gets every example as an OIP request
through the gate's sandboxed trial runner (``governance.ports.TrialRunner``: the model's runner under the sandbox
the operator's policy gives it, started for the bake-off and removed after), one at a time. A model's prediction
is the first value of its answer's first output, as text.

The leaderboard, best first: the quality metric (accuracy: predictions equal to the labels, over every example;
a failed example counts as wrong), latency p50 and p95 of the answered examples, and the cost of 1,000 such calls
at the model's list price in force (the mean IU per example, as the gateway counts them, times the price). The
accuracy the model's card declares is shown beside the measured one. The result is stored and shown on the
pages of the models that took part.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from modelmarket.core.errors import DomainError, InvalidInput
from modelmarket.core.money import decimal_text, round_minor
from modelmarket.core.uow import UnitOfWorkFactory
from modelmarket.governance.ports import TrialRunner
from modelmarket.lab.ports import LabUnitOfWork, StoredBakeoff
from modelmarket.registry.catalogue import Catalogue, VersionRecord
from modelmarket.runtime import oip

DATASET_MAX_ROWS = 10_000
DATASET_MAX_BYTES = 64 * 1024 * 1024
LABEL_MAX_CHARS = 200
MAX_MODELS = 8
SHOWN_PER_MODEL = 5
"""Bake-offs a model page shows (the newest)."""


@dataclass(frozen=True)
class Example:
    inputs: list[dict[str, Any]]
    label: str


def read_dataset(path: Path) -> tuple[list[Example], str]:
    """The examples of a JSON Lines file and its SHA-256; errors name the line."""
    if not path.is_file():
        raise InvalidInput(f"--dataset: no file {str(path)[:200]}")
    size = path.stat().st_size
    if size > DATASET_MAX_BYTES:
        raise InvalidInput(f"--dataset: {size:,} bytes, more than the limit of {DATASET_MAX_BYTES:,}")
    data = path.read_bytes()
    out: list[Example] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        if len(out) >= DATASET_MAX_ROWS:
            raise InvalidInput(f"--dataset: more than {DATASET_MAX_ROWS:,} examples")
        try:
            doc = json.loads(line)
        except ValueError:
            raise InvalidInput(f"--dataset line {number}: not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or "label" not in doc:
            raise InvalidInput(f'--dataset line {number}: an object {{"inputs": [...], "label": ...}} is needed')
        label = doc["label"]
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        if not isinstance(label, str | int) or isinstance(label, bool) or not 0 < len(str(label)) <= LABEL_MAX_CHARS:
            raise InvalidInput(f"--dataset line {number}: label must be a string or a whole number")
        out.append(Example(doc["inputs"], str(label)))
    if not out:
        raise InvalidInput("--dataset: no examples")
    return out, hashlib.sha256(data).hexdigest()


def card_accuracy(version: VersionRecord) -> str | None:
    """The accuracy the model's card declares (its first metric named ``*accuracy``), as written."""
    for metric in version.manifest.card.metrics:
        if metric.name.endswith("accuracy"):
            return metric.value
    return None


def _prediction(answer: dict[str, Any]) -> str | None:
    try:
        value = answer["outputs"][0]["data"][0]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return None if value is None else str(value)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-int(q * 100) * len(ordered) // 100) - 1))]


@dataclass
class Entry:
    model: str
    version: str
    task: str
    examples: int
    correct: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    cost_per_1000: Fraction
    currency: str
    card_accuracy: str | None

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "task": self.task,
            "metric": "accuracy",
            "accuracy": f"{self.accuracy:.4f}",
            "card_accuracy": self.card_accuracy,
            "examples": self.examples,
            "correct": self.correct,
            "errors": self.errors,
            "latency_ms": {"p50": _ms(self.p50_ms), "p95": _ms(self.p95_ms)},
            "cost_per_1000_calls": decimal_text(round_minor(self.cost_per_1000, self.currency)),
            "cost_per_1000_calls_exact": str(self.cost_per_1000),
            "currency": self.currency,
        }


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@dataclass
class Bakeoff:
    id: str
    created_at: str
    dataset: str
    dataset_sha256: str
    entries: list[Entry]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "dataset": self.dataset,
            "dataset_sha256": self.dataset_sha256,
            "examples": self.entries[0].examples if self.entries else 0,
            "leaderboard": [dict(rank=i + 1, **e.to_json()) for i, e in enumerate(self.entries)],
        }


class BakeoffService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[LabUnitOfWork],
        trials: TrialRunner,
        catalogue: Callable[[], Catalogue],
        price_of: Callable[[VersionRecord, datetime], Decimal],
        clock: Callable[[], datetime],
    ) -> None:
        """``price_of(version, at)``: the list price per IU in force (the operator's, else the manifest's)."""
        self.uow = uow
        self.trials = trials
        self.catalogue = catalogue
        self.price_of = price_of
        self.clock = clock

    def run(self, refs: Sequence[str], dataset: Path, progress: Callable[[str], None] = lambda _: None) -> Bakeoff:
        if not 1 <= len(refs) <= MAX_MODELS:
            raise InvalidInput(f"a bake-off takes 1 to {MAX_MODELS} models")
        examples, digest = read_dataset(dataset)
        catalogue = self.catalogue()
        versions = []
        for ref in refs:
            name, _, version_ref = ref.partition("@")
            versions.append(catalogue.resolve(name, version_ref or None))
        if len({v.ref for v in versions}) != len(versions):
            raise InvalidInput("a model version may take part once")
        now = self.clock()
        entries = [self._entry(v, examples, now, progress) for v in versions]
        entries.sort(key=lambda e: (-e.correct, e.p95_ms if e.p95_ms is not None else float("inf"), e.model))
        result = Bakeoff(f"bo_{uuid.uuid4().hex[:16]}", now.astimezone(UTC).isoformat(), dataset.name, digest, entries)
        doc = json.dumps(result.to_json(), separators=(",", ":"))
        with self.uow.write() as uow:
            uow.lab.put_bakeoff(StoredBakeoff(result.id, result.created_at, [v.model_name for v in versions], doc))
        return result

    def _entry(
        self, version: VersionRecord, examples: list[Example], now: datetime, progress: Callable[[str], None]
    ) -> Entry:
        progress(f"{version.ref}: starting its runner in its sandbox")
        correct = errors = 0
        latencies: list[float] = []
        units = 0
        unit = version.manifest.pricing.unit
        with self.trials.open(version) as trial:
            for i, example in enumerate(examples):
                request = {"inputs": example.inputs}
                try:
                    decoded = oip.decode_request(json.dumps(request).encode(), None)
                except DomainError as exc:
                    raise InvalidInput(f"--dataset example {i + 1}: {exc}") from None
                by_name = {t.name: t for t in decoded.inputs}
                units += unit.measure([by_name[s.name] for s in version.inputs if s.name in by_name])
                started = time.perf_counter()
                try:
                    answer = trial.infer(request)
                except DomainError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                if _prediction(answer) == example.label:
                    correct += 1
                if (i + 1) % 200 == 0:
                    progress(f"{version.ref}: {i + 1:,} of {len(examples):,} examples")
        price = self.price_of(version, now)
        cost = Fraction(units, len(examples)) / unit.divisor * Fraction(price) * 1000
        entry = Entry(
            version.model_name,
            version.version,
            version.manifest.task,
            len(examples),
            correct,
            errors,
            _quantile(latencies, 0.5),
            _quantile(latencies, 0.95),
            cost,
            version.manifest.pricing.currency,
            card_accuracy(version),
        )
        progress(f"{version.ref}: accuracy {entry.accuracy:.4f} ({correct} of {len(examples)}), {errors} errors")
        return entry

    def of_model(self, model: str, limit: int = SHOWN_PER_MODEL) -> list[dict[str, Any]]:
        """The newest bake-offs ``model`` took part in, as stored."""
        with self.uow.read() as uow:
            return [json.loads(b.doc) for b in uow.lab.bakeoffs_of(model, limit)]
