"""An invoice's lines with the usage events they bill: the events grouped exactly as
``billing.lifecycle.build_lines`` groups them into lines, then matched to the invoice's lines. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from modelmarket.billing.lifecycle import LINE_ORDER, Line
from modelmarket.billing.plans import PlanVersion
from modelmarket.billing.ports import BilledCall, RatedEvent, StoredInvoice
from modelmarket.core.errors import ensure
from modelmarket.core.money import decimal_text, exact_text, sum_exact
from modelmarket.metering.units import UnitKind

SHARED = ("granted", "included")
"""Lines whose events are also on the usage or overage line after them (an event may be partly included)."""

GroupKey = tuple[str, str, str, UnitKind, str]
"""(kind, origin period, model, unit kind, kind of plan): what one line sums, as ``lifecycle._group`` keys it."""


@dataclass(frozen=True, slots=True)
class CallFacts:
    """One billed call: its usage event (the event id is the call's ``x-request-id``)."""

    request_id: str
    model: str
    version: str
    occurred_at: str
    unit_kind: UnitKind
    quantity_base: int
    granted_base: int
    amount: Fraction
    latency_ms: Decimal
    pipeline_call_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "model": f"{self.model}@{self.version}",
            "occurred_at": self.occurred_at,
            "quantity_iu": exact_text(Fraction(self.quantity_base, self.unit_kind.divisor)),
            "granted_iu": exact_text(Fraction(self.granted_base, self.unit_kind.divisor)),
            "amount_exact": exact_text(self.amount),
            "latency_ms": decimal_text(self.latency_ms),
            "pipeline_call_id": self.pipeline_call_id,
        }


@dataclass
class EventGroup:
    """The events of one group, accumulated as they stream: all counted and summed, the first ``limit`` kept."""

    limit: int
    count: int = 0
    quantity: int = 0
    granted: int = 0
    amount: Fraction = Fraction(0)
    first: tuple[datetime, str] = (datetime.max.replace(tzinfo=UTC), "")
    last: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")
    calls: list[CallFacts] = field(default_factory=list)

    def add(self, call: BilledCall) -> None:
        r = call.rated
        self.count += 1
        self.quantity += r.quantity_base
        self.granted += r.granted_base
        self.amount += r.amount
        at = (datetime.fromisoformat(call.occurred_at), call.occurred_at)
        if at[0] < self.first[0]:
            self.first = at
        if at[0] > self.last[0]:
            self.last = at
        if len(self.calls) < self.limit:
            self.calls.append(
                CallFacts(
                    r.event_id,
                    r.model_name,
                    r.version,
                    call.occurred_at,
                    r.unit_kind,
                    r.quantity_base,
                    r.granted_base,
                    r.amount,
                    call.latency_ms,
                    r.pipeline_call_id,
                )
            )


@dataclass(frozen=True, slots=True)
class LineEvents:
    count: int
    amount: Fraction
    """The sum of the events' amounts: the line's exact amount (for an included line shared with an overage
    line, the overage line's)."""
    first_at: str
    last_at: str
    calls: tuple[CallFacts, ...]
    """The first ``limit_per_line`` of them, by log offset."""
    billed_on: int | None = None
    """For a granted or included line: the index of the line after it that bills the same events' amounts."""

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "amount_exact": exact_text(self.amount),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "billed_on_line": self.billed_on,
            "listed": len(self.calls),
            "truncated": len(self.calls) < self.count,
            "ids": [c.request_id for c in self.calls],
            "calls": [c.to_json() for c in self.calls],
        }


@dataclass(frozen=True, slots=True)
class LineLineage:
    index: int
    line: Line
    events: LineEvents | None
    """None for a line that bills no usage (a plan fee, a commitment shortfall)."""

    def to_json(self) -> dict[str, Any]:
        doc = {"index": self.index, **self.line.to_json()}  # (its "events": the count the line states)
        doc["billed_events"] = None if self.events is None else self.events.to_json()
        return doc


