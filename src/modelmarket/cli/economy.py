"""The marketplace economy from the command line: ``plans``, ``subscribe``, ``limits``, ``invoices`` (and its
short form ``invoice``), ``ledger``, ``payouts`` (and ``statement``) and ``billing``. Thin over the services;
accounts are named, amounts always carry their currency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from modelmarket.billing.html import render_invoice_html
from modelmarket.billing.ledger import ProviderStatement
from modelmarket.billing.lifecycle import InvoiceDoc
from modelmarket.billing.period import Period, parse_period
from modelmarket.billing.plans import AMOUNT_RE, IU_RE, MAX_PLANS_FILE_BYTES, PlanVersion
from modelmarket.billing.ports import LedgerTxn, Payout
from modelmarket.billing.rating import payable, receivable
from modelmarket.billing.render import render_invoice_text, render_statement_text
from modelmarket.billing.subscriptions import limits_json
from modelmarket.bootstrap import Platform
from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import decimal_text, exact_text, round_minor
from modelmarket.metering.units import UnitKind

RECENT_TXNS = 20


def _money(amount: Decimal, currency: str) -> str:
    return f"{decimal_text(amount)} {currency}"


def _names(p: Platform) -> dict[str, str]:
    """Account id -> name, to print names where the services speak ids."""
    return {a.id: a.name for a in p.accounts.list()}


def _period(text: str | None) -> Period | None:
    return None if text is None else parse_period(text)


def _period_end(period: Period) -> datetime:
    last = period.last_day
    return datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)


# -- plans and subscriptions -------------------------------------------------------------------------------------


@click.group()
def plans() -> None:
    """Plans consumers buy (free, payg, subscription, enterprise): apply them from a YAML file, list, show."""


@plans.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--now",
    is_flag=True,
    help="Move the subscribers of a changed plan to its new version at once (prorated by day), "
    "not at the start of the next period.",
)
@json_option
@domain_errors
def plans_apply(file: Path, now: bool, as_json: bool) -> None:
    """Apply the plans declared in FILE (YAML: `plans: [{name, kind, currency, ...}]`).

    A new plan gets version 1; a changed one a new version, its subscribers moving to it at the next period
    (or at once with --now); an identical one is left as it is, so applying the same file twice changes nothing.
    Errors name the plan and the field (e.g. `plans[2] (pro).fee: ...`) and nothing is applied.
    """
    p = platform()
    with file.open("rb") as fh:
        text = fh.read(MAX_PLANS_FILE_BYTES + 1)
    try:
        results = p.plans.apply(text, now=now, source=str(file))
    except InvalidInput as exc:
        raise InvalidInput(exc.message if exc.message.startswith(str(file)) else f"{file}: {exc.message}") from None
    if as_json:
        echo_json([r.to_json() for r in results])
        return
    rows = [[r.name, r.action, f"v{r.version}", str(r.moved)] for r in results]
    click.echo(table(rows, ["PLAN", "ACTION", "VERSION", "SUBSCRIBERS MOVED"]))
    if any(r.moved for r in results):
        when = "at once" if now else "at the start of the next period (--now moves them at once)"
        click.echo(f"subscribers of a changed plan move to its new version {when}")


def _units_text(units: dict[str, str]) -> str:
    """``{image: "500", tokens_1k: "5/2"}`` -> ``image 500, tokens_1k 2.5`` (exact, as a decimal when it has one)."""
    return ", ".join(f"{k} {exact_text(Fraction(v))}" for k, v in units.items())


def _plan_terms(plan: PlanVersion) -> str:
    doc = plan.spec.to_json()
    if plan.kind == "free":
        return f"grant/month: {_units_text(doc['grant']) or 'none'}"
    if plan.kind == "subscription":
        return f"{_money(plan.spec.fee, plan.currency)}/month, included: {_units_text(doc['included']) or 'none'}"
    if plan.kind == "enterprise":
        return f"commitment {_money(plan.spec.commitment, plan.currency)}/month, {len(plan.spec.rates)} custom rate(s)"
    return "list prices"


@plans.command("list")
@json_option
@domain_errors
def plans_list(as_json: bool) -> None:
    """List every plan at its latest version."""
    items = platform().plans.plans()
    if as_json:
        echo_json([x.to_json() for x in items])
        return
    if not items:
        click.echo("no plans yet (declare them in a YAML file and run `modelmarket plans apply FILE`)")
        return
    rows = [[x.name, f"v{x.version}", x.kind, x.currency, _plan_terms(x), x.created_at] for x in items]
    click.echo(table(rows, ["PLAN", "VERSION", "KIND", "CURRENCY", "TERMS", "CREATED"]))


@plans.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, metavar="N", help="A past version (default: latest).")
@json_option
@domain_errors
def plans_show(name: str, version: int | None, as_json: bool) -> None:
    """Show plan NAME: its kind, currency, fee, grant or included IU, rates and limits."""
    p = platform()
    plan = p.plans.plan(name, version)
    if as_json:
        echo_json(plan.to_json())
        return
    latest = p.plans.plan(name).version
    click.echo(
        f"plan {plan.name} v{plan.version} of {latest} ({plan.kind}, {plan.currency}), created {plan.created_at}"
    )
    for field, value in _plan_fields(plan):
        click.echo(f"  {field}: {value}")
    limits = plan.spec.limits.to_json()
    click.echo(f"  limits: {_limits_text(limits['rpm'], limits['iu_per_day'], limits['budget'], plan.currency)}")


def _plan_fields(plan: PlanVersion) -> list[tuple[str, str]]:
    """The fields a plan sets, for people: IU per unit kind, prices per IU and amounts with the currency."""
    doc, cur = plan.spec.to_json(), plan.currency
    out = []
    if doc["description"]:
        out.append(("description", doc["description"]))
    for field in ("grant", "included"):
        if doc[field]:
            out.append((field, f"{_units_text(doc[field])} IU per month"))
    for field in ("fee", "commitment"):
        if Decimal(doc[field]):
            out.append((field, f"{doc[field]} {cur} per month"))
    for field in ("overage", "rates"):
        if doc[field]:
            out.append((field, ", ".join(f"{k} {v} {cur}/IU" for k, v in doc[field].items())))
    return out


@click.command()
@click.argument("account")
@click.argument("plan")
@click.option(
    "--now",
    is_flag=True,
    help="Switch at once (both plans' fees and included IU prorate by day) instead of at the next period. "
    "An account's first plan always starts at once.",
)
@json_option
@domain_errors
def subscribe(account: str, plan: str, now: bool, as_json: bool) -> None:
    """Subscribe ACCOUNT to the latest version of PLAN."""
    p = platform()
    acc = p.accounts.get(account)
    sub = p.plans.subscribe(acc.id, plan, now=now)
    if as_json:
        echo_json({"account": acc.name, "account_id": acc.id, **sub.to_json()})
        return
    click.echo(f"subscribed {acc.name} to plan {sub.plan_name} v{sub.plan_version}, effective {sub.effective_at}")
    if sub.effective_at != sub.created_at:
        click.echo("(from the start of the next period; until then the current plan stays in force)")


# -- limits ------------------------------------------------------------------------------------------------------


def _parse_iu_per_day(values: tuple[str, ...]) -> dict[UnitKind, Fraction]:
    out: dict[UnitKind, Fraction] = {}
    for value in values:
        unit_text, sep, number = value.partition("=")
        if not sep:
            raise InvalidInput(f"--iu-per-day: {value!r} is not UNIT=N (e.g. image=500)")
        try:
            unit = UnitKind.parse(unit_text.strip())
        except InvalidInput as exc:
            raise InvalidInput(f"--iu-per-day: {exc.message}") from None
        if unit in out:
            raise InvalidInput(f"--iu-per-day: {unit.value} is given twice")
        if not IU_RE.match(number.strip()):
            raise InvalidInput(f"--iu-per-day: {unit.value}={number!r} is not a non-negative number of IU (e.g. 500)")
        out[unit] = Fraction(Decimal(number.strip()))
    return out


def _parse_budget(text: str | None) -> Decimal | None:
    if text is None:
        return None
    if not AMOUNT_RE.match(text):
        raise InvalidInput(f"--budget: {text!r} is not a plain non-negative decimal amount such as 25.00")
    return Decimal(text)


def _limits_text(rpm: int | None, iu_per_day: dict[str, str], budget: str | None, currency: str | None) -> str:
    parts = [f"rpm {rpm if rpm is not None else '-'}"]
    parts.append(f"IU/day {_units_text(iu_per_day) or '-'}")
    parts.append(f"budget/month {budget + ' ' + (currency or '') if budget is not None else '-'}".rstrip())
    return ", ".join(parts)


@click.group()
def limits() -> None:
    """Rate limits, daily IU quotas and monthly budgets of an account, or of one of its keys."""


@limits.command("set")
@click.argument("account")
@click.option("--key", "key_id", metavar="KEY_ID", help="Limit this key of ACCOUNT only (default: the whole account).")
@click.option("--rpm", type=int, default=None, metavar="N", help="Requests per minute (sliding window).")
@click.option(
    "--iu-per-day",
    "iu_per_day",
    multiple=True,
    metavar="UNIT=N",
    help="Inference Units per UTC day of one unit kind (image, tokens_1k, audio_minute, request); repeatable.",
)
@click.option("--budget", metavar="D", help="Spend per month in the plan's currency, a plain decimal (e.g. 25.00).")
@click.option("--clear", is_flag=True, help="Remove the current limits first (alone: remove them all).")
@json_option
@domain_errors
def limits_set(
    account: str,
    key_id: str | None,
    rpm: int | None,
    iu_per_day: tuple[str, ...],
    budget: str | None,
    clear: bool,
    as_json: bool,
) -> None:
    """Set limits of ACCOUNT (or of its key --key): merged into the current ones unless --clear."""
    p = platform()
    quotas = _parse_iu_per_day(iu_per_day)
    amount = _parse_budget(budget)
    if rpm is None and not quotas and amount is None and not clear:
        raise click.UsageError("nothing to set: give --rpm, --iu-per-day, --budget or --clear")
    acc = p.accounts.get(account)
    if key_id is not None and key_id not in {k.id for k in p.accounts.keys(account)}:
        raise InvalidInput(f"--key: {key_id!r} is not a key of {acc.name} (see `modelmarket keys list {acc.name}`)")
    stored = p.plans.set_limits(acc.id, key_id, rpm=rpm, iu_per_day=quotas or None, budget=amount, clear=clear)
    doc = limits_json(stored)
    if as_json:
        echo_json({"account": acc.name, **doc})
        return
    scope = f"key {key_id}" if key_id else "account-wide"
    _, plan = p.plans.in_force(acc.id)
    currency = plan.currency if plan is not None else None
    click.echo(
        f"limits of {acc.name} ({scope}): {_limits_text(doc['rpm'], doc['iu_per_day'], doc['budget'], currency)}"
    )


@limits.command("show")
@click.argument("account")
@json_option
@domain_errors
def limits_show(account: str, as_json: bool) -> None:
    """Show ACCOUNT's limits: those of the plan in force, the account-wide ones and those of each key."""
    p = platform()
    acc = p.accounts.get(account)
    _, plan = p.plans.in_force(acc.id)
    stored = p.plans.limits(acc.id)
    own = next((x for x in stored if not x.key_id), None)
    keyed = sorted((x for x in stored if x.key_id), key=lambda x: x.key_id)
    plan_doc: dict[str, Any] | None = None
    if plan is not None:
        plan_doc = {"name": plan.name, "version": plan.version, "currency": plan.currency}
        plan_doc["limits"] = plan.spec.limits.to_json()
    if as_json:
        echo_json(
            {
                "account": acc.name,
                "account_id": acc.id,
                "plan": plan_doc,
                "account_limits": None if own is None else limits_json(own),
                "keys": [limits_json(x) for x in keyed],
            }
        )
        return
    currency = plan.currency if plan is not None else None
    rows = []
    if plan_doc is not None:
        rows.append([f"plan {plan_doc['name']} v{plan_doc['version']}", *_limit_cells(plan_doc["limits"], currency)])
    else:
        click.echo(f"{acc.name} has no plan: billed as payg, no plan limits")
    for scope, item in [("account", own)] + [(f"key {x.key_id}", x) for x in keyed]:
        if item is not None:
            rows.append([scope, *_limit_cells(limits_json(item), currency)])
    if not rows:
        click.echo(f"no limits set for {acc.name}")
        return
    click.echo(table(rows, ["SCOPE", "RPM", "IU PER DAY", "BUDGET PER MONTH"]))


