"""Invoices with a lifecycle (draft -> finalized -> void), provider statements and payouts, all from the rated
events and the ledger; the ledger's own checks; and the digest a rebuild compares.

An invoice is one (account, period, currency). Its draft is recomputed from the rated events each time it is read
(so it is current within the metering lag); finalizing freezes its lines, records the metering offset it saw and
posts its fees to the ledger; an event of that period read later is an adjustment on a later invoice (``rating``).
Voiding a finalized invoice posts a credit note that reverses its total. Amounts are exact until a line is made:
each line is rounded once, half to even, and the total is the sum of the rounded lines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import orjson

from modelmarket.audit import chain as audit
from modelmarket.billing.period import Period, parse_period
from modelmarket.billing.plans import PlanVersion, Segment, Subscription, segments
from modelmarket.billing.ports import EconomyUnitOfWork, LedgerEntry, LedgerTxn, RatedEvent, StoredInvoice
from modelmarket.billing.rating import (
    PLATFORM_CREDITS,
    PLATFORM_REVENUE,
    ChargeSource,
    Rater,
    RegistryCharges,
    plan_rate,
    receivable,
    txn_id_for,
)
from modelmarket.billing.token_lines import TokenLine, TokenPrices, TokenSplit, token_prices
from modelmarket.core.clock import Clock
from modelmarket.core.errors import Conflict, InvalidInput, NotFound, ensure
from modelmarket.core.money import decimal_text, exact_text, minor_units, round_minor, sum_exact
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.metering.consumer import CONSUMER_NAME, MeteringService
from modelmarket.metering.partitions import consumer_name, partition_of
from modelmarket.metering.units import UnitKind

INVOICE_STATUSES = ("draft", "finalized", "void")
LINE_ORDER = {"fee": 0, "granted": 1, "included": 1, "usage": 2, "overage": 3, "adjustment": 4, "shortfall": 5}


def invoice_id(account_id: str, period: str, currency: str) -> str:
    return "inv_" + hashlib.sha256(f"{account_id}\0{period}\0{currency}".encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Line:
    type: str
    description: str
    model: str | None
    unit_kind: str | None
    events: int
    quantity_iu: Fraction
    amount_exact: Fraction
    amount: Decimal
    tokens: tuple[TokenLine, ...] = ()
    """For a model that prices input and output tokens apart: the line's input and output tokens, each with its
    price, adding up to the line (``billing.token_lines``); empty for every other line."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": self.type,
            "description": self.description,
            "model": self.model,
            "unit_kind": self.unit_kind,
            "events": self.events,
            "quantity_iu": exact_text(self.quantity_iu),
            "amount_exact": exact_text(self.amount_exact),
            "amount": decimal_text(self.amount),
        }
        if self.tokens:
            doc["tokens"] = [part.to_json() for part in self.tokens]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Line:
        return cls(
            doc["type"],
            doc["description"],
            doc["model"],
            doc["unit_kind"],
            int(doc["events"]),
            Fraction(doc["quantity_iu"]),
            Fraction(doc["amount_exact"]),
            Decimal(doc["amount"]),
            tuple(TokenLine.from_json(x) for x in doc.get("tokens", ())),
        )


