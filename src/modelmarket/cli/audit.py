"""``modelmarket audit ...``: verify and read the hash-chained audit log."""

from __future__ import annotations

import click

from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table


@click.group()
def audit() -> None:
    """Verify and read the audit log (every state change, hash-chained)."""


@audit.command("verify")
@json_option
@domain_errors
def audit_verify(as_json: bool) -> None:
    """Recompute the hash chain. Prints OK, or names the first broken record and exits with status 1."""
    result = platform().audit.verify()
    if as_json:
        echo_json(
            {
                "ok": result.ok,
                "records": result.records,
                "first_broken_seq": result.first_broken_seq,
                "reason": result.reason,
            }
        )
    elif result.ok:
        click.echo(f"OK: {result.records} audit record(s), chain intact")
    else:
        click.echo(f"BROKEN: {result.reason}", err=True)
    if not result.ok:
        raise SystemExit(1)


@audit.command("list")
@click.option("--limit", default=50, show_default=True, help="Most records to print.")
@click.option("--after", "after_seq", default=0, show_default=True, help="Print records after this sequence number.")
@json_option
@domain_errors
def audit_list(limit: int, after_seq: int, as_json: bool) -> None:
    """Print audit records in order."""
    records = platform().audit.list(limit, after_seq)
    if as_json:
        echo_json([r.to_json() for r in records])
        return
    click.echo(
        table(
            [[str(r.seq), r.occurred_at, r.actor, r.action, r.subject, r.hash[:12]] for r in records],
            ["SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT", "HASH"],
        )
    )