def _limit_cells(doc: dict[str, Any], currency: str | None) -> list[str]:
    budget = "-" if doc["budget"] is None else f"{doc['budget']} {currency or ''}".rstrip()
    return ["-" if doc["rpm"] is None else str(doc["rpm"]), _units_text(doc["iu_per_day"]) or "-", budget]


# -- invoices ----------------------------------------------------------------------------------------------------


@click.group()
def invoices() -> None:
    """Invoices with a lifecycle: a draft kept current, finalized (frozen, posted to the ledger), or void."""


def _invoice_row(doc: InvoiceDoc, names: dict[str, str]) -> list[str]:
    account = names.get(doc.account_id, doc.account_id)
    return [doc.id, account, doc.period, doc.status, str(len(doc.lines)), _money(doc.total, doc.currency)]


_INVOICE_HEADERS = ["ID", "ACCOUNT", "PERIOD", "STATUS", "LINES", "TOTAL"]


def _invoice_json(doc: InvoiceDoc, names: dict[str, str]) -> dict[str, Any]:
    return {"account": names.get(doc.account_id), **doc.to_json()}


@invoices.command("list")
@click.argument("account")
@click.option("--period", metavar="YYYY-MM", help="One calendar month (UTC); default: every period with activity.")
@json_option
@domain_errors
def invoices_list(account: str, period: str | None, as_json: bool) -> None:
    """List ACCOUNT's invoices (one per period and currency); drafts are brought up to date first."""
    p = platform()
    acc = p.accounts.get(account)
    docs = p.invoices.invoices(acc.id, _period(period))
    names = {acc.id: acc.name}
    if as_json:
        echo_json({"account": acc.name, "invoices": [_invoice_json(d, names) for d in docs]})
    elif not docs:
        click.echo(f"no invoices for {acc.name}" + (f" in {period}" if period else ""))
    else:
        click.echo(table([_invoice_row(d, names) for d in docs], _INVOICE_HEADERS))


