"""``modelmarket publish`` and ``modelmarket models ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from modelmarket.billing.pricing import price_now_json
from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.registry import model_summary


@click.command()
@click.argument("package_dir", type=click.Path(path_type=Path))
@json_option
@domain_errors
def publish(package_dir: Path, as_json: bool) -> None:
    """Publish the model package in PACKAGE_DIR (a folder with modelmarket.yaml and its artifacts).

    Validates the manifest, hashes and stores every artifact, and records an immutable version. Publishing
    the same bytes again is a no-op; the same version with different bytes is refused. The `latest` alias
    follows the newest version.
    """
    result = platform().registry.publish(package_dir)
    v = result.version
    if as_json:
        echo_json({"created": result.created, **v.to_json()})
        return
    verb = "published" if result.created else "already published (unchanged)"
    size = sum(a.size_bytes for a in v.artifacts)
    click.echo(
        f"{verb}: {v.model_name} {v.version}  digest {v.digest[:16]}  {len(v.artifacts)} artifact(s), {size:,} bytes"
    )


@click.group()
def models() -> None:
    """Browse the catalogue and move aliases."""


@models.command("list")
@json_option
@domain_errors
def models_list(as_json: bool) -> None:
    """List published models with their latest version and price."""
    p = platform()
    cat = p.registry.catalogue()
    book, now = p.prices.book(), p.clock()
    docs = []
    for name in cat.names():
        entry = cat.get(name)
        manifest_price = entry.resolve(None).manifest.pricing.price_per_iu
        docs.append(model_summary(entry, price_now_json(book.in_force(name, now), manifest_price)))
    rows = [
        [
            d["name"],
            d["latest"],
            d["task"],
            d["runtime"],
            f"{_shown_price(d)} {d['pricing']['currency']}/{d['pricing']['unit']}"
            + ("" if d["price_now"]["factor"] == "1" else f" (x{d['price_now']['factor']})"),
        ]
        for d in docs
    ]
    if as_json:
        echo_json(docs)
    elif rows:
        click.echo(table(rows, ["MODEL", "LATEST", "TASK", "RUNTIME", "PRICE"]))
    else:
        click.echo("no models published yet (see `modelmarket publish --help`)")


def _shown_price(doc: dict[str, Any]) -> str:
    """The price in force; the manifest's own text (``0.0010``, as the provider wrote it) while no record applies."""
    now = doc["price_now"]
    return str(doc["pricing"]["price_per_iu"] if now["record"] == 0 else now["price_per_iu"])


@models.command("show")
@click.argument("ref")
@json_option
@domain_errors
def models_show(ref: str, as_json: bool) -> None:
    """Show one model version: REF is NAME, NAME@VERSION or NAME@ALIAS (default alias: latest)."""
    name, _, version = ref.partition("@")
    v = platform().registry.catalogue().resolve(name, version or None)
    if as_json:
        echo_json(v.to_json())
        return
    m = v.manifest
    click.echo(f"{m.name} {m.version}  ({m.task}, {m.modality}, runtime {m.runtime})")
    click.echo(f"  summary:  {m.card.summary}")
    click.echo(f"  license:  {m.license}")
    click.echo(f"  price:    {m.pricing.price_text} {m.pricing.currency} per IU ({m.pricing.unit.value})")
    click.echo(f"  digest:   {v.digest}")
    for t in m.inputs:
        click.echo(f"  input:    {t.name} {t.datatype} {t.shape}")
    for t in m.outputs:
        click.echo(f"  output:   {t.name} {t.datatype} {t.shape}")
    for metric in m.card.metrics:
        click.echo(f"  metric:   {metric.name} = {metric.value}" + (f" ({metric.dataset})" if metric.dataset else ""))
    click.echo(f"  artifacts: {len(v.artifacts)} file(s), {sum(a.size_bytes for a in v.artifacts):,} bytes")


@models.command("versions")
@click.argument("name")
@json_option
@domain_errors
def models_versions(name: str, as_json: bool) -> None:
    """List the versions of model NAME and the aliases pointing at them."""
    entry = platform().registry.catalogue().get(name)
    by_version: dict[str, list[str]] = {}
    for alias, version in entry.aliases.items():
        by_version.setdefault(version, []).append(alias)
    versions = entry.sorted_versions()
    if as_json:
        echo_json(
            [
                {
                    "version": v.version,
                    "digest": v.digest,
                    "created_at": v.created_at,
                    "aliases": sorted(by_version.get(v.version, [])),
                }
                for v in versions
            ]
        )
        return
    click.echo(
        table(
            [
                [v.version, v.digest[:16], v.created_at, ",".join(sorted(by_version.get(v.version, [])))]
                for v in versions
            ],
            ["VERSION", "DIGEST", "PUBLISHED", "ALIASES"],
        )
    )


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version")
@domain_errors
def models_alias(name: str, alias: str, version: str) -> None:
    """Point ALIAS of model NAME at VERSION (e.g. `models alias digits stable 1.0.0`)."""
    platform().registry.move_alias(name, alias, version)
    click.echo(f"{name}@{alias} -> {version}")
