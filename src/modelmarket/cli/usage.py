"""``modelmarket usage``: what an account has used, from the exact metering aggregates (list amounts, unrounded)."""

from __future__ import annotations

import click

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