@click.command()
@click.argument("account")
@click.option("--period", required=True, metavar="YYYY-MM", help="Calendar month (UTC).")
@json_option
@domain_errors
def invoice(account: str, period: str, as_json: bool) -> None:
    """Show ACCOUNT's invoices for a month in full (one per currency), as `invoices show` does: plan fees, usage
    rated under the plan in force, adjustments; each line rounded once, the total the sum of the lines."""
    p = platform()
    acc = p.accounts.get(account)
    month = parse_period(period)
    docs = p.invoices.invoices(acc.id, month)
    if as_json:
        names = {acc.id: acc.name}
        echo_json({"account": acc.name, "period": month.label, "invoices": [_invoice_json(d, names) for d in docs]})
        return
    if not docs:
        click.echo(f"no invoices for {acc.name} in {month.label}")
    for doc in docs:
        click.echo(render_invoice_text(doc, acc.name))


@invoices.command("show")
@click.argument("invoice_id")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the invoice to FILE as a self-contained printable HTML page.",
)
@json_option
@domain_errors
def invoices_show(invoice_id: str, html_file: Path | None, as_json: bool) -> None:
    """Show invoice INVOICE_ID: its status, its lines (type, description, unit, events, IU, amount) and total."""
    p = platform()
    doc = p.invoices.invoice(invoice_id)
    names = _names(p)
    account = names.get(doc.account_id, doc.account_id)
    if html_file is not None:
        html_file.write_text(render_invoice_html(doc, account), encoding="utf-8")
    if as_json:
        echo_json(_invoice_json(doc, names))
        return
    click.echo(render_invoice_text(doc, account), nl=False)
    if html_file is not None:
        click.echo(f"wrote {html_file}")


