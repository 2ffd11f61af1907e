"""``modelmarket publish`` and ``modelmarket models ...``."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from modelmarket.billing.pricing import price_now_json
from modelmarket.bootstrap import Platform
from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.cli.gate_view import echo_stage, outcome_line
from modelmarket.core.errors import InvalidInput
from modelmarket.governance.model import StageRecord
from modelmarket.registry import model_summary
from modelmarket.registry.protocols import PROTOCOLS
from modelmarket.registry.search import (
    LIMIT_DEFAULT,
    LIMIT_MAX,
    MEASURED_DAYS,
    MODALITIES,
    ORDERS,
    SORTS,
    SearchQuery,
    encode_cursor,
    listings,
    measured_json,
    parse_search,
    read_measured,
    search,
)


@click.command()
@click.argument("package_dir", type=click.Path(path_type=Path))
@click.option("--url", metavar="URL", help="Publish to the platform at URL over HTTP (POST /api/packages).")
@click.option("--key", metavar="KEY", envvar="MODELMARKET_API_KEY", help="The provider's API key (with --url).")
@click.option("--no-wait", is_flag=True, help="With --url: return once the package is accepted.")
@json_option
@domain_errors
def publish(package_dir: Path, url: str | None, key: str | None, no_wait: bool, as_json: bool) -> None:
    """Publish the model package in PACKAGE_DIR (a folder with modelmarket.yaml and its artifacts) through the
    publish gate.

    The gate validates the manifest and stores every artifact, scans them, runs the model in its sandbox with the
    manifest's examples, benchmarks it, evaluates its bias when it declares an evaluation set, then waits for an
    operator's review (or approves it, when the gate's policy says `review: auto`) and publishes an immutable
    version. Each stage is printed as it ends. Publishing the same bytes again is a no-op; the same version with
    different bytes is refused. The `latest` alias follows the newest version.

    With --url and --key (a provider's key) the package is uploaded and the gate runs on that platform; the stages
    are followed until a decision is due. Exit status 1 when a stage fails or the submission is rejected.
    """
    if url is not None:
        from modelmarket.cli.remote import publish_remote

        doc = publish_remote(url, key, package_dir, wait=not no_wait)
    else:
        gate = platform().gate

        def progress(stage: str, record: StageRecord | None) -> None:
            if record is not None and not as_json:
                echo_stage(record.to_json())

        sub = gate.submit(package_dir, actor="cli", progress=progress)
        unchanged = sub.status == "published"  # these bytes were published before: nothing ran again
        if sub.status == "running":
            sub = gate.run(sub.id, progress)
        doc = {**sub.to_json(), "created": not unchanged}
    if as_json:
        echo_json(doc)
    elif doc.get("created") is False:
        click.echo(f"already published (unchanged): {doc['model']} {doc['version']}  digest {doc['digest'][:16]}")
    else:
        click.echo(outcome_line(doc))
    if doc["status"] in ("failed", "rejected"):
        raise SystemExit(1)


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


@models.command("search")
@click.argument("query", required=False, default="")
@click.option("--task", metavar="TASK", help="Only models for this task (e.g. image-classification).")
@click.option("--modality", type=click.Choice(MODALITIES), help="Only models taking this kind of input.")
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    help="Only models speaking this protocol: every model speaks oip; openai for text generation, embeddings, "
    "OpenAI-compatible upstreams and speech to text.",
)
@click.option("--runtime", metavar="RUNTIME", help="Only models served by this runtime (e.g. onnx).")
@click.option("--license", "license_", metavar="LICENSE", help="Only models under this license (any case).")
@click.option("--provider", metavar="NAME|ID", help="Only models of this provider account (its name or id).")
@click.option(
    "--max-price",
    metavar="PRICE",
    help="Only models whose price per IU in force is at most PRICE (a decimal, e.g. 0.005; split token prices: "
    "the input price; tiers: the first tier's).",
)
@click.option(
    "--sort",
    type=click.Choice(SORTS),
    help="relevance (the default with QUERY: name matches first), name (the default without), price (lowest "
    f"first), latency (measured p50, fastest first, unmeasured last), popularity (most calls in {MEASURED_DAYS} "
    "days first).",
)
@click.option("--order", type=click.Choice(ORDERS), help="Reverse a sort's default direction with the other one.")
@click.option(
    "--limit",
    type=int,
    default=LIMIT_DEFAULT,
    show_default=True,
    help=f"Models shown (1 to {LIMIT_MAX}); the JSON's next_cursor continues with --cursor.",
)
@click.option("--cursor", metavar="CURSOR", help="Continue a search from the next_cursor of its previous page.")
@json_option
@domain_errors
def models_search(query: str, license_: str | None, limit: int, as_json: bool, **options: str | None) -> None:
    """Search the catalogue: QUERY words (any case) must all occur in a model's name, tags (task, modality,
    runtime, license) or card; models whose name matches come first.

    Shows each model's price per IU in force, its p50 latency and its calls over the last 7 days, measured on
    served calls (as metered so far). Same search as `GET /api/models`.
    """
    params = {k: v for k, v in options.items() if v is not None}
    params.update({"q": query, "limit": str(limit), **({"license": license_} if license_ else {})})
    try:
        wanted = parse_search(params)
    except InvalidInput as exc:  # name the option as typed: --max-price, not max_price
        field, _, problem = exc.message.partition(": ")
        shown = ", ".join("QUERY" if f == "q" else "--" + f.replace("_", "-") for f in field.split(", "))
        raise click.UsageError(f"{shown}: {problem}") from None
    doc = _search(platform(), wanted)
    if as_json:
        echo_json(doc)
    elif doc["models"]:
        _print_page(doc, wanted.offset)
    else:
        click.echo("no models match" if doc["total"] == 0 else f"no models on this page ({doc['total']} match)")


def _search(p: Platform, wanted: SearchQuery) -> dict[str, Any]:
    """The page ``GET /api/models`` would answer, read from the store as it is now (the figures as metered)."""
    cat, book, now = p.registry.catalogue(), p.prices.book(), p.clock()
    with p.store.read() as uow:
        figures = read_measured(uow.usage, cat.names(), now)
    manifest_price = {name: cat.get(name).resolve(None).manifest.pricing.price_per_iu for name in cat.names()}
    in_force: dict[str, Decimal] = {n: book.in_force(n, now).unit_price(m) for n, m in manifest_price.items()}
    page = search(listings(cat, in_force, figures), wanted)
    docs = [
        model_summary(
            x.entry, price_now_json(book.in_force(x.name, now), manifest_price[x.name]), measured_json(x.measured)
        )
        for x in page.listings
    ]
    cursor = None if page.next_offset is None else encode_cursor(page.next_offset, wanted)
    return {"models": docs, "total": page.total, "next_cursor": cursor}


def _print_page(doc: dict[str, Any], offset: int) -> None:
    calls_key = f"calls_{MEASURED_DAYS}d"
    rows = [
        [
            d["name"],
            d["task"],
            f"{_shown_price(d)} {d['pricing']['currency']}",
            d["pricing"]["unit"],
            d["measured"]["latency_ms_p50"] or "-",
            str(d["measured"][calls_key]),
        ]
        for d in doc["models"]
    ]
    click.echo(table(rows, ["MODEL", "TASK", "PRICE", "UNIT", "P50 MS", f"CALLS {MEASURED_DAYS}D"]))
    shown = f"{offset + 1}-{offset + len(rows)} of {doc['total']} models"
    click.echo(shown + (f" (next page: --cursor {doc['next_cursor']})" if doc["next_cursor"] else ""))


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
