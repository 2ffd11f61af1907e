"""The ledger's read side and checks, provider statements and payouts, and the rebuild of everything derived.

Balances are sums of entries only. ``verify`` checks that every transaction sums to zero in its currency, that
every rated event names exactly one existing usage transaction, and that each usage transaction's receivable and
payable are exactly the sums of its events. ``rebuild`` recomputes usage, rated events and their transactions
from the event log alone (plus the plan, subscription and invoice history) in one transaction, and compares a
digest of the derived state before and after.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from modelmarket.audit import chain as audit
from modelmarket.billing.period import Period
from modelmarket.billing.ports import EconomyUnitOfWork, LedgerEntry, LedgerTxn, Payout, RatedEvent, StatementSum
from modelmarket.billing.rating import PLATFORM_CASH, payable, receivable, txn_id_for
from modelmarket.core.clock import Clock
from modelmarket.core.errors import ensure
from modelmarket.core.money import decimal_text, exact_text, round_minor, sum_exact
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.metering.consumer import MeteringService
from modelmarket.metering.ports import EventLog


@dataclass(frozen=True, slots=True)
class Balance:
    ledger_account: str
    currency: str
    exact: Fraction

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger_account": self.ledger_account,
            "currency": self.currency,
            "balance_exact": exact_text(self.exact),
            "balance": decimal_text(round_minor(self.exact, self.currency)),
        }


@dataclass(frozen=True, slots=True)
class ProviderStatement:
    provider_account_id: str
    period: str
    currency: str
    events: int
    gross: Decimal
    provider_amount: Decimal
    platform_fee: Decimal
    lines: tuple[dict[str, Any], ...]
    """Per model and unit kind: model, unit_kind, events, quantity_base, and gross, provider_amount and
    platform_fee as decimal strings."""

    def __post_init__(self) -> None:
        for line in self.lines:
            gross, provider, fee = (Decimal(line[k]) for k in ("gross", "provider_amount", "platform_fee"))
            ensure(provider + fee == gross, f"statement line {line['model']}: provider + platform fee != gross")
        ensure(self.events == sum(line["events"] for line in self.lines), "statement events != sum of its lines")
        ensure(self.gross == sum_exact(Decimal(x["gross"]) for x in self.lines), "statement gross != sum of lines")
        ensure(
            self.provider_amount == sum_exact(Decimal(x["provider_amount"]) for x in self.lines),
            "statement provider amount != sum of its lines",
        )
        ensure(self.provider_amount + self.platform_fee == self.gross, "statement provider + platform fee != gross")

    def to_json(self) -> dict[str, Any]:
        return {
            "provider_account_id": self.provider_account_id,
            "period": self.period,
            "currency": self.currency,
            "events": self.events,
            "gross": decimal_text(self.gross),
            "provider_amount": decimal_text(self.provider_amount),
            "platform_fee": decimal_text(self.platform_fee),
            "lines": list(self.lines),
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    transactions: int
    rated_events: int
    violation: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "transactions": self.transactions,
            "rated_events": self.rated_events,
            "violation": self.violation,
        }


@dataclass(frozen=True, slots=True)
class RebuildReport:
    before: str
    after: str
    events: int

    @property
    def identical(self) -> bool:
        return self.before == self.after

    def to_json(self) -> dict[str, Any]:
        return {
            "digest_before": self.before,
            "digest_after": self.after,
            "identical": self.identical,
            "events": self.events,
        }


def split(gross_exact: Fraction, provider_exact: Fraction, currency: str) -> tuple[Decimal, Decimal, Decimal]:
    """(gross, provider, platform): the first two rounded once each, the platform the difference, so
    provider + platform == gross exactly."""
    gross = round_minor(gross_exact, currency)
    provider = round_minor(provider_exact, currency)
    return gross, provider, gross - provider


def build_statements(rows: Iterable[RatedEvent]) -> list[ProviderStatement]:
    """One statement per provider, period and currency (in that order) from rated events; one line per model and
    unit kind, split once (``split``); each total is the sum of its rounded lines."""
    groups: dict[tuple[str, str, str], dict[tuple[str, str], list[Any]]] = defaultdict(dict)
    for r in rows:
        line = groups[(r.provider_account_id, r.period, r.currency)].setdefault(
            (r.model_name, r.unit_kind.value), [0, 0, Fraction(0), Fraction(0)]
        )
        line[0] += 1
        line[1] += r.quantity_base
        line[2] += r.amount
        line[3] += r.provider_amount
    return _statements(groups)


def statements_from_sums(period: str, sums: Iterable[StatementSum]) -> list[ProviderStatement]:
    """``build_statements`` of a period's rated events from their sums per amount (``statement_sums``): the
    same statements, the events not read one by one."""
    groups: dict[tuple[str, str, str], dict[tuple[str, str], list[Any]]] = defaultdict(dict)
    for s in sums:
        line = groups[(s.provider_account_id, period, s.currency)].setdefault(
            (s.model_name, s.unit_kind.value), [0, 0, Fraction(0), Fraction(0)]
        )
        line[0] += s.events
        line[1] += s.quantity_base
        line[2] += s.amount * s.events
        line[3] += s.provider_amount * s.events
    return _statements(groups)


def _statements(groups: dict[tuple[str, str, str], dict[tuple[str, str], list[Any]]]) -> list[ProviderStatement]:
    out = []
    for (provider, period, currency), lines in sorted(groups.items()):
        docs = []
        for (model, unit), (events, qty, gross_x, prov_x) in sorted(lines.items()):
            gross, prov, fee = split(gross_x, prov_x, currency)
            docs.append(
                {
                    "model": model,
                    "unit_kind": unit,
                    "events": events,
                    "quantity_base": qty,
                    "gross": decimal_text(gross),
                    "provider_amount": decimal_text(prov),
                    "platform_fee": decimal_text(fee),
                }
            )
        gross_t = sum_exact(Decimal(d["gross"]) for d in docs)
        prov_t = sum_exact(Decimal(d["provider_amount"]) for d in docs)
        events = sum(d["events"] for d in docs)
        out.append(
            ProviderStatement(provider, period, currency, events, gross_t, prov_t, gross_t - prov_t, tuple(docs))
        )
    return out


class LedgerService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[EconomyUnitOfWork],
        metering: MeteringService,
        clock: Clock,
        open_log: Callable[[], EventLog],
    ) -> None:
        self.uow = uow
        self.metering = metering
        self.clock = clock
        self.open_log = open_log

    def balances(self, account_id: str) -> list[Balance]:
        """The account's receivable (as a consumer) and payable (as a provider) balances, from entries only."""
        self.metering.catch_up()
        out: list[Balance] = []
        with self.uow.read() as uow:
            for name in (receivable(account_id), payable(account_id)):
                sums: dict[str, Fraction] = defaultdict(Fraction)
                for entry in uow.ledger.entries_of(name):
                    sums[entry.currency] += entry.amount
                out.extend(Balance(name, cur, total) for cur, total in sorted(sums.items()))
        return out

    def transactions(self, account_id: str, limit: int = 1000) -> list[LedgerTxn]:
        """The latest ``limit`` transactions the account is party to: as the consumer (its receivable) or as a
        provider (its payable)."""
        with self.uow.read() as uow:
            ids = {e.txn_id for e in uow.ledger.entries_of(receivable(account_id))}
            ids |= {e.txn_id for e in uow.ledger.entries_of(payable(account_id))}
            found = list(uow.ledger.txns(ids=sorted(ids)[-limit:])) if ids else []
        return sorted(found, key=lambda txn: (txn.created_at, txn.id))[-limit:]

    def verify(self) -> VerifyReport:
        self.metering.catch_up()
        with self.uow.read() as uow:
            usage: dict[str, LedgerTxn] = {}
            count = 0
            for txn in uow.ledger.txns():
                count += 1
                sums: dict[str, Fraction] = defaultdict(Fraction)
                for entry in txn.entries:
                    sums[entry.currency] += entry.amount
                for currency, total in sums.items():
                    if total != 0:
                        return VerifyReport(
                            False,
                            count,
                            0,
                            f"transaction {txn.id} does not balance in {currency}: "
                            f"its entries sum to {exact_text(total)}",
                        )
                if txn.kind == "usage":
                    usage[txn.id] = txn
            amounts: dict[str, Fraction] = defaultdict(Fraction)
            shares: dict[str, Fraction] = defaultdict(Fraction)
            events = 0
            for row in uow.ledger.rated():
                events += 1
                if row.txn_id not in usage:
                    return VerifyReport(
                        False,
                        count,
                        events,
                        f"rated event {row.event_id} names transaction {row.txn_id}, which does not exist",
                    )
                amounts[row.txn_id] += row.amount
                shares[row.txn_id] += row.provider_amount
            for tid, txn in usage.items():
                if tid not in amounts:
                    return VerifyReport(False, count, events, f"usage transaction {tid} has no rated events")
                recv = sum((e.amount for e in txn.entries if e.ledger_account.startswith("receivable:")), Fraction(0))
                pay = sum((e.amount for e in txn.entries if e.ledger_account.startswith("payable:")), Fraction(0))
                if recv != amounts[tid]:
                    return VerifyReport(
                        False,
                        count,
                        events,
                        f"transaction {tid}: receivable {exact_text(recv)} "
                        f"is not the sum of its events {exact_text(amounts[tid])}",
                    )
                if -pay != shares[tid]:
                    return VerifyReport(
                        False,
                        count,
                        events,
                        f"transaction {tid}: payable {exact_text(-pay)} "
                        f"is not the providers' share of its events {exact_text(shares[tid])}",
                    )
            return VerifyReport(True, count, events)

    # -- statements and payouts ----------------------------------------------------------------------------------

    def statements(self, period: Period, provider_account_id: str | None = None) -> list[ProviderStatement]:
        """The providers' statements for ``period`` (every provider, or one), from its rated events."""
        self.metering.catch_up()
        with self.uow.read() as uow:
            return build_statements(uow.ledger.rated(period=period.label, provider_account_id=provider_account_id))

    def applied_statements(self, period: Period, provider_account_id: str | None = None) -> list[ProviderStatement]:
        """``statements`` as of the events metering has applied so far (no catch-up), summed in the store per
        model, unit and amount rather than read one by one: what a page view reads."""
        with self.uow.read() as uow:
            return statements_from_sums(period.label, uow.ledger.statement_sums(period.label, provider_account_id))

    def run_payouts(self, period: Period, actor: str = "cli") -> list[Payout]:
        """A payout per provider and currency for the period (its statement's provider amount); idempotent."""
        statements = self.statements(period)
        now = self.clock()
        made = []
        with self.uow.write(Lock.PLANS, key="payouts") as uow:
            paid: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
            last: dict[tuple[str, str], int] = defaultdict(int)
            for earlier in uow.ledger.payouts(period.label):
                key = (earlier.provider_account_id, earlier.currency)
                paid[key] += earlier.amount
                last[key] = max(last[key], earlier.seq)
            for st in statements:
                key = (st.provider_account_id, st.currency)
                due = st.provider_amount - paid[key]  # late usage since the last run is paid now, once
                if due <= 0:
                    continue
                seq = last[key] + 1
                tid = txn_id_for("payout", st.provider_account_id, period.label, st.currency, seq)
                amount = Fraction(due)
                uow.ledger.add_txns(
                    [
                        LedgerTxn(
                            tid,
                            "payout",
                            st.currency,
                            period.label,
                            st.provider_account_id,
                            f"payout for {period.label}",
                            None,
                            now.isoformat(),
                            (
                                LedgerEntry(tid, 1, payable(st.provider_account_id), st.currency, amount),
                                LedgerEntry(tid, 2, PLATFORM_CASH, st.currency, -amount),
                            ),
                        )
                    ]
                )
                payout = Payout(
                    "po_" + tid[-24:],
                    st.provider_account_id,
                    period.label,
                    st.currency,
                    due,
                    tid,
                    now.isoformat(),
                    seq,
                )
                uow.ledger.add_payout(payout)
                audit.append(
                    uow.audit,
                    actor=actor,
                    action="payout.recorded",
                    subject=st.provider_account_id,
                    payload={
                        "period": period.label,
                        "currency": st.currency,
                        "amount": decimal_text(due),
                        "seq": seq,
                        "provider_amount_for_period": decimal_text(st.provider_amount),
                        "gross": decimal_text(st.gross),
                        "platform_fee": decimal_text(st.platform_fee),
                    },
                    now=now,
                )
                made.append(payout)
        return made

    def payouts(self, period: Period | None = None) -> list[Payout]:
        with self.uow.read() as uow:
            return uow.ledger.payouts(None if period is None else period.label)

    def recent_payouts(
        self, provider_account_id: str | None, period: Period | None, limit: int
    ) -> tuple[list[Payout], int]:
        """The newest ``limit`` payouts of one provider (or every one) and one period (or all), and how many there
        are in all."""
        label = None if period is None else period.label
        with self.uow.read() as uow:
            found = uow.ledger.recent_payouts(provider_account_id, label, limit)
            return found, uow.ledger.count_payouts(provider_account_id, label)

    # -- rebuild -------------------------------------------------------------------------------------------------

    def digest(self) -> str:
        self.metering.catch_up()
        with self.uow.read() as uow:
            return derived_digest(uow)

    def rebuild(self, actor: str = "cli") -> RebuildReport:
        """Recompute usage, rated events and usage transactions from the event log, in one transaction.

        Both digests are taken in the rebuild's own transaction (under ``Lock.METERING``), over the same events:
        the log up to the offset the rebuild caught up to. Events appended meanwhile are not in either; the
        consumer's next batch applies them as usual."""
        digests: list[str] = []

        def before(uow: Any) -> None:
            digests.append(derived_digest(uow))

        def after(uow: Any, events: int) -> None:
            digests.append(derived_digest(uow))
            audit.append(
                uow.audit,
                actor=actor,
                action="billing.rebuilt",
                subject="billing",
                payload={"digest_before": digests[0], "digest_after": digests[1], "events": events},
                now=self.clock(),
            )

        events = self.metering.rebuild(before, after)
        return RebuildReport(digests[0], digests[1], events)


