"""The catalogue (``/``) and a model's page (``/models/{name}``): public, like ``GET /api/models``.

The catalogue is searched by the same code as the API (``registry/search.py``: ``parse_search``, ``listings``,
``search``) over the gateway's catalogue snapshot, with the prices in force from the gateway's price book and the
measured figures (latency, calls) read at most once per ``MODELMARKET_CACHE_REFRESH_S``; each card is the one
list shape (``registry.views.model_summary``). An htmx request (live search) gets only the results.

A model's page shows everyone what is public anyway: the card, the versions, the prices and the publish gate's
figures kept on the version (``VersionRecord.evaluation``: the smoke test, benchmark and bias figures, as
``GET /api/models`` and the model card show them). The gate's submission itself (its id and every stage's
summary) is shown only to the model's provider and to operators, as the API shows a submission only to its owner.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response

from modelmarket.accounts import Account
from modelmarket.billing.pricing import PriceBook
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.dashboard.web import DashboardContext, Page, View
from modelmarket.gateway.api import MeasuredCache, measured_loader, price_now, prices_in_force
from modelmarket.governance.model import Submission
from modelmarket.metering.units import UnitKind
from modelmarket.registry.card_export import card_sections
from modelmarket.registry.card_figures import benchmark_lines, bias_lines, gate_group, smoke_test_line
from modelmarket.registry.catalogue import Catalogue, ModelEntry, VersionRecord
from modelmarket.registry.protocols import PROTOCOLS
from modelmarket.registry.search import (
    FILTERS,
    MODALITIES,
    SORTS,
    SearchTexts,
    encode_cursor,
    listings,
    measured_json,
    parse_search,
    search,
)
from modelmarket.registry.views import model_summary

PRICE_HISTORY_ROWS_MAX = 50
"""Price records shown on a model's page, newest first."""
VERSION_REF_MAX_CHARS = 100
IU_WORDS = {
    UnitKind.IMAGE.value: "image",
    UnitKind.TOKENS_1K.value: "1,000 tokens",
    UnitKind.AUDIO_MINUTE.value: "audio minute",
    UnitKind.REQUEST.value: "request",
}
"""What one Inference Unit is, in words, per unit kind."""
FORM_FIELDS = ("q", *FILTERS, "max_price", "sort", "order")


class Options:
    """The filter choices the catalogue offers (tasks, runtimes, licenses in use), kept per catalogue snapshot."""

    def __init__(self) -> None:
        self._catalogue: Catalogue | None = None
        self.value: dict[str, list[str]] = {}

    def of(self, catalogue: Catalogue) -> dict[str, list[str]]:
        if catalogue is not self._catalogue:
            latest = [catalogue.get(name).resolve(None).manifest for name in catalogue.names()]
            self.value = {
                "task": sorted({m.task for m in latest}),
                "runtime": sorted({m.runtime for m in latest}),
                "license": sorted({m.license for m in latest}),
                "modality": list(MODALITIES),
                "protocol": list(PROTOCOLS),
                "sort": list(SORTS),
            }
            self._catalogue = catalogue
        return self.value


def price_book(ctx: DashboardContext) -> PriceBook | None:
    economy = ctx.parts.state.economy
    return None if economy is None else economy.prices


