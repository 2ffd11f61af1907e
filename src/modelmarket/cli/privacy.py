"""``modelmarket privacy ...``: per-key redaction policies and the accounts' opt-in to keep their calls.

Thin over ``PrivacyService``; every change is audited. Nothing here prints a key's secret or a call's raw text:
kept calls are stored redacted of every entity.
"""

from __future__ import annotations

import click

from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.core.errors import InvalidInput
from modelmarket.core.pii import PII_ENTITIES
from modelmarket.privacy.service import CAPTURED_LIST_MAX


@click.group()
def privacy() -> None:
    """Redaction policies per API key (on top of a model's `redact:`) and capture of an account's calls."""


@privacy.command("key")
@click.argument("key_id")
@click.option(
    "--redact",
    "entities",
    default=None,
    metavar="ENTITIES",
    help=f"Comma-separated entities to replace in every call made with the key: {', '.join(PII_ENTITIES)}.",
)
@click.option("--clear", is_flag=True, help="Remove the key's policy (the model's own `redact:` still applies).")
@click.option("--account", default=None, metavar="NAME", help="Act for account NAME: the key must be one of its own.")
@json_option
@domain_errors
def privacy_key(key_id: str, entities: str | None, clear: bool, account: str | None, as_json: bool) -> None:
    """Set (--redact) or remove (--clear) the redaction policy of API key KEY_ID.

    The gateway applies a change within MODELMARKET_CACHE_REFRESH_S.
    """
    if clear == (entities is not None):
        raise InvalidInput("give either --redact ENTITIES or --clear")
    service = platform().privacy
    if clear:
        removed = service.clear_key_policy(key_id, account=account)
        if as_json:
            echo_json({"key_id": key_id, "cleared": removed})
        else:
            click.echo(f"key {key_id}: policy removed" if removed else f"key {key_id}: had no policy")
        return
    names = [n.strip() for n in (entities or "").split(",") if n.strip()]
    policy = service.set_key_policy(key_id, names, account=account)
    if as_json:
        echo_json(policy.to_json())
    else:
        click.echo(f"key {policy.key_id}: redacts {', '.join(policy.entities)}")


@privacy.command("show")
@click.option("--account", default=None, metavar="NAME", help="Only the keys of account NAME.")
@json_option
@domain_errors
def privacy_show(account: str | None, as_json: bool) -> None:
    """List the key policies and the accounts that keep their calls."""
    service = platform().privacy
    policies = service.key_policies(account)
    capturing = service.capturing()
    if as_json:
        echo_json({"keys": [p.to_json() for p in policies], "capture": capturing})
        return
    if policies:
        rows = [[p.key_id, p.account_id, ",".join(p.entities), p.updated_at] for p in policies]
        click.echo(table(rows, ["KEY", "ACCOUNT", "REDACT", "UPDATED"]))
    else:
        click.echo("no key policies (set one with `modelmarket privacy key KEY_ID --redact EMAIL_ADDRESS,...`)")
    click.echo(f"accounts keeping their calls: {', '.join(capturing) if capturing else 'none'}")


@privacy.command("capture")
@click.argument("account")
@click.option("--on/--off", "on", required=True, help="Keep the account's calls (redacted), or stop and delete them.")
@domain_errors
def privacy_capture(account: str, on: bool) -> None:
    """Opt ACCOUNT in to keeping its calls' inputs and outputs (redacted of every entity, bounded), or out.

    Opting out deletes what was kept. Off by default: nothing is kept.
    """
    changed = platform().privacy.set_capture(account, on)
    state = "kept (redacted)" if on else "not kept"
    click.echo(f"account {account}: calls {state}" + ("" if changed else " (unchanged)"))


@privacy.command("captured")
@click.argument("account")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, CAPTURED_LIST_MAX))
@json_option
@domain_errors
def privacy_captured(account: str, limit: int, as_json: bool) -> None:
    """Show ACCOUNT's kept calls, newest first (already redacted)."""
    calls = platform().privacy.captured(account, limit)
    if as_json:
        echo_json([c.to_json() for c in calls])
        return
    if not calls:
        click.echo(f"no calls kept for {account} (opt in with `modelmarket privacy capture {account} --on`)")
        return
    for c in calls:
        click.echo(f"{c.created_at}  {c.id}  {c.model}@{c.version}")
        click.echo(f"  in:  {c.input_text}")
        click.echo(f"  out: {c.output_text}")