@dataclass(frozen=True, slots=True)
class InvoiceLineage:
    invoice: StoredInvoice
    lines: tuple[LineLineage, ...]
    events: int
    """The usage events billed on it (each once)."""
    limit_per_line: int

    @property
    def total(self) -> Decimal:
        return sum_exact(x.line.amount for x in self.lines)

    def to_json(self) -> dict[str, Any]:
        inv = self.invoice
        return {
            "invoice": {
                "id": inv.id,
                "account_id": inv.account_id,
                "period": inv.period,
                "currency": inv.currency,
                "status": inv.status,
                "total": decimal_text(self.total),
                "events": self.events,
                "finalized_at": inv.finalized_at,
            },
            "limit_per_line": self.limit_per_line,
            "lines": [x.to_json() for x in self.lines],
        }


class EventGroups:
    """An invoice's events grouped per line as they stream past (only counts, sums and ``limit`` calls per group
    are kept)."""

    def __init__(self, plans: dict[tuple[str, int], PlanVersion], limit: int) -> None:
        self.plans = plans
        self.limit = limit
        self.groups: dict[GroupKey, EventGroup] = {}
        self.count = 0

    def key(self, r: RatedEvent) -> GroupKey:
        plan = self.plans.get((r.plan_name, r.plan_version))
        return (r.kind, r.origin_period, r.model_name, r.unit_kind, plan.kind if plan is not None else "payg")

    def tee(self, calls: Iterable[BilledCall]) -> Iterator[RatedEvent]:
        """Each call's rated event, once it is counted in its group (to feed ``build_lines`` the same stream)."""
        for call in calls:
            self.count += 1
            key = self.key(call.rated)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = EventGroup(self.limit)
            group.add(call)
            yield call.rated

    def take_all(self, calls: Iterable[BilledCall]) -> None:
        for _ in self.tee(calls):
            pass


def _slots(groups: dict[GroupKey, EventGroup]) -> list[tuple[str, GroupKey]]:
    """The usage lines ``build_lines`` makes of these groups, in its order: (line type, group)."""
    out: list[tuple[str, GroupKey]] = []
    for key, acc in sorted(groups.items()):
        kind, _, _, _, plan_kind = key
        if kind == "adjustment":
            out.append(("adjustment", key))
            continue
        if acc.granted:
            out.append(("granted" if plan_kind == "free" else "included", key))
        if acc.quantity - acc.granted or not acc.granted:
            out.append(("overage" if plan_kind == "subscription" else "usage", key))
    out.sort(key=lambda s: LINE_ORDER[s[0]])  # stable, as build_lines sorts its lines
    return out


def match_lines(invoice_id: str, lines: tuple[Line, ...], groups: dict[GroupKey, EventGroup]) -> list[LineLineage]:
    """Each line with its events. Every usage line must find exactly its events: same type, model and unit, the
    same count, and the events' amounts summing to its exact amount (``InvariantViolated`` otherwise)."""
    slots = _slots(groups)
    usage = [i for i, line in enumerate(lines) if line.model is not None]
    what = f"invoice {invoice_id}"
    ensure(len(usage) == len(slots), f"{what}: {len(usage)} usage lines but its events make {len(slots)}")
    found: dict[int, LineEvents] = {}
    for i, (kind, key) in zip(usage, slots, strict=True):
        line, acc = lines[i], groups[key]
        _, _, model, unit, _ = key
        ensure(
            (line.type, line.model, line.unit_kind, line.events) == (kind, model, unit.value, acc.count),
            f"{what} line {i} ({line.description!r}, {line.events} events): its events are {kind} of {model} "
            f"({unit.value}), {acc.count} events",
        )
        billed_on = None
        if kind in SHARED:
            ensure(line.amount_exact == 0, f"{what} line {i}: an included line bills nothing")
            nxt = next(
                (j for j, (k, other) in zip(usage, slots, strict=True) if other == key and k not in SHARED), None
            )
            ensure(nxt is not None or acc.amount == 0, f"{what} line {i}: its events' amounts are billed nowhere")
            billed_on = nxt
        else:
            ensure(line.amount_exact == acc.amount, f"{what} line {i}: its events' amounts do not sum to it")
        found[i] = LineEvents(acc.count, acc.amount, acc.first[1], acc.last[1], tuple(acc.calls), billed_on)
    return [LineLineage(i, line, found.get(i)) for i, line in enumerate(lines)]