def catalogue_pages(ctx: DashboardContext) -> list[Page]:
    measured = MeasuredCache(measured_loader(ctx.platform.usage), ctx.platform.settings.cache_refresh_s)
    texts = SearchTexts()
    options = Options()

    async def catalogue(view: View) -> Response:
        params = view.request.query_params
        form = {name: params.get(name, "")[:200] for name in FORM_FIELDS}
        error = None
        try:
            query = parse_search(params)
        except InvalidInput as exc:
            error, query = exc.message, parse_search({})
        cat, now = ctx.parts.state.catalogue, ctx.platform.clock()
        book = price_book(ctx)
        figures = await measured.get(cat, now)
        found = search(listings(cat, prices_in_force(book, cat, now), figures), query, texts)
        cards = [
            model_summary(x.entry, price_now(book, x.entry, now), measured_json(x.measured)) for x in found.listings
        ]
        next_url = None
        if found.next_offset is not None and error is None:
            kept = {k: v for k, v in form.items() if v}
            next_url = "/?" + urlencode({**kept, "cursor": encode_cursor(found.next_offset, query)})
        return view.render(
            "_results.html" if view.is_htmx else "catalogue.html",
            status_code=400 if error else 200,
            form=form,
            options=options.of(cat),
            cards=cards,
            total=found.total,
            next_url=next_url,
            error=error,
            iu_words=IU_WORDS,
        )

    async def model(view: View) -> Response:
        entry = ctx.parts.state.catalogue.get(view.request.path_params["name"])
        ref = view.request.query_params.get("version") or None
        if ref is not None and len(ref) > VERSION_REF_MAX_CHARS:
            raise InvalidInput(f"version: longer than {VERSION_REF_MAX_CHARS} characters")
        version = entry.resolve(ref)
        now = ctx.platform.clock()
        book = price_book(ctx)
        submission = await _gate_stages(ctx, version, view.account)
        bakeoffs = await asyncio.to_thread(ctx.platform.bakeoffs.of_model, entry.name)
        return view.render(
            "model.html",
            summary=model_summary(entry, price_now(book, entry, now)),
            version=version,
            manifest=version.manifest,
            sections=_sections(version),
            versions=_versions(entry),
            history=_history(book, entry),
            gate={
                "smoke_test": smoke_test_line(version.evaluation),
                "benchmark": benchmark_lines(gate_group(version.evaluation, "benchmark")),
                "bias": bias_lines(gate_group(version.evaluation, "bias")),
            },
            submission=submission,
            bakeoffs=bakeoffs,
            iu_words=IU_WORDS,
        )

    return [
        Page("/", catalogue, label="Catalogue", roles=None),
        Page("/models/{name}", model, roles=None),
    ]


def _sections(version: VersionRecord) -> list[tuple[str, list[tuple[str, str | list[str]]]]]:
    """The model card's sections with only their filled entries (an empty section: an empty list)."""
    out = []
    for title, entries in card_sections(version, version.evaluation):
        filled = [(label, value) for label, value in entries if (value.strip() if isinstance(value, str) else value)]
        out.append((title, filled))
    return out


def _versions(entry: ModelEntry) -> list[dict[str, Any]]:
    """Newest first, each with the aliases that point at it."""
    aliases: dict[str, list[str]] = {}
    for alias, target in sorted(entry.aliases.items()):
        aliases.setdefault(target, []).append(alias)
    return [
        {
            "version": v.version,
            "created_at": v.created_at,
            "digest": v.digest,
            "aliases": aliases.get(v.version, []),
            "gated": v.evaluation is not None,
        }
        for v in reversed(entry.sorted_versions())
    ]


def _history(book: PriceBook | None, entry: ModelEntry) -> list[dict[str, Any]]:
    """The model's price records, newest first, each with the price per IU in force from it on."""
    if book is None:
        return []
    manifest_price = entry.resolve(None).manifest.pricing.price_per_iu
    rows = [
        {
            "effective_at": record.effective_at,
            "source": record.source,
            "list_price": None if record.list_price is None else format(record.list_price, "f"),
            "factor": format(record.factor, "f"),
            "price_per_iu": format(state.unit_price(manifest_price), "f"),
            "reason": record.reason,
        }
        for record, state in book.timeline(entry.name)
    ]
    return rows[::-1][:PRICE_HISTORY_ROWS_MAX]


def _submission_reader(version: VersionRecord, viewer: Account | None) -> tuple[bool, str | None]:
    """Whether ``viewer`` may see the gate's submission of ``version``, and as whom to read it (None: any
    submission, for an operator; an account id: only that provider's own, as the API reads it)."""
    if viewer is None:
        return False, None
    if viewer.role == "operator":
        return True, None
    if viewer.id == version.provider_account_id:
        return True, viewer.id
    return False, None


async def _gate_stages(ctx: DashboardContext, version: VersionRecord, viewer: Account | None) -> Submission | None:
    """The publish gate's submission of ``version`` with its stages, when it went through the gate and ``viewer``
    is the model's provider or an operator; None for anyone else."""
    allowed, owner_id = _submission_reader(version, viewer)
    submission_id = (version.evaluation or {}).get("submission")
    if not allowed or not isinstance(submission_id, str) or not submission_id:
        return None
    try:
        return await asyncio.to_thread(ctx.platform.gate.show, submission_id, owner_id)
    except NotFound:
        return None
