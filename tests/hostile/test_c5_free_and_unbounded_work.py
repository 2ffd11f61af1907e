"""5. No free and no unbounded work: every element is billed at least one token; element counts and lengths are
bounded per runtime (the gateway refuses what the runtime would, naming the bound), and nothing is billed for a
refused call."""

from __future__ import annotations

import io
import wave
from decimal import Decimal
from fractions import Fraction

import httpx
import pytest
from tests.hostile.conftest import Market
from tests.hostile.support import (
    LiveProbe,
    assert_error_response,
    binary_request,
    bytes_elements,
    sentiment_body,
    silent_wav,
)

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


def _binary_call(market: Market, auth: dict[str, str], model: str, name: str, items: list[bytes]) -> httpx.Response:
    body, header_length = binary_request(name, "BYTES", [len(items)], bytes_elements(items))
    headers = {**auth, "Inference-Header-Content-Length": str(header_length)}
    return httpx.post(f"{market.url}/v2/models/{model}/infer", content=body, headers=headers, timeout=60)


def test_text_that_is_not_utf8_is_refused_and_not_billed(market: Market) -> None:
    who = market.consumer("not-utf8")
    r = _binary_call(market, who.auth, "sentiment", "text", [b"fine", b"\xff\xfe broken"])
    assert_error_response(r, 400, "UTF-8")
    assert market.events(who) == 0


def _wav_at(rate_hz: int, frames: int, width_bytes: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width_bytes)
        w.setframerate(rate_hz)
        w.writeframes(b"\0" * width_bytes * frames)
    return out.getvalue()


AUDIO_REFUSED = [
    # (id, clip, words the error must hold)
    ("not-a-wav", b"hello", ("WAV",)),
    ("8-bit", _wav_at(16_000, 16_000, width_bytes=1), ("16-bit",)),
    ("11-s-in-22-bytes", _wav_at(1, 11), ("11.0 s", "limit is 10 s")),  # a tiny file that claims 11 s at 1 Hz
]


@pytest.mark.parametrize(("clip", "words"), [c[1:] for c in AUDIO_REFUSED], ids=[c[0] for c in AUDIO_REFUSED])
def test_audio_the_runtime_cannot_take_is_refused_and_not_billed(
    market: Market, clip: bytes, words: tuple[str, ...]
) -> None:
    who = market.consumer("bad-audio")
    assert_error_response(_binary_call(market, who.auth, "speech-to-text", "audio", [clip]), 400, *words)
    assert market.events(who) == 0


def test_an_empty_wav_costs_one_second(market: Market) -> None:
    who = market.consumer("empty-audio")
    r = _binary_call(market, who.auth, "speech-to-text", "audio", [silent_wav(0), silent_wav(0.01)])
    assert r.status_code == 200, r.text
    [entry] = market.usage(who)["models"]
    assert entry["events"] == 1 and entry["quantity"] == 2 and entry["iu"] == "1/30"