@dataclass(frozen=True, slots=True)
class InvoiceDoc:
    id: str
    account_id: str
    period: str
    currency: str
    status: str
    lines: tuple[Line, ...]
    updated_at: str
    finalized_at: str | None = None
    voided_at: str | None = None
    void_reason: str | None = None
    events: int = 0
    """The usage events billed on it (each once, though one may show on an included and an overage line)."""

    def __post_init__(self) -> None:
        ensure(self.status in INVOICE_STATUSES, f"invoice {self.id}: unknown status {self.status!r}")
        for line in self.lines:
            ensure(
                line.amount == round_minor(line.amount_exact, self.currency),
                f"invoice line {line.description!r} is not its exact amount rounded once",
            )
            ensure(line.model is None or line.events > 0, f"invoice line {line.description!r} has no usage events")
            if line.tokens:
                _check_token_lines(line, self.currency)

    @property
    def total(self) -> Decimal:
        return sum_exact(line.amount for line in self.lines)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "account_id": self.account_id,
            "period": self.period,
            "currency": self.currency,
            "status": self.status,
            "events": self.events,
            "lines": [line.to_json() for line in self.lines],
            "total": decimal_text(self.total),
            "updated_at": self.updated_at,
            "finalized_at": self.finalized_at,
        }
        if self.status == "void":
            doc["voided_at"] = self.voided_at
            doc["void_reason"] = self.void_reason
            doc["credit_note"] = {"invoice_id": self.id, "amount": decimal_text(-self.total)}
        return doc

    def stored(self, finalized_offset: int | None = None) -> StoredInvoice:
        return StoredInvoice(
            self.id,
            self.account_id,
            self.period,
            self.currency,
            self.status,
            orjson.dumps({"events": self.events, "lines": [line.to_json() for line in self.lines]}).decode(),
            self.total,
            self.updated_at,
            self.finalized_at,
            finalized_offset,
            self.voided_at,
            self.void_reason,
        )


def _check_token_lines(line: Line, currency: str) -> None:
    """A line's token lines add up to it: quantity, exact amount and rounded amount; each rounded amount is
    within one minor unit of its exact one."""
    parts = line.tokens
    what = f"invoice line {line.description!r}"
    ensure(sum(p.quantity_iu for p in parts) == line.quantity_iu, f"{what}: its token quantities do not add up")
    ensure(sum(p.amount_exact for p in parts) == line.amount_exact, f"{what}: its token amounts do not add up")
    ensure(sum_exact(p.amount for p in parts) == line.amount, f"{what}: its rounded token amounts do not add up")
    unit = Fraction(1, 10 ** minor_units(currency))
    ensure(all(abs(Fraction(p.amount) - p.amount_exact) < unit for p in parts), f"{what}: a token amount is off")
    ensure(all(0 < p.events <= line.events for p in parts), f"{what}: a token line without events")


def _doc(stored: StoredInvoice) -> InvoiceDoc:
    body = orjson.loads(stored.lines_json)
    return InvoiceDoc(
        stored.id,
        stored.account_id,
        stored.period,
        stored.currency,
        stored.status,
        tuple(Line.from_json(x) for x in body["lines"]),
        stored.updated_at,
        stored.finalized_at,
        stored.voided_at,
        stored.void_reason,
        int(body["events"]),
    )


@dataclass
class _Acc:
    events: int = 0
    quantity: int = 0
    granted: int = 0
    numerators: dict[int, int] = field(default_factory=dict)
    """The exact amount as integer numerators per denominator (summing Fractions row by row was most of an
    invoice's time over many events)."""
    plan_kind: str = "payg"
    tokens: TokenSplit | None = None
    """The input and output tokens of the rows billed at a version's input and output list prices."""
    untokened: bool = False
    """Whether some row was not (another pricing, a plan's rate, a grant): then the line has no token lines."""

    def add(self, amount: Fraction) -> None:
        d = amount.denominator
        self.numerators[d] = self.numerators.get(d, 0) + amount.numerator

    @property
    def amount(self) -> Fraction:
        return sum((Fraction(n, d) for d, n in self.numerators.items()), Fraction(0))

    def with_tokens(self, line: Line, unit: UnitKind, currency: str) -> Line:
        """``line`` with its token lines, when every row of it was billed at input and output token prices."""
        if self.tokens is None or self.untokened or not self.tokens.parts:
            return line
        return replace(line, tokens=self.tokens.lines(unit, line.amount, currency))


def _line(
    kind: str,
    description: str,
    model: str | None,
    unit: UnitKind | None,
    events: int,
    quantity_base: int,
    amount: Fraction,
    currency: str,
) -> Line:
    iu = Fraction(quantity_base, unit.divisor) if unit is not None else Fraction(quantity_base)
    return Line(
        kind,
        description,
        model,
        None if unit is None else unit.value,
        events,
        iu,
        amount,
        round_minor(amount, currency),
    )


