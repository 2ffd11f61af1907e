"""Entry point of the ``modelmarket`` command."""

from __future__ import annotations

import click

from modelmarket import __version__
from modelmarket.cli.accounts import accounts, keys
from modelmarket.cli.audit import audit
from modelmarket.cli.cards import card_command
from modelmarket.cli.cluster import cluster
from modelmarket.cli.economy import (
    billing_group,
    invoice,
    invoices,
    ledger,
    limits,
    payouts,
    plans,
    statement,
    subscribe,
)
from modelmarket.cli.lab import lab
from modelmarket.cli.lineage import lineage
from modelmarket.cli.meter import meter
from modelmarket.cli.prices import prices
from modelmarket.cli.privacy import privacy
from modelmarket.cli.registry import models, publish
from modelmarket.cli.reviews import reviews
from modelmarket.cli.routing import providers, routes
from modelmarket.cli.runners import runners
from modelmarket.cli.serve import demo, runner, serve
from modelmarket.cli.usage import usage


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelmarket")
def cli() -> None:
    """Model Marketplace OS: publish models, serve them behind one gateway, meter, bill and audit every call.

    State lives in MODELMARKET_HOME (default ./.modelmarket); the store is SQLite there unless
    MODELMARKET_DATABASE_URL names a PostgreSQL database.
    """


for command in (publish, models, accounts, keys, usage, invoice, statement, audit, serve, demo, runner, meter):
    cli.add_command(command)
cli.add_command(prices)
cli.add_command(privacy)
cli.add_command(lineage)
for command in (plans, subscribe, limits, invoices, ledger, payouts, billing_group):
    cli.add_command(command)
for command in (providers, routes, runners, reviews):
    cli.add_command(command)
models.add_command(card_command)
cli.add_command(cluster)
cli.add_command(lab)


def main() -> None:
    cli(prog_name="modelmarket")


if __name__ == "__main__":
    main()