def derived_digest(uow: Any) -> str:
    """SHA-256 over what rating derives: daily usage, every rated event (but the id of its batch's transaction;
    with its version, output tokens and pipeline call) and the balance of every ledger account per currency and
    period from usage transactions."""
    h = hashlib.sha256()
    for row in uow.usage.daily_usage_all():
        h.update(repr(row).encode())
    for r in uow.ledger.rated():
        h.update(
            "|".join(
                str(x)
                for x in (
                    r.event_id,
                    r.log_offset,
                    r.account_id,
                    r.provider_account_id,
                    r.model_name,
                    r.unit_kind.value,
                    r.currency,
                    r.period,
                    r.origin_period,
                    r.kind,
                    r.plan_name,
                    r.plan_version,
                    r.quantity_base,
                    r.granted_base,
                    r.amount,
                    r.provider_amount,
                    r.version,
                    r.quantity_out,
                    r.pipeline_call_id,
                )
            ).encode()
        )
    balances: dict[tuple[str, str, str], Fraction] = defaultdict(Fraction)
    for txn in uow.ledger.txns(kind="usage"):
        for e in txn.entries:
            balances[(e.ledger_account, e.currency, txn.period)] += e.amount
    for key, value in sorted(balances.items()):
        h.update(f"{key}={value}".encode())
    return h.hexdigest()
