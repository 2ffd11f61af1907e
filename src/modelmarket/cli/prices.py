"""``modelmarket prices ...``: operator list prices, dynamic pricing and the audited price history of a model."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import click

from modelmarket.billing.pricing import PriceBook, PriceService, parse_list_price, record_json
from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import parse_decimal


def _service() -> PriceService:
    p = platform()
    return PriceService(p.store, p.clock)


def _moment(text: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{field}: {text[:40]!r} is not an ISO 8601 time, e.g. 2026-03-01T00:00:00Z") from None
    if moment.utcoffset() is None:
        raise InvalidInput(f"{field}: {text[:40]!r} has no UTC offset; write e.g. 2026-03-01T00:00:00Z")
    return moment


@click.group()
def prices() -> None:
    """Set list prices and dynamic pricing per model; every change is a new, audited price record."""


@prices.command("set")
@click.argument("model")
@click.argument("price")
@click.option("--at", "at_text", metavar="ISO8601", help="When the price takes effect (default: now; never the past).")
@click.option("--reason", default="", help="Why, kept in the price history.")
@json_option
@domain_errors
def prices_set(model: str, price: str, at_text: str | None, reason: str, as_json: bool) -> None:
    """Set MODEL's list price per IU to PRICE (in its manifest's currency), instead of the manifest's price."""
    at = None if at_text is None else _moment(at_text, "--at")
    record = _service().set_list_price(model, parse_list_price(price), at, reason=reason)
    if as_json:
        echo_json(record_json(record))
    else:
        click.echo(f"list price of {model}: {price} per IU from {record.effective_at} (record {record.seq})")


def _history_rows(model: str, book: PriceBook, manifest_price: Decimal, currency: str) -> list[dict[str, Any]]:
    """Each record (by seq) with the price per IU it brings into force, for the latest version's manifest price."""
    return [
        {**record_json(record), "price_per_iu": format(state.unit_price(manifest_price), "f"), "currency": currency}
        for record, state in sorted(book.timeline(model), key=lambda x: x[0].seq)
    ]


@prices.command("history")
@click.argument("model")
@json_option
@domain_errors
def prices_history(model: str, as_json: bool) -> None:
    """Show MODEL's price records by seq, each with the price per IU it brings into force (latest version)."""
    p = platform()
    service = PriceService(p.store, p.clock)
    service.history(model)  # NotFound names an unknown model before the catalogue is read
    latest = p.registry.catalogue().resolve(model)
    pricing = latest.manifest.pricing
    rows = _history_rows(model, service.book(), pricing.price_per_iu, pricing.currency)
    if as_json:
        echo_json(
            {"model": model, "version": latest.version, "manifest_price_per_iu": pricing.price_text, "records": rows}
        )
        return
    click.echo(f"{model} {latest.version}: manifest price {pricing.price_text} {pricing.currency} per IU")
    if not rows:
        click.echo("no price records: the manifest's price is in force")
        return
    cells = [
        [
            str(r["seq"]),
            r["effective_at"],
            r["source"],
            r["list_price"] if r["source"] == "list" else "",
            r["factor"] if r["source"] == "dynamic" else "",
            f"{r['price_per_iu']} {r['currency']}",
            r["reason"],
        ]
        for r in rows
    ]
    click.echo(table(cells, ["SEQ", "EFFECTIVE", "SOURCE", "LIST PRICE", "FACTOR", "PRICE/IU", "REASON"]))


@prices.command("dynamic")
@click.argument("model")
@click.option("--min", "min_text", metavar="FACTOR", help="Lowest factor, above 0 and at most 1 (e.g. 0.8).")
@click.option("--max", "max_text", metavar="FACTOR", help="Highest factor, from 1 to 10 (e.g. 1.5).")
@click.option("--off", is_flag=True, help="Turn dynamic pricing off: the factor returns to 1 from now on.")
@json_option
@domain_errors
def prices_dynamic(model: str, min_text: str | None, max_text: str | None, off: bool, as_json: bool) -> None:
    """Turn dynamic pricing of MODEL on within [--min, --max] (factors recomputed by `prices recompute`), or --off."""
    if off and min_text is None and max_text is None:
        config = _service().disable_dynamic(model)
    elif not off and min_text is not None and max_text is not None:
        low, high = parse_decimal(min_text, "--min"), parse_decimal(max_text, "--max")
        config = _service().enable_dynamic(model, low, high)
    else:
        raise click.UsageError("give either both --min and --max, or --off")
    doc = {
        "model": config.model_name,
        "enabled": config.enabled,
        "min_factor": format(config.min_factor, "f"),
        "max_factor": format(config.max_factor, "f"),
        "updated_at": config.updated_at,
    }
    if as_json:
        echo_json(doc)
    elif config.enabled:
        click.echo(f"dynamic pricing of {model}: on, factor within [{doc['min_factor']}, {doc['max_factor']}]")
    else:
        click.echo(f"dynamic pricing of {model}: off (factor 1)")


@prices.command("recompute")
@json_option
@domain_errors
def prices_recompute(as_json: bool) -> None:
    """Recompute the dynamic factor of every model with dynamic pricing on; record only the factors that change."""
    records = _service().recompute(actor="cli")
    if as_json:
        echo_json([record_json(r) for r in records])
        return
    if not records:
        click.echo("no factor changed")
    for r in records:
        click.echo(f"{r.model_name}: factor {r.factor} from {r.effective_at} (record {r.seq}; {r.reason})")
