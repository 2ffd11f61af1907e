"""``modelmarket usage``, ``invoice`` and ``statement``: read-side commands over metering and billing."""

from __future__ import annotations

import click

from modelmarket import billing
from modelmarket.billing.render import approx_text
from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table


@click.command()
@click.argument("account")
@click.option("--since", metavar="YYYY-MM-DD", help="First day to include (UTC).")
@click.option("--until", metavar="YYYY-MM-DD", help="Last day to include (UTC).")
@json_option
@domain_errors
def usage(account: str, since: str | None, until: str | None, as_json: bool) -> None:
    """Show ACCOUNT's usage: events, Inference Units and amount per model."""
    p = platform()
    acc = p.accounts.get(account)
    summary = p.usage.summary(acc.id, since, until)
    if as_json:
        echo_json({"account": acc.name, **summary.to_json()})
        return
    rows = [
        [
            m.model,
            m.unit_kind.value,
            str(m.events),
            f"{m.quantity_base} {m.unit_kind.base_unit}(s)",
            approx_text(m.iu_exact),
            f"{approx_text(m.amount_exact)} {m.currency}",
        ]
        for m in summary.models
    ]
    click.echo(f"usage of {acc.name}: {summary.total_events} event(s)")
    if rows:
        click.echo(table(rows, ["MODEL", "UNIT", "EVENTS", "QUANTITY", "IU", "AMOUNT (unrounded)"]))


@click.command()
@click.argument("account")
@click.option("--period", required=True, metavar="YYYY-MM", help="Calendar month (UTC) to invoice.")
@json_option
@domain_errors
def invoice(account: str, period: str, as_json: bool) -> None:
    """Build ACCOUNT's invoice for a month: one line per model, rounded once per line, Decimal totals."""
    p = platform()
    acc = p.accounts.get(account)
    invoices = p.billing.invoices(acc.id, billing.parse_period(period))
    if as_json:
        echo_json({"account": acc.name, "period": period, "invoices": [i.to_json() for i in invoices]})
        return
    if not invoices:
        click.echo(f"no billable usage for {acc.name} in {period}")
    for inv in invoices:
        click.echo(billing.render_invoice_text(inv, acc.name))


@click.command()
@click.argument("provider")
@click.option("--period", required=True, metavar="YYYY-MM", help="Calendar month (UTC).")
@json_option
@domain_errors
def statement(provider: str, period: str, as_json: bool) -> None:
    """Build PROVIDER's revenue statement for a month: gross, provider share and platform fee per model."""
    p = platform()
    acc = p.accounts.get(provider)
    statements = p.billing.statements(acc.id, billing.parse_period(period))
    if as_json:
        echo_json({"provider": acc.name, "period": period, "statements": [s.to_json() for s in statements]})
        return
    if not statements:
        click.echo(f"no revenue for {acc.name} in {period}")
    for st in statements:
        click.echo(billing.render_statement_text(st, acc.name))
