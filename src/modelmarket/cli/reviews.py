"""``modelmarket reviews``: the publish gate's submissions, and the operator's decisions on them."""

from __future__ import annotations

from typing import Any

import click

from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.cli.gate_view import echo_stage, outcome_line, show_submission
from modelmarket.core.errors import NotFound
from modelmarket.governance.model import SUBMISSION_STATUSES, StageRecord

reason_option = click.option("--reason", required=True, help="Why (kept in the submission and the audit log).")
by_option = click.option(
    "--by",
    "by_name",
    metavar="OPERATOR",
    help="The operator account deciding (it may not be the model's provider); default: this machine's operator.",
)


@click.group()
def reviews() -> None:
    """Submissions to the publish gate: list them, show their stages, approve or reject those pending review."""


@reviews.command("list")
@click.option("--status", type=click.Choice(SUBMISSION_STATUSES), help="Only submissions in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@domain_errors
def reviews_list(status: str | None, limit: int, as_json: bool) -> None:
    """Submissions, newest first (`--status pending_review`: what waits for a decision)."""
    found = platform().gate.list((status,) if status else (), None, limit)
    if as_json:
        echo_json([s.to_json() for s in found])
        return
    if not found:
        click.echo("no submissions" + (f" {status}" if status else ""))
        return
    rows = [[s.ref, s.status, s.id, s.submitted_by, s.created_at[:19]] for s in found]
    click.echo(table(rows, ["model", "status", "submission", "submitted by", "created"]))


@reviews.command("show")
@click.argument("ref")
@click.option("--url", metavar="URL", help="Ask the platform at URL (GET /api/packages/{id}) instead.")
@click.option("--key", metavar="KEY", envvar="MODELMARKET_API_KEY", help="Your API key (with --url).")
@json_option
@domain_errors
def reviews_show(ref: str, url: str | None, key: str | None, as_json: bool) -> None:
    """Show a submission's stages: REF is NAME@VERSION (its newest submission) or a submission id (over HTTP:
    the id)."""
    if url is not None:
        from modelmarket.cli.remote import fetch

        doc = fetch(url, key, ref)
    else:
        doc = platform().gate.show(ref).to_json()
    if as_json:
        echo_json(doc)
    else:
        show_submission(doc)


def _operator_id(by_name: str | None) -> str | None:
    if by_name is None:
        return None
    try:
        return platform().accounts.get(by_name).id
    except NotFound:
        raise click.ClickException(f"--by: no account named {by_name!r}") from None


@reviews.command("approve")
@click.argument("ref")
@reason_option
@by_option
@json_option
@domain_errors
def reviews_approve(ref: str, reason: str, by_name: str | None, as_json: bool) -> None:
    """Approve the submission pending review (REF: NAME@VERSION or its id) and publish it. Audited."""

    def progress(stage: str, record: StageRecord | None) -> None:
        if record is not None and not as_json:
            echo_stage(record.to_json())

    sub = platform().gate.approve(
        ref, actor=by_name or "cli", reason=reason, by_account_id=_operator_id(by_name), progress=progress
    )
    _outcome(sub.to_json(), as_json)


@reviews.command("reject")
@click.argument("ref")
@reason_option
@by_option
@json_option
@domain_errors
def reviews_reject(ref: str, reason: str, by_name: str | None, as_json: bool) -> None:
    """Reject the submission pending review (REF: NAME@VERSION or its id). Audited; the version never reaches
    the catalogue, and the provider may submit it again."""
    sub = platform().gate.reject(ref, actor=by_name or "cli", reason=reason, by_account_id=_operator_id(by_name))
    _outcome(sub.to_json(), as_json)


def _outcome(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(doc)
    else:
        click.echo(outcome_line(doc))
    if doc["status"] == "failed":
        raise SystemExit(1)
