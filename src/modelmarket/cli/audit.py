"""``modelmarket audit ...``: verify and read the hash-chained audit log, and prove what the verifiable trees hold."""

from __future__ import annotations

from pathlib import Path

import click

from modelmarket.audit.checkpoints import (
    PUBLIC_KEY_MAX_BYTES,
    Checkpoint,
    CheckpointKey,
    load_public_key,
    public_key_pem,
)
from modelmarket.audit.proofs import PROOF_MAX_BYTES, check_proof, parse_checkpoint, parse_proof
from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.core.errors import InvalidInput
from modelmarket.settings import Settings


@click.group()
def audit() -> None:
    """Verify and read the audit log (every state change, hash-chained) and prove records and usage events."""


@audit.command("verify")
@json_option
@domain_errors
def audit_verify(as_json: bool) -> None:
    """Recompute the hash chain, and both verifiable trees (audit records, usage events) against their rows and
    signed checkpoints. Prints OK, or names what broke and exits with status 1."""
    plat = platform()
    result = plat.audit.verify()
    reports = plat.audit.verify_trees()
    ok = result.ok and all(r.ok for r in reports)
    if as_json:
        echo_json(
            {
                "ok": ok,
                "records": result.records,
                "first_broken_seq": result.first_broken_seq,
                "reason": result.reason,
                "trees": [r.to_json() for r in reports],
            }
        )
    else:
        if result.ok:
            click.echo(f"OK: {result.records} audit record(s), chain intact")
        else:
            click.echo(f"BROKEN: {result.reason}", err=True)
        for report in reports:
            if report.ok:
                click.echo(f"OK: {report.summary()}")
            else:
                click.echo(f"BROKEN: {report.summary()}", err=True)
                for problem in report.problems:
                    click.echo(f"  {problem}", err=True)
    if not ok:
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


@audit.command("public-key")
@domain_errors
def audit_public_key() -> None:
    """Print the Ed25519 public key (PEM) that signs the checkpoints; `check-proof --public-key` reads it."""
    click.echo(public_key_pem(CheckpointKey(Settings().keys_dir).public_key(create=True)), nl=False)


_SINCE = click.option(
    "--since",
    "since_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An older checkpoint of the same tree, kept from before: a proof document, or its checkpoint object.",
)


@audit.command("prove")
@click.argument("ref", metavar="EVENT_ID")
@_SINCE
@domain_errors
def audit_prove(ref: str, since_file: Path | None) -> None:
    """Print the inclusion proof of a usage event (its id: a billed answer's x-request-id) or of an audit record
    (audit:SEQ), with the signed checkpoint it leads to, as JSON. With --since, the proof also carries the
    consistency proof that this checkpoint extends the older one (the log was only appended to in between)."""
    echo_json(platform().audit.prove(ref, _since(since_file)).to_json())


@audit.command("check-proof")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The PEM public key to check the signature with (default: this home's key).",
)
@_SINCE
@domain_errors
def audit_check_proof(file: Path, public_key_file: Path | None, since_file: Path | None) -> None:
    """Check a proof printed by `audit prove` offline (no database): its signature, leaf hash and audit path,
    and, with --since (or when it carries one), that its checkpoint extends an older one. Prints "valid: ..." or
    names the step that failed and exits with status 1. FILE may be - (stdin)."""
    proof = parse_proof(_read_bounded(file, PROOF_MAX_BYTES, "the proof"))
    if public_key_file is not None:
        key = load_public_key(
            _read_bounded(public_key_file, PUBLIC_KEY_MAX_BYTES, "the public key"), str(public_key_file)
        )
    else:
        key = CheckpointKey(Settings().keys_dir).public_key(create=False)
    result = check_proof(proof, key, _since(since_file))
    if not result.ok:
        click.echo(f"INVALID: {result.message}", err=True)
        raise SystemExit(1)
    click.echo(result.message)


def _since(path: Path | None) -> Checkpoint | None:
    return None if path is None else parse_checkpoint(_read_bounded(path, PROOF_MAX_BYTES, "the older checkpoint"))


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        with click.open_file(str(path), "rb") as fh:  # "-" is stdin
            raw: bytes = fh.read(limit + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} ({path}): {exc.strerror}") from None
    if len(raw) > limit:
        raise InvalidInput(f"{what} ({path}) is over {limit} bytes")
    return raw