def _group(
    rows: Iterable[RatedEvent],
    plans: dict[tuple[str, int], PlanVersion],
    currency: str,
    prices: Mapping[tuple[str, str], TokenPrices],
) -> dict[tuple[str, str, str, UnitKind, str], _Acc]:
    """The rows in ``currency`` summed per line: (kind, origin period, model, unit kind, kind of plan)."""
    # Rows rated under different kinds of plan (a plan changed mid-period) make separate lines: each is labelled
    # by its own plan, and only the enterprise ones count against a commitment.
    groups: dict[tuple[str, str, str, UnitKind, str], _Acc] = {}
    for r in rows:
        if r.currency != currency:
            continue
        plan = plans.get((r.plan_name, r.plan_version))
        plan_kind = plan.kind if plan is not None else "payg"
        key = (r.kind, r.origin_period, r.model_name, r.unit_kind, plan_kind)
        acc = groups.setdefault(key, _Acc(plan_kind=plan_kind))
        acc.events += 1
        acc.quantity += r.quantity_base
        acc.granted += r.granted_base
        acc.add(r.amount)
        split = prices.get((r.model_name, r.version)) if prices else None
        # Billed at the version's list prices, as rating decides: no plan (or an unknown version of one: payg),
        # or a plan that is not free and has no rate of its own for the event.
        if split is not None and (
            plan is None or (plan.kind != "free" and plan_rate(plan.spec, r.model_name, r.unit_kind, currency) is None)
        ):
            if acc.tokens is None:
                acc.tokens = TokenSplit()
            acc.tokens.add(r, split)
        else:
            acc.untokened = True
    return groups


def build_lines(
    rows: Iterable[RatedEvent],
    plans: dict[tuple[str, int], PlanVersion],
    segs: list[Segment],
    period: Period,
    currency: str,
    token_prices: Mapping[tuple[str, str], TokenPrices] | None = None,
) -> list[Line]:
    """The lines of one invoice: plan fees, granted or included IU, usage or overage, adjustments, shortfall.

    ``token_prices``: (model, version) -> (input, output) price per IU of the versions that price input and output
    tokens apart; a line of those, billed at those prices, carries its input and output token lines."""
    groups = _group(rows, plans, currency, token_prices or {})
    lines: list[Line] = []
    enterprise_usage = Fraction(0)
    for (kind, origin, model, unit, _), acc in sorted(groups.items()):
        if kind == "adjustment":
            line = _line(
                "adjustment",
                f"{model}: usage of {origin} that arrived after it was finalized",
                model,
                unit,
                acc.events,
                acc.quantity,
                acc.amount,
                currency,
            )
            # (its quantity counts any tokens an allowance covered: then it has no token lines)
            lines.append(line if acc.granted else acc.with_tokens(line, unit, currency))
            continue
        if acc.granted:
            label = "granted" if acc.plan_kind == "free" else "included"
            lines.append(
                _line(
                    label, f"{model}: {label} by the plan", model, unit, acc.events, acc.granted, Fraction(0), currency
                )
            )
        billable = acc.quantity - acc.granted
        if billable or not acc.granted:
            label = "overage" if acc.plan_kind == "subscription" else "usage"
            line = _line(label, f"{model}: {label}", model, unit, acc.events, billable, acc.amount, currency)
            lines.append(acc.with_tokens(line, unit, currency))
            if acc.plan_kind == "enterprise":
                enterprise_usage += Fraction(lines[-1].amount)  # as invoiced: the total reaches the commitment
    days = period.last_day.day
    commitment = Fraction(0)
    for seg in segs:
        plan = plans.get((seg.subscription.plan_name, seg.subscription.plan_version))
        if plan is None or plan.currency != currency:
            continue
        share = Fraction(seg.days, days)
        span = f"{seg.first.isoformat()}..{seg.last.isoformat()} ({seg.days}/{days} days)"
        if plan.kind == "subscription" and plan.spec.fee:
            fee = Fraction(plan.spec.fee) * share
            lines.append(_line("fee", f"plan {plan.name} v{plan.version} fee, {span}", None, None, 0, 0, fee, currency))
        if plan.kind == "enterprise" and plan.spec.commitment:
            commitment += Fraction(plan.spec.commitment) * share
    if commitment > enterprise_usage:
        lines.append(
            _line(
                "shortfall",
                f"committed spend {decimal_text(round_minor(commitment, currency))} not reached",
                None,
                None,
                0,
                0,
                commitment - enterprise_usage,
                currency,
            )
        )
    lines.sort(key=lambda x: LINE_ORDER[x.type])
    return lines


