"""The catalogue search, pure (``registry/search.py``): matching, ranking, each filter, each sort, pages, the
parameters refused, the protocol rule, and the gateway's cache of measured figures."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.gateway.api import MeasuredCache
from modelmarket.registry.catalogue import Catalogue, ModelEntry, VersionRecord
from modelmarket.registry.manifest import parse_manifest
from modelmarket.registry.protocols import protocols_of, speaks_openai
from modelmarket.registry.search import (
    LIMIT_MAX,
    Listing,
    SearchQuery,
    SearchTexts,
    decode_cursor,
    encode_cursor,
    listings,
    measured_json,
    measured_window,
    parse_search,
    search,
)
from modelmarket.registry.views import model_summary, tags_of

_ids = itertools.count(1)


@dataclass(frozen=True)
class Figures:
    calls: int
    latency_ms_p50: Decimal | None
    latency_ms_p95: Decimal | None = None


def entry(
    name: str,
    *,
    task: str = "image-classification",
    modality: str = "image",
    runtime: str = "onnx",
    license: str = "MIT",
    provider: str = "acme",
    provider_id: str = "acc_acme",
    price: str = "0.0010",
    unit: str = "image",
    summary: str = "a model",
    description: str | None = None,
    pricing: dict[str, Any] | None = None,
) -> ModelEntry:
    datatype = "BYTES" if unit in ("tokens_1k", "audio_minute") else "FP32"
    doc = {
        "name": name,
        "version": "1.0.0",
        "task": task,
        "modality": modality,
        "runtime": runtime,
        "provider": provider,
        "license": license,
        "artifacts": [{"path": "a"}],
        "inputs": [{"name": "x", "datatype": datatype, "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
        "pricing": pricing or {"unit": unit, "price_per_iu": price, "currency": "USD"},
        "card": {"summary": summary, **({"description": description} if description else {})},
    }
    manifest = parse_manifest(doc)
    record = VersionRecord(f"ver_{next(_ids)}", name, "1.0.0", "d" * 64, manifest, provider_id, (), "2026-01-01")
    return ModelEntry(name, provider_id, versions={"1.0.0": record}, aliases={"latest": "1.0.0"})


def catalogue() -> Catalogue:
    models = [
        entry("digits", summary="Handwritten digit classifier", description="Trained on 8x8 scans.", price="0.0010"),
        entry("digit-embedder", task="feature-extraction", modality="text", runtime="sentence-embeddings",
              summary="Embeds text", price="0.0001", unit="tokens_1k", license="Apache-2.0", provider="lexico",
              provider_id="acc_lexico"),
        entry("sentiment", task="text-classification", modality="text", runtime="vader", unit="tokens_1k",
              summary="Positive or negative", description="Not for digit recognition.", price="0.0200"),
        entry("speech-to-text", task="automatic-speech-recognition", modality="audio", runtime="pocketsphinx",
              unit="audio_minute", price="0.0060", license="BSD-2-Clause", summary="English speech to text",
              provider="voices", provider_id="acc_voices"),
        entry("chat-small", task="text-generation", modality="text", runtime="llama-cpp", license="apache-2.0",
              summary="A small chat model that writes text", provider="lexico", provider_id="acc_lexico",
              pricing={"unit": "tokens_1k", "currency": "USD", "input_price_per_iu": "0.0002",
                       "output_price_per_iu": "0.0008"}),
        entry("mnist-cnn", summary="Another classifier of handwritten digits", price="0.0010"),
    ]  # fmt: skip
    return Catalogue(models={e.name: e for e in models})


FIGURES = {
    "digits": Figures(50, Decimal("12.5"), Decimal("40")),
    "sentiment": Figures(7, Decimal("3.1"), Decimal("9")),
    "speech-to-text": Figures(120, None),  # calls counted, no latency sampled
    "mnist-cnn": Figures(7, Decimal("30"), Decimal("31")),
}


def run(params: dict[str, str] | None = None, prices: dict[str, Decimal] | None = None) -> list[str]:
    page = search(listings(catalogue(), prices, FIGURES), parse_search(params or {}))
    return [x.name for x in page.listings]


# -- protocols, tags, the one shape ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "task", "openai"),
    [
        ("onnx", "image-classification", False),
        ("vader", "text-classification", False),
        ("llama-cpp", "text-generation", True),
        ("sentence-embeddings", "feature-extraction", True),
        ("upstream-openai", "text-generation", True),
        ("pocketsphinx", "automatic-speech-recognition", True),
    ],
)
def test_every_model_speaks_oip_and_some_speak_openai(runtime: str, task: str, openai: bool) -> None:
    manifest = entry("m", runtime=runtime, task=task).resolve(None).manifest
    assert speaks_openai(manifest) is openai
    assert protocols_of(manifest) == (("oip", "openai") if openai else ("oip",))


def test_the_summary_carries_tags_protocols_unit_provider_and_measured_figures() -> None:
    e = catalogue().get("chat-small")
    assert tags_of(e.resolve(None).manifest) == ("text-generation", "text", "llama-cpp", "apache-2.0")
    doc = model_summary(e, measured=measured_json(None))
    assert doc["protocols"] == ["oip", "openai"]
    assert doc["iu"] == {"unit": "tokens_1k", "base_unit": "token", "base_units_per_iu": 1000}
    assert (doc["provider"], doc["provider_account_id"]) == ("lexico", "acc_lexico")
    assert doc["pricing"]["input_price_per_iu"] == "0.0002"
    assert doc["versions"] == ["1.0.0"] and doc["aliases"] == {"latest": "1.0.0"}
    assert doc["measured"] == {"latency_ms_p50": None, "latency_ms_p95": None, "calls_7d": 0}
    assert measured_json(FIGURES["digits"]) == {"latency_ms_p50": "12.5", "latency_ms_p95": "40", "calls_7d": 50}
    assert "measured" not in model_summary(e)


def test_the_measured_window_is_seven_utc_days_ending_today() -> None:
    assert measured_window(datetime(2026, 3, 7, 23, 59, tzinfo=UTC)) == ("2026-03-01", "2026-03-07")


# -- text --------------------------------------------------------------------------------------------------------


def test_every_word_must_match_in_any_case() -> None:
    assert run({"q": "DIGIT"}) == ["digit-embedder", "digits", "mnist-cnn", "sentiment"]
    assert run({"q": "handwritten digit"}) == ["digits", "mnist-cnn"]  # AND: both words, name or card
    assert run({"q": "handwritten zebra"}) == []
    assert run({"q": "  "}) == run()  # blank: no text search


def test_tags_are_searched_task_modality_runtime_license() -> None:
    assert run({"q": "onnx"}) == ["digits", "mnist-cnn"]
    assert run({"q": "audio"}) == ["speech-to-text"]
    assert run({"q": "apache"}) == ["chat-small", "digit-embedder"]
    assert run({"q": "generation"}) == ["chat-small"]


def test_name_matches_rank_before_tag_matches_before_card_matches() -> None:
    # "digits" is the name itself; "digit-embedder" holds the word in its name; mnist-cnn and sentiment only in
    # their cards.
    assert run({"q": "digits"}) == ["digits", "mnist-cnn"]
    assert run({"q": "digit"}) == ["digit-embedder", "digits", "mnist-cnn", "sentiment"]  # ties: by name
    # "text": speech-to-text's name, chat-small's tags (modality text) and card, digit-embedder's tag and card.
    ranked = run({"q": "text"})
    assert ranked[0] == "speech-to-text"
    assert set(ranked) == {"speech-to-text", "chat-small", "digit-embedder", "sentiment"}
    # An explicit sort wins; relevance then breaks its ties.
    assert run({"q": "digit", "sort": "name"}) == ["digit-embedder", "digits", "mnist-cnn", "sentiment"]
    assert run({"q": "digit", "order": "desc"}) == ["mnist-cnn", "sentiment", "digit-embedder", "digits"]


def test_a_word_in_the_card_only_is_found_in_every_card_section() -> None:
    assert run({"q": "8x8"}) == ["digits"]  # description
    assert run({"q": "recognition"}) == ["speech-to-text", "sentiment"]  # tag (task) before card


# -- filters -------------------------------------------------------------------------------------------------------


def test_each_filter() -> None:
    assert run({"task": "Text-Classification"}) == ["sentiment"]
    assert run({"modality": "text"}) == ["chat-small", "digit-embedder", "sentiment"]
    assert run({"protocol": "openai"}) == ["chat-small", "digit-embedder", "speech-to-text"]
    assert run({"protocol": "oip"}) == run()
    assert run({"runtime": "onnx"}) == ["digits", "mnist-cnn"]
    assert run({"license": "APACHE-2.0"}) == ["chat-small", "digit-embedder"]  # any case, either way written
    assert run({"provider": "lexico"}) == ["chat-small", "digit-embedder"]
    assert run({"provider": "acc_voices"}) == ["speech-to-text"]
    assert run({"provider": "nobody"}) == []
    assert run({"modality": "text", "q": "digit"}) == ["digit-embedder", "sentiment"]


def test_max_price_is_the_price_in_force_and_the_input_price_of_split_prices() -> None:
    assert run({"max_price": "0.0002"}) == ["chat-small", "digit-embedder"]  # chat-small: input 0.0002
    assert run({"max_price": "0.00019"}) == ["digit-embedder"]
    assert run({"max_price": "0.001"}) == ["chat-small", "digit-embedder", "digits", "mnist-cnn"]
    # An operator's list price (the price in force) replaces the manifest's.
    assert run({"max_price": "0.001"}, prices={"digits": Decimal("0.5")}) == [
        "chat-small",
        "digit-embedder",
        "mnist-cnn",
    ]
    assert run({"max_price": "0"}) == []


# -- sorts ---------------------------------------------------------------------------------------------------------


def test_sort_by_name_is_the_default_and_reverses() -> None:
    names = sorted(catalogue().names())
    assert run() == names
    assert run({"sort": "name", "order": "desc"}) == names[::-1]


def test_sort_by_price_lowest_first_ties_by_name() -> None:
    assert run({"sort": "price"}) == [
        "digit-embedder", "chat-small", "digits", "mnist-cnn", "speech-to-text", "sentiment"
    ]  # fmt: skip
    assert run({"sort": "price", "order": "desc"})[:2] == ["sentiment", "speech-to-text"]
    assert run({"sort": "price", "order": "desc"})[2:4] == ["digits", "mnist-cnn"]  # ties stay by name


def test_sort_by_latency_fastest_first_unmeasured_last_in_either_order() -> None:
    unmeasured = ["chat-small", "digit-embedder", "speech-to-text"]
    assert run({"sort": "latency"}) == ["sentiment", "digits", "mnist-cnn", *unmeasured]
    assert run({"sort": "latency", "order": "desc"}) == ["mnist-cnn", "digits", "sentiment", *unmeasured]


def test_sort_by_popularity_most_calls_first() -> None:
    assert run({"sort": "popularity"}) == [
        "speech-to-text", "digits", "mnist-cnn", "sentiment", "chat-small", "digit-embedder"
    ]  # fmt: skip
    assert run({"sort": "popularity", "order": "asc"})[:2] == ["chat-small", "digit-embedder"]


# -- pages ---------------------------------------------------------------------------------------------------------


def walk(params: dict[str, str]) -> tuple[list[str], int]:
    items = listings(catalogue(), None, FIGURES)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = parse_search({**params, **({"cursor": cursor} if cursor else {})})
        page = search(items, query)
        assert page.total == len(run({k: v for k, v in params.items() if k != "limit"} | {"limit": "100"}))
        seen += [x.name for x in page.listings]
        pages += 1
        if page.next_offset is None:
            return seen, pages
        cursor = encode_cursor(page.next_offset, query)


@pytest.mark.parametrize("limit", [1, 2, 4, 5, 6, 100])
@pytest.mark.parametrize("sort", ["name", "price", "latency", "popularity"])
def test_walking_every_page_yields_each_model_once_in_order(limit: int, sort: str) -> None:
    seen, pages = walk({"sort": sort, "limit": str(limit)})
    assert seen == run({"sort": sort, "limit": "100"})
    assert sorted(seen) == sorted(catalogue().names())
    assert pages == max(1, -(-len(seen) // limit))


def test_pages_by_offset_and_an_empty_page_past_the_end() -> None:
    first = run({"limit": "2"})
    assert run({"limit": "2", "offset": "2"}) == run({"limit": "100"})[2:4]
    assert first == run({"limit": "100"})[:2]
    page = search(listings(catalogue(), None, FIGURES), parse_search({"offset": "50"}))
    assert (page.listings, page.total, page.next_offset) == ([], 6, None)


def test_a_cursor_is_opaque_and_bound_to_its_search() -> None:
    query = parse_search({"q": "digit", "sort": "price"})
    cursor = encode_cursor(3, query)
    assert decode_cursor(cursor, query) == 3
    assert decode_cursor(cursor, parse_search({"q": "digit", "sort": "price", "limit": "5"})) == 3  # size may change
    with pytest.raises(InvalidInput, match=r"^cursor: it belongs to another search"):
        parse_search({"q": "digits", "sort": "price", "cursor": cursor})
    with pytest.raises(InvalidInput, match=r"^cursor: it belongs to another search"):
        parse_search({"q": "digit", "sort": "price", "order": "desc", "cursor": cursor})


# -- parameters refused, and ignored ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"sort": "cheapest"}, "sort"),
        ({"order": "up"}, "order"),
        ({"limit": "0"}, "limit"),
        ({"limit": str(LIMIT_MAX + 1)}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"cursor": "not a cursor!"}, "cursor"),
        ({"cursor": "bm9wZQ"}, "cursor"),  # base64 of "nope"
        ({"cursor": "A" * 500}, "cursor"),
        ({"cursor": encode_cursor(1, SearchQuery()), "offset": "1"}, "cursor, offset"),
        ({"max_price": "cheap"}, "max_price"),
        ({"max_price": "NaN"}, "max_price"),
        ({"max_price": "Infinity"}, "max_price"),
        ({"max_price": "-0.5"}, "max_price"),
        ({"max_price": "1" * 500}, "max_price"),
        ({"protocol": "grpc"}, "protocol"),
        ({"modality": "video"}, "modality"),
        ({"q": "x" * 201}, "q"),
        ({"q": " ".join(f"w{i}" for i in range(17))}, "q"),
        ({"task": "t" * 201}, "task"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(params: dict[str, str], named: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{named}: "):
        parse_search(params)


def test_unknown_and_empty_parameters_are_ignored() -> None:
    assert parse_search({"colour": "blue", "task": "", "sort": "", "q": ""}) == SearchQuery()
    assert parse_search({"sort": "PRICE", "order": "DESC"}) == SearchQuery(sort="price", descending=True)
    query = parse_search({"max_price": "0.5", "limit": "7", "offset": "14"})
    assert (query.max_price, query.limit, query.offset) == (Decimal("0.5"), 7, 14)


# -- texts are made once per version --------------------------------------------------------------------------------


def test_search_texts_are_kept_per_version_and_pruned() -> None:
    texts = SearchTexts()
    items = listings(catalogue(), None, FIGURES)
    search(items, parse_search({"q": "digit"}), texts)
    first = texts.of(items[0].latest)
    assert texts.of(items[0].latest) is first
    for _ in range(20):  # new catalogues (new version ids) every time: the old ones go
        search(listings(catalogue(), None, FIGURES), parse_search({"q": "digit"}), texts)
    assert len(texts._by_version) <= 2 * len(items) + 64


def test_listing_uses_the_manifest_price_without_a_price_in_force() -> None:
    by_name = {x.name: x for x in listings(catalogue(), {"digits": Decimal("0.5")}, {})}
    assert by_name["digits"].price_per_iu == Decimal("0.5")
    assert by_name["sentiment"].price_per_iu == Decimal("0.0200")
    assert by_name["sentiment"].measured is None
    assert isinstance(by_name["sentiment"], Listing) and by_name["sentiment"].latest.version == "1.0.0"


# -- the gateway's cache of measured figures ------------------------------------------------------------------------


def test_measured_figures_are_read_at_most_once_per_refresh_and_kept_when_a_read_fails() -> None:
    reads: list[datetime] = []
    fail = False

    def load(cat: Catalogue, now: datetime) -> dict[str, Any]:
        reads.append(now)
        if fail:
            raise RuntimeError("the store is down")
        return {"digits": FIGURES["digits"]} if len(reads) == 1 else {}

    async def scenario() -> None:
        nonlocal fail
        cache = MeasuredCache(load, refresh_s=3600)
        now = datetime(2026, 3, 1, tzinfo=UTC)
        answers = await asyncio.gather(*[cache.get(catalogue(), now) for _ in range(20)])
        assert len(reads) == 1 and all(a == {"digits": FIGURES["digits"]} for a in answers)
        cache.refresh_s = 0  # stale at once: the next request reads again
        fail = True
        assert await cache.get(catalogue(), now) == {"digits": FIGURES["digits"]}  # the last good figures
        fail = False
        assert await cache.get(catalogue(), now) == {}
        assert len(reads) == 3 and cache.loads == 3

    asyncio.run(scenario())