@invoices.command("finalize")
@click.argument("invoice_id", required=False)
@click.option("--due", is_flag=True, help="Finalize every draft whose month ended more than the grace period ago.")
@click.option("--force", is_flag=True, help="Finalize INVOICE_ID even though its month has not ended yet.")
@json_option
@domain_errors
def invoices_finalize(invoice_id: str | None, due: bool, force: bool, as_json: bool) -> None:
    """Finalize draft INVOICE_ID (or, with --due, every draft past the grace period): its lines are frozen and
    its fees posted to the ledger. Usage of that period read later lands on a later invoice as an adjustment."""
    if (invoice_id is None) == (not due):
        raise click.UsageError("give either an INVOICE_ID or --due")
    p = platform()
    docs = p.invoices.finalize_due() if due else [p.invoices.finalize(str(invoice_id), force=force)]
    names = _names(p)
    if as_json:
        echo_json([_invoice_json(d, names) for d in docs])
    elif not docs:
        grace = timedelta(seconds=p.settings.invoice_grace_s)
        click.echo(f"no drafts are due: a month's drafts wait {grace} after it ends (MODELMARKET_INVOICE_GRACE_S)")
    else:
        click.echo(f"finalized {len(docs)} invoice(s)")
        click.echo(table([_invoice_row(d, names) for d in docs], _INVOICE_HEADERS))


