"""``modelmarket models card NAME[@VERSION|@ALIAS]``: a published version's model card, for the terminal or as a
file in another standard (see docs/model-cards.md)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from modelmarket.cli.common import domain_errors, platform
from modelmarket.core.errors import InvalidInput
from modelmarket.registry.card_export import card_json, card_text, cyclonedx_mlbom, hf_readme

FORMATS = ("text", "json", "hf", "cyclonedx")
FILE_MODE = 0o644


@click.command("card")
@click.argument("ref")
@click.option(
    "--format",
    "format_",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text: for the terminal; json: the full card with the manifest's facts and the publish gate's figures; "
    "hf: a Hugging Face model card README.md; cyclonedx: a CycloneDX 1.6 ML-BOM (JSON).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Write the card to FILE (replaced if it exists) instead of printing it.",
)
@domain_errors
def card_command(ref: str, format_: str, output: Path | None) -> None:
    """Show the model card of REF: NAME, NAME@VERSION or NAME@ALIAS (default alias: latest).

    The card holds the provider's answers to the Hugging Face card, the sections of "Model Cards for Model
    Reporting" and the EU AI Act's documentation items, with the manifest's facts (license, task, inputs and
    outputs, price, artifact hashes, lineage) and, for a version published through the gate, its measured figures.
    """
    name, _, version_ref = ref.partition("@")
    version = platform().registry.catalogue().resolve(name, version_ref or None)
    evaluation = version.evaluation
    if format_ == "json":
        text = json.dumps(card_json(version, evaluation), indent=2, ensure_ascii=False) + "\n"
    elif format_ == "hf":
        text = hf_readme(version, evaluation)
    elif format_ == "cyclonedx":
        text = cyclonedx_mlbom(version, evaluation)
    else:
        text = card_text(version, evaluation)
    if output is None:
        click.echo(text, nl=False)
        return
    _write(output, text)
    click.echo(f"wrote the {format_} card of {version.ref} to {output}")


def _write(path: Path, text: str) -> None:
    """Write atomically (a temporary file in the same folder, then renamed); never over a directory."""
    if path.is_dir():
        raise InvalidInput(f"--output: {path} is a directory: name a file, e.g. {path / 'README.md'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInput(f"--output: the folder {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise InvalidInput(f"--output: cannot write in {parent}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InvalidInput(f"--output: cannot write {path}: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