def _period_end(period: Period) -> datetime:
    last = period.last_day
    return datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)


def _months(first: Period, last: Period) -> list[Period]:
    out, current = [], first
    while current <= last:
        out.append(current)
        current = Period(current.year + 1, 1) if current.month == 12 else Period(current.year, current.month + 1)
    return out


def _bills_without_usage(plan: PlanVersion | None) -> bool:
    """Whether the plan bills something in a month with no usage: a subscription's fee, a commitment."""
    if plan is None:
        return False
    return bool((plan.kind == "subscription" and plan.spec.fee) or (plan.kind == "enterprise" and plan.spec.commitment))


def _fee_months(uow: EconomyUnitOfWork, last: Period) -> set[tuple[str, str]]:
    """Every (account, period) up to ``last`` in which a plan that bills without usage was in force for a day
    or more. Free and pay-as-you-go months are left out: with no usage they make no invoice, so they would be
    visited again on every run, for ever."""
    plans = {(p.name, p.version): p for p in uow.plans.plan_versions()}
    history: dict[str, list[Subscription]] = {}
    for sub in uow.plans.subscriptions():
        history.setdefault(sub.account_id, []).append(sub)
    out: set[tuple[str, str]] = set()
    for account_id, subs in history.items():
        if not any(_bills_without_usage(plans.get((s.plan_name, s.plan_version))) for s in subs):
            continue
        first = min(Period.of(s.effective.astimezone(UTC).date()) for s in subs)
        for p in _months(first, last):
            segs = segments(subs, p)
            if any(
                _bills_without_usage(plans.get((g.subscription.plan_name, g.subscription.plan_version))) for g in segs
            ):
                out.add((account_id, p.label))
    return out


def token_prices_of(charges: ChargeSource, uow: Any, rows: Iterable[RatedEvent]) -> dict[tuple[str, str], TokenPrices]:
    """(model, version) -> (input, output) price per IU of the rows' versions that price tokens apart."""
    out: dict[tuple[str, str], TokenPrices] = {}
    for model, version in {(r.model_name, r.version) for r in rows if r.unit_kind is UnitKind.TOKENS_1K}:
        prices = token_prices(charges(uow, model, version))
        if prices is not None:
            out[(model, version)] = prices
    return out