@invoices.command("void")
@click.argument("invoice_id")
@click.option("--reason", required=True, metavar="TEXT", help="Why it is voided (kept on the invoice and audited).")
@json_option
@domain_errors
def invoices_void(invoice_id: str, reason: str, as_json: bool) -> None:
    """Void finalized invoice INVOICE_ID: a credit note reverses its total in the ledger."""
    p = platform()
    doc = p.invoices.void(invoice_id, reason)
    if as_json:
        echo_json(_invoice_json(doc, _names(p)))
        return
    click.echo(f"voided {doc.id} ({doc.period}): credit note {_money(-doc.total, doc.currency)}")


# -- ledger ------------------------------------------------------------------------------------------------------


@click.group()
def ledger() -> None:
    """The double-entry ledger: an account's balances and transactions, and the ledger's own checks."""


def _txn_json(txn: LedgerTxn) -> dict[str, Any]:
    return {
        "id": txn.id,
        "kind": txn.kind,
        "currency": txn.currency,
        "period": txn.period,
        "account_id": txn.account_id,
        "memo": txn.memo,
        "log_offset": txn.log_offset,
        "created_at": txn.created_at,
        "entries": [
            {"seq": e.seq, "ledger_account": e.ledger_account, "currency": e.currency, "amount": exact_text(e.amount)}
            for e in txn.entries
        ],
    }


