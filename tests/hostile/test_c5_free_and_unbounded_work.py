"""5. No free and no unbounded work: every element is billed at least one token; element counts and lengths are
bounded per runtime (the gateway refuses what the runtime would, naming the bound), and nothing is billed for a
refused call."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import httpx
import pytest
from tests.hostile.conftest import Market
from tests.hostile.support import LiveProbe, assert_error_response, sentiment_body

from modelmarket.core.money import exact_text


def _call(market: Market, auth: dict[str, str], texts: list[str], what: str) -> httpx.Response:
    with LiveProbe(market.url, what):
        return httpx.post(
            f"{market.url}/v2/models/sentiment/infer", json=sentiment_body(texts), headers=auth, timeout=90
        )


REFUSED = [
    # (id, texts, words the error must hold)
    ("100k-empty-strings", [""] * 100_000, ("100,000 elements", "limit is 32 per call")),
    ("33-elements", ["hi"] * 33, ("33 elements", "limit is 32 per call")),
    ("20000-words", ["good " * 20_000], ("element 0", "limit is 16,384 bytes per element")),
    ("megabyte-of-whitespace", [" " * (1 << 20)], ("element 0", "limit is 16,384 bytes per element")),
    ("1500-words", ["a " * 1_500], ("1,500 words", "limit is 1,000 per element")),
    ("1000-emoji", ["\N{CAT FACE WITH TEARS OF JOY}" * 1_000], ("words", "limit is 1,000 per element")),
]


@pytest.mark.parametrize(("texts", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_sentiment_work_over_the_runtime_bounds_is_refused_and_not_billed(
    market: Market, texts: list[str], words: tuple[str, ...]
) -> None:
    who = market.consumer("unbounded")
    r = _call(market, who.auth, texts, f"sentiment refusal of {len(texts):,} element(s)")
    assert_error_response(r, 400, *words)
    assert market.events(who) == 0


def test_empty_and_blank_strings_cost_one_token_each_exactly(market: Market) -> None:
    who = market.consumer("free-work")
    texts = ["", "", "   ", "\n\t", "good day", "Hello, world!"]  # 1 + 1 + 1 + 1 + 2 + 4 tokens
    tokens = 10
    r = _call(market, who.auth, texts, "sentiment with empty strings")
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"][0] == len(texts)
    price = Decimal(httpx.get(f"{market.url}/api/models/sentiment").json()["pricing"]["price_per_iu"])
    usage = market.usage(who)
    [entry] = usage["models"]
    assert entry["model"] == "sentiment" and entry["events"] == 1 and usage["total_events"] == 1
    assert entry["quantity"] == tokens and entry["base_unit"] == "token"
    assert entry["iu"] == usage["total_iu"] == exact_text(Fraction(tokens, 1000)) == "0.01"
    assert entry["amount"] == exact_text(Fraction(tokens) * Fraction(price) / 1000)
