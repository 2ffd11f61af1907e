"""``modelmarket accounts ...`` and ``modelmarket keys ...``."""

from __future__ import annotations

import click

from modelmarket.accounts import ROLES
from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.core.errors import NotFound


@click.group()
def accounts() -> None:
    """Create and list accounts (consumers, providers, operators)."""


@accounts.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="consumer",
    show_default=True,
    help="consumer: calls models; provider: publishes them; operator: runs the platform.",
)
@json_option
@domain_errors
def accounts_create(name: str, role: str, as_json: bool) -> None:
    """Create the account NAME. A consumer is subscribed to MODELMARKET_DEFAULT_PLAN when that is set."""
    p = platform()
    plan = (p.settings.default_plan or None) if role == "consumer" else None
    if plan is not None:
        try:
            p.plans.plan(plan)
        except NotFound:
            raise click.ClickException(
                f"MODELMARKET_DEFAULT_PLAN names plan {plan!r}, which does not exist: apply a plans file that "
                "declares it (`modelmarket plans apply FILE`) or unset MODELMARKET_DEFAULT_PLAN; no account created"
            ) from None
    account = p.accounts.create(name, role)
    sub = p.plans.subscribe(account.id, plan) if plan is not None else None
    if as_json:
        echo_json(account.to_json() if sub is None else {**account.to_json(), "subscription": sub.to_json()})
    else:
        click.echo(f"created {account.role} account {account.name} ({account.id})")
        if sub is not None:
            click.echo(f"subscribed to plan {sub.plan_name} v{sub.plan_version} (MODELMARKET_DEFAULT_PLAN)")


@accounts.command("list")
@json_option
@domain_errors
def accounts_list(as_json: bool) -> None:
    """List accounts."""
    items = platform().accounts.list()
    if as_json:
        echo_json([a.to_json() for a in items])
    else:
        click.echo(table([[a.name, a.role, a.id, a.created_at] for a in items], ["NAME", "ROLE", "ID", "CREATED"]))


@click.group()
def keys() -> None:
    """Issue, list and revoke API keys."""


@keys.command("create")
@click.argument("account")
@json_option
@domain_errors
def keys_create(account: str, as_json: bool) -> None:
    """Issue a new API key for ACCOUNT. The key is printed once and stored only as a hash."""
    issued = platform().accounts.issue_key(account)
    if as_json:
        echo_json({"key_id": issued.key_id, "account": issued.account.name, "key": issued.secret})
    else:
        click.echo(issued.secret)
        click.echo(f"(key {issued.key_id} for {issued.account.name}; it will not be shown again)", err=True)


@keys.command("list")
@click.argument("account")
@json_option
@domain_errors
def keys_list(account: str, as_json: bool) -> None:
    """List ACCOUNT's API keys by id and prefix (the secrets are never stored)."""
    items = platform().accounts.keys(account)
    if as_json:
        echo_json([k.to_json() for k in items])
        return
    rows = [[k.id, k.prefix + "...", k.created_at, k.revoked_at or "active"] for k in items]
    click.echo(table(rows, ["KEY ID", "PREFIX", "CREATED", "REVOKED"]))


@keys.command("revoke")
@click.argument("key_id")
@json_option
@domain_errors
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke the API key KEY_ID at once (audited). The gateway refuses it within MODELMARKET_CACHE_REFRESH_S."""
    key = platform().accounts.revoke_key(key_id)
    if as_json:
        echo_json(key.to_json())
    else:
        click.echo(f"revoked key {key.id} ({key.prefix}...) at {key.revoked_at}")
