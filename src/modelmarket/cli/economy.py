"""The marketplace economy from the command line: ``plans``, ``subscribe``, ``limits``, ``invoices``, ``ledger``,
``payouts`` and ``billing``. Thin over the services; accounts are named, amounts always carry their currency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from modelmarket.billing.documents import decimal_text
from modelmarket.billing.html import render_invoice_html
from modelmarket.billing.lifecycle import InvoiceDoc
from modelmarket.billing.period import Period, parse_period
from modelmarket.billing.plans import AMOUNT_RE, IU_RE, MAX_PLANS_FILE_BYTES, PlanVersion
from modelmarket.billing.ports import LedgerTxn, Payout
from modelmarket.billing.rating import payable, receivable
from modelmarket.billing.render import approx_text
from modelmarket.billing.subscriptions import limits_json
from modelmarket.bootstrap import Platform
from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import exact_text, round_minor
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
    return ", ".join(f"{k} {v}" for k, v in units.items())


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
    click.echo(f"plan {plan.name} v{plan.version} of {latest} ({plan.kind}, {plan.currency}), created {plan.created_at}")
    doc = plan.spec.to_json()
    for field in ("description", "grant", "fee", "included", "overage", "rates", "commitment"):
        value = doc[field]
        if isinstance(value, dict):
            value = _units_text(value)
        if value and value != "0":
            click.echo(f"  {field}: {value}")
    limits = plan.spec.limits.to_json()
    click.echo(f"  limits: {_limits_text(limits['rpm'], limits['iu_per_day'], limits['budget'], plan.currency)}")


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
        unit = UnitKind.parse(unit_text.strip())
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
    plan_doc = None
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