@ledger.command("show")
@click.argument("account")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=RECENT_TXNS,
    show_default=True,
    metavar="N",
    help="How many of the most recent transactions to print.",
)
@json_option
@domain_errors
def ledger_show(account: str, limit: int, as_json: bool) -> None:
    """Show ACCOUNT's ledger balances (receivable as a consumer, payable as a provider; per currency, exact
    and rounded) and its most recent transactions."""
    p = platform()
    acc = p.accounts.get(account)
    balances = p.ledger.balances(acc.id)
    txns = sorted(p.ledger.transactions(acc.id), key=lambda t: (t.created_at, t.id))
    txns = txns[-limit:] if limit else []
    if as_json:
        doc = {"account": acc.name, "account_id": acc.id, "balances": [b.to_json() for b in balances]}
        echo_json({**doc, "transactions": [_txn_json(t) for t in txns]})
        return
    if balances:
        rows = [
            [b.ledger_account, b.currency, decimal_text(round_minor(b.exact, b.currency)), exact_text(b.exact)]
            for b in balances
        ]
        click.echo(table(rows, ["LEDGER ACCOUNT", "CURRENCY", "BALANCE", "EXACT"]))
        click.echo("(debit positive: a receivable is owed by the account, a negative payable is owed to it)")
    else:
        click.echo(f"no ledger entries for {acc.name}")
    if txns:
        own = {receivable(acc.id), payable(acc.id)}
        click.echo(f"\nrecent transactions ({len(txns)}):")
        rows = []
        for t in txns:
            effect = sum((e.amount for e in t.entries if e.ledger_account in own), Fraction(0))
            rows.append([t.created_at, t.kind, t.period, _money(round_minor(effect, t.currency), t.currency), t.memo])
        click.echo(table(rows, ["CREATED", "KIND", "PERIOD", "AMOUNT", "MEMO"]))


@ledger.command("verify")
@json_option
@domain_errors
def ledger_verify(as_json: bool) -> None:
    """Check the ledger: every transaction sums to zero per currency, every rated event names one usage
    transaction, and each usage transaction is exactly the sum of its events. Exits 1 naming the first violation."""
    report = platform().ledger.verify()
    if as_json:
        echo_json(report.to_json())
    elif report.ok:
        click.echo(f"ledger ok: {report.transactions} transactions, {report.rated_events} rated events")
    else:
        click.echo(f"ledger broken: {report.violation}", err=True)
    if not report.ok:
        raise SystemExit(1)


# -- payouts and statements --------------------------------------------------------------------------------------


@click.group()
def payouts() -> None:
    """Provider payouts per month (from their statements) and the statements themselves."""


def _payout_json(payout: Payout, names: dict[str, str]) -> dict[str, Any]:
    return {
        "id": payout.id,
        "provider": names.get(payout.provider_account_id),
        "provider_account_id": payout.provider_account_id,
        "period": payout.period,
        "currency": payout.currency,
        "amount": decimal_text(payout.amount),
        "txn_id": payout.txn_id,
        "created_at": payout.created_at,
    }


def _payout_table(items: list[Payout], names: dict[str, str]) -> str:
    rows = []
    for x in items:
        provider = names.get(x.provider_account_id, x.provider_account_id)
        rows.append([x.id, provider, x.period, _money(x.amount, x.currency), x.created_at])
    return table(rows, ["PAYOUT", "PROVIDER", "PERIOD", "AMOUNT", "RECORDED"])


@payouts.command("run")
@click.option("--period", required=True, metavar="YYYY-MM", help="A closed calendar month (UTC).")
@json_option
@domain_errors
def payouts_run(period: str, as_json: bool) -> None:
    """Record a payout per provider and currency for a closed month: its statement's provider amount.

    A month is closed once it has ended and its grace period for late usage (MODELMARKET_INVOICE_GRACE_S) has
    passed; an open one is refused. Idempotent: a provider already paid for the month is not paid again."""
    p = platform()
    month = parse_period(period)
    ready = _period_end(month) + timedelta(seconds=p.settings.invoice_grace_s)
    if p.clock() < ready:
        raise InvalidInput(
            f"period {month.label} is still open to late usage until {ready.isoformat()} (its end plus "
            "MODELMARKET_INVOICE_GRACE_S): a payout now would miss what arrives after it"
        )
    made = p.ledger.run_payouts(month)
    names = _names(p)
    if as_json:
        echo_json({"period": month.label, "recorded": [_payout_json(x, names) for x in made]})
    elif made:
        click.echo(f"recorded {len(made)} payout(s) for {month.label}")
        click.echo(_payout_table(made, names))
    else:
        existing = p.ledger.payouts(month)
        if existing:
            click.echo(f"nothing new recorded: {len(existing)} payout(s) for {month.label} were already recorded")
        else:
            click.echo(f"nothing recorded: no provider earned anything in {month.label}")


