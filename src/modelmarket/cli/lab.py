"""The Transmutation Lab from the command line: ``lab price-replay`` (what a month would have earned under other
prices or plans, re-rated by billing's own code, nothing stored)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path

import click

from modelmarket.billing.period import parse_period
from modelmarket.billing.plans import MAX_PLANS_FILE_BYTES, parse_plans
from modelmarket.billing.replay import Change, Proposal, ReplayReport
from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import decimal_text, round_minor

PROGRESS_EVERY = 100_000
"""Events between two progress lines on stderr (a long replay says how far it is)."""


@click.group()
def lab() -> None:
    """The Transmutation Lab: try prices and plans on real usage before anyone pays them."""


def _price(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidInput(f"--price must be a decimal amount per IU, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise InvalidInput(f"--price must be a finite, non-negative amount per IU, got {text!r}")
    return value


@lab.command("price-replay")
@click.option("--period", required=True, metavar="YYYY-MM", help="The month whose usage is re-rated.")
@click.option("--model", "model", default=None, metavar="M", help="The model whose list price changes (with --price).")
@click.option("--price", default=None, metavar="P", help="M's proposed list price per IU, in its currency.")
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A plans file (as `plans apply` takes): each plan in it replaces the stored plan of its name.",
)
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000), help="Accounts listed.")
@json_option
@domain_errors
def price_replay(
    period: str, model: str | None, price: str | None, plan_file: Path | None, top: int, as_json: bool
) -> None:
    """Re-rate a month's real usage under proposed prices or plans and print the revenue, old against new.

    Every event of the month goes through billing's own rating and invoice code, so a replay without --price or
    --plan reproduces the stored invoices to the cent. Nothing is stored and no invoice changes. Prints revenue
    per model, per provider (their share) and per consumer segment (the plan in force), the period's invoice
    totals, and the accounts whose bill would change most.
    """
    if (model is None) != (price is None):
        raise click.UsageError("--model and --price go together")
    p = platform()
    prices = {} if model is None or price is None else {model: _price(price)}
    if model is not None and model not in p.registry.catalogue().names():
        raise click.ClickException(f"no model {model!r} in the catalogue")
    specs = []
    if plan_file is not None:
        with plan_file.open("rb") as fh:
            specs = parse_plans(fh.read(MAX_PLANS_FILE_BYTES + 1), str(plan_file))

    def progress(n: int) -> None:
        if n % PROGRESS_EVERY < 10_000:
            click.echo(f"re-rated {n:,} events", err=True)

    report = p.replays.replay(parse_period(period), Proposal(prices, tuple(specs)), progress)
    names = {a.id: a.name for a in p.accounts.list()}
    if as_json:
        echo_json(report.to_json(names, top))
        return
    click.echo(_render(report, names, top))


def _money(value: Fraction | Decimal, currency: str) -> str:
    amount = round_minor(Fraction(value), currency) if isinstance(value, Fraction) else value
    return f"{decimal_text(amount)} {currency}"


def _signed(value: Fraction | Decimal, currency: str) -> str:
    text = _money(value, currency)
    return text if text.startswith("-") else f"+{text}"


def _rows(changes: dict[tuple[str, str], Change], label: dict[str, str] | None = None) -> list[list[str]]:
    return [
        [(label or {}).get(k, k), str(ch.events), _money(ch.old, c), _money(ch.new, c), _signed(ch.delta, c)]
        for (k, c), ch in sorted(changes.items(), key=lambda kv: (-abs(kv[1].delta), kv[0]))
    ]


def _render(report: ReplayReport, names: dict[str, str], top: int) -> str:
    out = [
        f"price replay of {report.period}: {report.proposal}",
        f"{report.events:,} events of the period re-rated ({report.rated:,} with the rest of their months) "
        f"in {report.seconds:.2f} s",
        "",
        "invoice totals:",
    ]
    totals = report.totals()
    out.append(
        table(
            [[c, _money(o, c), _money(n, c), _signed(n - o, c)] for c, (o, n) in sorted(totals.items())],
            ["currency", "old", "new", "change"],
        )
        if totals
        else "  (no invoices in this period)"
    )
    for title, rows, head in (
        ("revenue per model:", _rows(report.models), "model"),
        ("provider share per provider:", _rows(report.providers, names), "provider"),
        ("revenue per consumer segment (plan in force):", _rows(report.segments), "segment"),
    ):
        if rows:
            out += ["", title, table(rows, [head, "events", "old", "new", "change"])]
    changed = [i for i in report.invoices if i.delta != 0][:top]
    out += ["", f"accounts whose bill changes most (top {top}):"]
    if changed:
        out.append(
            table(
                [
                    [
                        names.get(i.account_id, i.account_id),
                        i.segment,
                        _money(i.old, i.currency),
                        _money(i.new, i.currency),
                        _signed(i.delta, i.currency),
                    ]
                    for i in changed
                ],
                ["account", "segment", "old", "new", "change"],
            )
        )
    else:
        out.append("  (no bill changes)")
    return "\n".join(out)