class InvoiceService:
    """Invoices, statements, payouts, the ledger's views and checks."""

    def __init__(
        self,
        uow: UnitOfWorkFactory[EconomyUnitOfWork],
        metering: MeteringService,
        clock: Clock,
        grace_s: float,
        charges: ChargeSource | None = None,
    ) -> None:
        """``charges``: the versions' charge models (input and output token prices); by default the rating
        projector's of ``metering``, so invoices split tokens at the prices rating billed them at."""
        self.uow = uow
        self.metering = metering
        self.clock = clock
        self.grace_s = grace_s
        raters = [p for p in metering.projectors if isinstance(p, Rater)]
        self.charges: ChargeSource = charges or (raters[0].charges if raters else RegistryCharges())

    def _token_prices(self, uow: EconomyUnitOfWork, rows: list[RatedEvent]) -> dict[tuple[str, str], TokenPrices]:
        return token_prices_of(self.charges, uow, rows)

    # -- invoices ------------------------------------------------------------------------------------------------

    def _drafts(self, uow: EconomyUnitOfWork, account_id: str, period: Period) -> list[InvoiceDoc]:
        plans = {(p.name, p.version): p for p in uow.plans.plan_versions()}
        segs = segments(uow.plans.subscriptions(account_id), period)
        rows = list(uow.ledger.rated(account_id=account_id, period=period.label))
        currencies = {r.currency for r in rows}
        for seg in segs:
            plan = plans.get((seg.subscription.plan_name, seg.subscription.plan_version))
            if plan is not None and plan.kind in ("subscription", "enterprise"):
                currencies.add(plan.currency)
        now = self.clock().astimezone(UTC).isoformat()
        prices = self._token_prices(uow, rows)
        docs = []
        for currency in sorted(currencies):
            lines = build_lines(rows, plans, segs, period, currency, prices)
            docs.append(
                InvoiceDoc(
                    invoice_id(account_id, period.label, currency),
                    account_id,
                    period.label,
                    currency,
                    "draft",
                    tuple(lines),
                    now,
                    events=sum(1 for r in rows if r.currency == currency),
                )
            )
        return docs

    def invoices(self, account_id: str, period: Period | None = None) -> list[InvoiceDoc]:
        """The account's invoices (all periods, or one); drafts are brought up to date first.

        A period after the current month is refused (``InvalidInput``), unless usage already landed on it (the
        rest of a month whose invoice was finalized early lands on the next one): a draft of it would bill a plan
        fee for a month that has not begun, and would be kept and refreshed on every later call."""
        current_period = Period.of(self.clock().astimezone(UTC).date())
        self.metering.catch_up()
        periods = [period] if period is not None else None
        # Under the lock finalize and void take: a draft refreshed from a stale read would reopen an invoice
        # finalized meanwhile (PostgreSQL's READ COMMITTED does not stop that update).
        with self.uow.write(Lock.METERING) as uow:
            if period is not None and period > current_period:
                billed = period.label in uow.ledger.billed_periods(account_id)
                if not billed and not any(s.status != "draft" for s in uow.ledger.invoices(account_id, period.label)):
                    raise InvalidInput(f"period {period.label} has not started (it is {current_period.label} now)")
            stored = {s.id: s for s in uow.ledger.invoices(account_id)}
            if periods is None:
                # Drafts of a month not begun (stored before such periods were refused) are not refreshed.
                seen = {s.period for s in stored.values() if s.status != "draft" or s.period <= current_period.label}
                seen.update(uow.ledger.billed_periods(account_id))
                seen.add(current_period.label)
                periods = [parse_period(p) for p in sorted(seen)]
            out = []
            for p in periods:
                for draft in self._drafts(uow, account_id, p):
                    current = stored.get(draft.id)
                    if current is not None and current.status != "draft":
                        out.append(_doc(current))
                        continue
                    if current is None or (_doc(current).lines, _doc(current).events) != (draft.lines, draft.events):
                        uow.ledger.put_invoice(draft.stored())
                    out.append(draft)
                for s in stored.values():  # a finalized invoice whose currency has no activity left
                    if s.period == p.label and s.status != "draft" and all(d.id != s.id for d in out):
                        out.append(_doc(s))
            return sorted(out, key=lambda d: (d.period, d.currency))

    # -- read-only views (a page view: no catch-up, no write, nothing stored) --------------------------------------

    def stored_invoices(self, account_id: str, limit: int) -> list[InvoiceDoc]:
        """The account's stored invoices as stored (a draft as it was last refreshed), newest first, at most
        ``limit``."""
        with self.uow.read() as uow:
            return [_doc(s) for s in uow.ledger.recent_invoices(account_id, limit)]

    def billed_periods(self, account_id: str) -> list[str]:
        """The periods the account's rated events land on, in order."""
        with self.uow.read() as uow:
            return uow.ledger.billed_periods(account_id)

    def preview(self, account_id: str, period: Period) -> list[InvoiceDoc]:
        """The account's invoices of ``period`` as ``invoices`` would make them from the events metering has
        applied so far, read only: drafts recomputed but not stored, finalized and void ones as stored."""
        with self.uow.read() as uow:
            return self._preview(uow, account_id, period)

    def read_invoice(self, invoice_id_: str, account_id: str, periods: Iterable[Period] = ()) -> InvoiceDoc:
        """One of ``account_id``'s invoices, read only: a finalized or void one as stored, a draft recomputed from
        the events applied so far (not stored); one not stored yet is looked for among the drafts of ``periods``.
        Another account's, like an unknown one, is not found."""
        with self.uow.read() as uow:
            stored = uow.ledger.invoice(invoice_id_)
            if stored is not None and stored.account_id != account_id:
                stored = None
            if stored is not None and stored.status != "draft":
                return _doc(stored)
            wanted = [parse_period(stored.period)] if stored is not None else list(periods)
            for period in wanted:
                for doc in self._preview(uow, account_id, period):
                    if doc.id == invoice_id_:
                        return doc
        if stored is None:
            raise NotFound(f"no invoice {invoice_id_[:40]!r}")
        return _doc(stored)

    def _preview(self, uow: EconomyUnitOfWork, account_id: str, period: Period) -> list[InvoiceDoc]:
        stored = {s.id: s for s in uow.ledger.invoices(account_id, period.label)}
        out = []
        for draft in self._drafts(uow, account_id, period):
            current = stored.pop(draft.id, None)
            out.append(draft if current is None or current.status == "draft" else _doc(current))
        out.extend(_doc(s) for s in stored.values() if s.status != "draft")  # no activity left in its currency
        return sorted(out, key=lambda d: (d.period, d.currency))

    def invoice(self, invoice_id_: str, account_id: str | None = None) -> InvoiceDoc:
        """One invoice by id; ``account_id`` restricts it to that account's own (another's is not found)."""
        with self.uow.read() as uow:
            stored = uow.ledger.invoice(invoice_id_)
        if stored is None or (account_id is not None and stored.account_id != account_id):
            raise NotFound(f"no invoice {invoice_id_[:40]!r}")
        if stored.status != "draft":
            return _doc(stored)
        for doc in self.invoices(stored.account_id, parse_period(stored.period)):
            if doc.id == stored.id:
                return doc
        return _doc(stored)

    def finalize(self, invoice_id_: str, actor: str = "cli", *, force: bool = False) -> InvoiceDoc:
        """Freeze a draft. Its month must have ended (``force``: at once; the rest of the month's usage then lands
        on the next invoice as adjustments)."""
        current = self.invoice(invoice_id_)
        if current.status != "draft":
            raise Conflict(f"invoice {invoice_id_} is already {current.status}")
        if not force and self.clock().astimezone(UTC) < _period_end(parse_period(current.period)):
            raise Conflict(
                f"invoice {invoice_id_} is for {current.period}, which has not ended: finalizing it now would turn "
                "the rest of the month's usage into adjustments on the next invoice (force it to do so anyway)"
            )
        self.metering.catch_up()
        now = self.clock()
        partition = partition_of(current.account_id, self.metering.partitions)  # the cutoff: its partition's offset
        with self.uow.write(Lock.METERING) as uow:
            stored = uow.ledger.invoice(invoice_id_)
            if stored is None or stored.status != "draft":
                raise Conflict(f"invoice {invoice_id_} is already {stored.status if stored else 'gone'}")
            period = parse_period(stored.period)
            draft = next(
                (d for d in self._drafts(uow, stored.account_id, period) if d.currency == stored.currency), None
            )
            if draft is None:
                raise Conflict(
                    f"invoice {invoice_id_} ({stored.period}, {stored.currency}) has nothing left to bill: no usage "
                    f"and no plan in {stored.currency} for that month any more, so there is nothing to finalize"
                )
            offset = uow.usage.offset(consumer_name(CONSUMER_NAME, partition))
            final = InvoiceDoc(
                draft.id,
                draft.account_id,
                draft.period,
                draft.currency,
                "finalized",
                draft.lines,
                now.isoformat(),
                now.isoformat(),
                events=draft.events,
            )
            uow.ledger.put_invoice(final.stored(finalized_offset=offset))
            txns = []
            for i, line in enumerate(final.lines):
                if line.type in ("fee", "shortfall") and line.amount_exact:
                    tid = txn_id_for(line.type, final.id, i)
                    txns.append(
                        LedgerTxn(
                            tid,
                            line.type,
                            final.currency,
                            final.period,
                            final.account_id,
                            line.description,
                            None,
                            now.isoformat(),
                            (
                                LedgerEntry(tid, 1, receivable(final.account_id), final.currency, line.amount_exact),
                                LedgerEntry(tid, 2, PLATFORM_REVENUE, final.currency, -line.amount_exact),
                            ),
                        )
                    )
            uow.ledger.add_txns(txns)
            audit.append(
                uow.audit,
                actor=actor,
                action="invoice.finalized",
                subject=final.id,
                payload={
                    "account_id": final.account_id,
                    "period": final.period,
                    "currency": final.currency,
                    "total": decimal_text(final.total),
                    "offset": offset,
                },
                now=now,
            )
        return final

    def finalize_due(self, actor: str = "scheduler") -> list[InvoiceDoc]:
        """Finalize every draft whose period ended more than the grace period ago."""
        now = self.clock().astimezone(UTC)
        self.metering.catch_up()
        with self.uow.read() as uow:
            closed = uow.ledger.closed_periods()
            drafts = {(s.account_id, s.period) for s in uow.ledger.invoices() if s.status == "draft"}
            due = drafts | set(uow.ledger.billed_accounts())  # also accounts whose invoices nobody has read yet
            due |= _fee_months(uow, Period.of(now.date()))  # a fee is billed even in a month with no usage
        settled = {key[:2] for key in closed}
        done = []
        for account_id, label in sorted(due - (settled - drafts)):  # a closed month with no draft left is done
            period = parse_period(label)
            if now < _period_end(period) + timedelta(seconds=self.grace_s):
                continue
            for doc in self.invoices(account_id, period):
                if doc.status == "draft":
                    done.append(self.finalize(doc.id, actor))
        return done

    def void(self, invoice_id_: str, reason: str, actor: str = "cli") -> InvoiceDoc:
        if not reason.strip():
            raise InvalidInput("reason: say why the invoice is voided")
        now = self.clock()
        with self.uow.write(Lock.METERING) as uow:
            stored = uow.ledger.invoice(invoice_id_)
            if stored is None:
                raise NotFound(f"no invoice {invoice_id_[:40]!r}")
            if stored.status != "finalized":
                raise Conflict(f"invoice {invoice_id_} is {stored.status}: only a finalized invoice can be voided")
            doc = _doc(stored)
            voided = InvoiceDoc(
                doc.id,
                doc.account_id,
                doc.period,
                doc.currency,
                "void",
                doc.lines,
                now.isoformat(),
                doc.finalized_at,
                now.isoformat(),
                reason[:2000],
                doc.events,
            )
            uow.ledger.put_invoice(voided.stored(finalized_offset=stored.finalized_offset))
            total = Fraction(doc.total)
            tid = txn_id_for("credit", doc.id)
            uow.ledger.add_txns(
                [
                    LedgerTxn(
                        tid,
                        "credit",
                        doc.currency,
                        doc.period,
                        doc.account_id,
                        f"credit note for {doc.id}: {reason}"[:300],
                        None,
                        now.isoformat(),
                        (
                            LedgerEntry(tid, 1, receivable(doc.account_id), doc.currency, -total),
                            LedgerEntry(tid, 2, PLATFORM_CREDITS, doc.currency, total),
                        ),
                    )
                ]
            )
            audit.append(
                uow.audit,
                actor=actor,
                action="invoice.voided",
                subject=doc.id,
                payload={"reason": reason[:2000], "credit": decimal_text(-doc.total)},
                now=now,
            )
        return voided