@payouts.command("list")
@click.option("--period", metavar="YYYY-MM", help="One month (default: all).")
@json_option
@domain_errors
def payouts_list(period: str | None, as_json: bool) -> None:
    """List recorded payouts."""
    p = platform()
    items = p.ledger.payouts(_period(period))
    names = _names(p)
    if as_json:
        echo_json([_payout_json(x, names) for x in items])
    elif not items:
        click.echo("no payouts recorded" + (f" for {period}" if period else ""))
    else:
        click.echo(_payout_table(items, names))


def _echo_statements(items: list[ProviderStatement], names: dict[str, str], as_json: bool) -> None:
    if as_json:
        echo_json([{"provider": names.get(s.provider_account_id), **s.to_json()} for s in items])
        return
    for st in items:
        click.echo(render_statement_text(st, names.get(st.provider_account_id, st.provider_account_id)))


@payouts.command("statements")
@click.argument("provider", required=False)
@click.option("--period", required=True, metavar="YYYY-MM", help="Calendar month (UTC).")
@json_option
@domain_errors
def payouts_statements(provider: str | None, period: str, as_json: bool) -> None:
    """Provider statements for a month from the ledger's rated events: gross, provider amount and platform fee
    per model (every provider, or PROVIDER only)."""
    p = platform()
    month = parse_period(period)
    provider_id = p.accounts.get(provider).id if provider else None
    items = p.ledger.statements(month, provider_id)
    if not items and not as_json:
        click.echo(f"no revenue in {month.label}" + (f" for {provider}" if provider else ""))
    _echo_statements(items, _names(p), as_json)


@click.command()
@click.argument("provider")
@click.option("--period", required=True, metavar="YYYY-MM", help="Calendar month (UTC).")
@json_option
@domain_errors
def statement(provider: str, period: str, as_json: bool) -> None:
    """Show PROVIDER's statements for a month (one per currency), as `payouts statements PROVIDER` does: gross
    revenue per model from the rated usage, split into the provider's amount and the platform fee."""
    p = platform()
    acc = p.accounts.get(provider)
    month = parse_period(period)
    items = p.ledger.statements(month, acc.id)
    if as_json:
        docs = [{"provider": acc.name, **s.to_json()} for s in items]
        echo_json({"provider": acc.name, "period": month.label, "statements": docs})
        return
    if not items:
        click.echo(f"no revenue for {acc.name} in {month.label}")
    _echo_statements(items, {acc.id: acc.name}, as_json)


# -- billing -----------------------------------------------------------------------------------------------------


@click.group("billing")
def billing_group() -> None:
    """Maintenance of what billing derives from the usage event log."""


@billing_group.command("rebuild")
@json_option
@domain_errors
def billing_rebuild(as_json: bool) -> None:
    """Recompute usage, rated events and usage transactions from the event log in one transaction, and compare
    a digest of them before and after. Invoices, fees, credits and payouts are kept as they are."""
    report = platform().ledger.rebuild()
    if as_json:
        echo_json(report.to_json())
        return
    click.echo(f"digest before: {report.before}")
    click.echo(f"digest after:  {report.after}")
    click.echo(f"{report.events} event(s) replayed")
    click.echo("identical" if report.identical else "repaired: derived rows differed from the log")
