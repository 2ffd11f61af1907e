"""The request metrics' figures, kept as plain numbers on the hot path and made metric families at scrape time.

prometheus-client's labelled counters and histograms take a lock and run checks on every increment; measured,
recording one billed call through them cost about ten times more than the few additions below. So a request adds
to one :class:`Histo` (its count, its duration's bucket and sum) and, when billed, to one :class:`Billed`; they are
touched only on the gateway's event loop. A scrape copies them there (:meth:`RequestCollector.refresh`, on the
loop), and :class:`RequestCollector` turns the copy into the exposition's families on a worker thread.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Request durations: a millisecond (an in-process model) to two minutes (a long generation)."""
GENAI_DURATION_BUCKETS_S = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
"""The boundaries the OpenTelemetry GenAI conventions give ``gen_ai.server.request.duration``."""
GENAI_TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))
"""1, 4, 16 ... 4**13: the boundaries the GenAI conventions give ``gen_ai.client.token.usage``."""
LIMIT_STATUSES = frozenset({402, 429})
"""Statuses of a call refused by a limit: a rate (429), a quota, budget or grant (402), a provider's rate (429)."""

RequestKey = tuple[str, str, str, int, str]
"""(protocol, model, version, status, error type): one kind of finished request."""
Key3 = tuple[str, str, str]
HistoFigures = tuple[tuple[int, ...], float]
"""A histogram's copied figures: its count per bucket, and the sum of its observations."""


class Histo:
    """Observations of one label set: a count per bucket (the last one is +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        self.counts[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value ("le")
        self.total += value


class Billed:
    """IU and list-price revenue of one (model, version, currency)."""

    __slots__ = ("iu", "revenue")

    def __init__(self) -> None:
        self.iu = 0.0
        self.revenue = 0.0


@dataclass(frozen=True, slots=True)
class TablesCopy:
    """The request tables' figures at one moment, for a scrape to render on another thread."""

    requests: dict[RequestKey, HistoFigures] = field(default_factory=dict)
    billed: dict[Key3, tuple[float, float]] = field(default_factory=dict)
    """(IU, revenue) per (model, version, currency)."""
    genai_durations: dict[Key3, HistoFigures] = field(default_factory=dict)
    genai_tokens: dict[Key3, HistoFigures] = field(default_factory=dict)


class RequestTables:
    """What the requests added up to, by label set. Written on the event loop only."""

    def __init__(self) -> None:
        self.requests: dict[RequestKey, Histo] = {}
        self.billed: dict[Key3, Billed] = {}
        self.genai_durations: dict[Key3, Histo] = {}
        self.genai_tokens: dict[Key3, Histo] = {}

    def copy(self) -> TablesCopy:
        """Every figure as it stands (call on the event loop: no request is half recorded there)."""
        return TablesCopy(
            _copied(self.requests),
            {key: (b.iu, b.revenue) for key, b in self.billed.items()},
            _copied(self.genai_durations),
            _copied(self.genai_tokens),
        )


def _copied(table: dict[Any, Histo]) -> dict[Any, HistoFigures]:
    return {key: (tuple(h.counts), h.total) for key, h in table.items()}


def _add(into: dict[Any, tuple[list[int], list[float]]], key: Any, figures: HistoFigures) -> None:
    counts, total = figures
    found = into.get(key)
    if found is None:
        into[key] = (list(counts), [total])
        return
    for i, n in enumerate(counts):
        found[0][i] += n
    found[1][0] += total


def _histogram(
    name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...], rows: Iterable[tuple[Any, HistoFigures]]
) -> HistogramMetricFamily:
    merged: dict[Any, tuple[list[int], list[float]]] = {}
    for key, figures in rows:
        _add(merged, key, figures)
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    edges = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
    for key, (counts, total) in merged.items():
        cumulative, buckets = 0, []
        for edge, n in zip(edges, counts, strict=True):
            cumulative += n
            buckets.append((edge, float(cumulative)))
        family.add_metric(list(key), buckets, total[0])
    return family


def _counter(name: str, doc: str, labels: tuple[str, ...], rows: Iterable[tuple[Any, float]]) -> CounterMetricFamily:
    summed: dict[Any, float] = {}
    for key, value in rows:
        summed[key] = summed.get(key, 0.0) + value
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for key, value in summed.items():
        family.add_metric(list(key), value)
    return family


class RequestCollector(Collector):
    """Renders the copy of the tables the latest :meth:`refresh` took (none before the first: no figures)."""

    def __init__(self, tables: RequestTables) -> None:
        self.tables = tables
        self.taken = TablesCopy()

    def refresh(self) -> None:
        """Copy the tables (call on the event loop, where they are written)."""
        self.taken = self.tables.copy()

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        taken = self.taken
        requests = list(taken.requests.items())
        billed = list(taken.billed.items())
        yield _counter(
            "modelmarket_requests",
            "HTTP requests answered, by protocol, model, version and status code.",
            ("protocol", "model", "version", "code"),
            (((p, m, v, str(s)), float(sum(counts))) for (p, m, v, s, _), (counts, _) in requests),
        )
        yield _histogram(
            "modelmarket_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by protocol, model and version.",
            ("protocol", "model", "version"),
            REQUEST_BUCKETS_S,
            (((p, m, v), h) for (p, m, v, _, _), h in requests),
        )
        errors = [((p, m, e, str(s)), float(sum(counts))) for (p, m, _, s, e), (counts, _) in requests if e]
        yield _counter(
            "modelmarket_errors",
            "Requests that ended in an error (status 400 or more), by protocol, model, error type and status.",
            ("protocol", "model", "error_type", "code"),
            errors,
        )
        yield _counter(
            "modelmarket_limit_refusals",
            "Calls refused by a limit (429: a rate; 402: a quota, budget or grant), by protocol, model, error type.",
            ("protocol", "model", "error_type", "code"),
            (row for row in errors if int(row[0][3]) in LIMIT_STATUSES),
        )
        yield _counter(
            "modelmarket_inference_units",
            "Inference Units of billed calls, by model and version.",
            ("model", "version"),
            (((m, v), iu) for (m, v, _), (iu, _) in billed),
        )
        yield _counter(
            "modelmarket_revenue",
            "Billed calls' cost at the list price in force when served (before plans), by model, version and currency.",
            ("model", "version", "currency"),
            (((m, v, c), revenue) for (m, v, c), (_, revenue) in billed if c),
        )
        yield _histogram(
            "gen_ai_server_request_duration_seconds",
            "OpenAI-compatible calls (/v1): time to the answer's last byte, by GenAI operation, model, error type.",
            ("gen_ai_operation_name", "gen_ai_request_model", "error_type"),
            GENAI_DURATION_BUCKETS_S,
            taken.genai_durations.items(),
        )
        yield _histogram(
            "gen_ai_client_token_usage",
            "Tokens of billed OpenAI-compatible calls as the model's backend counted them, input and output.",
            ("gen_ai_operation_name", "gen_ai_request_model", "gen_ai_token_type"),
            GENAI_TOKEN_BUCKETS,
            taken.genai_tokens.items(),
        )
