"""The OpenAI plane's pure pieces: usage taken from a backend (or recounted when it reports none), chunks
relayed under the caller's names, what a backend is sent, errors without credentials, and SSE framing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.gateway.attempts import ModelFailed, UpstreamBusy
from modelmarket.gateway.backends import Backend
from modelmarket.gateway.openai_plane import (
    DEFAULT_MAX_TOKENS,
    _backend_body,
    _backend_error,
    _relay_chunk,
    _Usage,
    _usage_of,
    prompt_bound,
)
from modelmarket.runtime import openai as oa

CHAT = oa.parse_chat({"model": "chat", "messages": [{"role": "user", "content": "Hello there, friend!"}]})


class _Version:
    ref = "m@1.0.0"


def test_usage_is_the_backends_when_reported_and_recounted_when_not() -> None:
    reported = _usage_of({"usage": {"prompt_tokens": 31, "completion_tokens": 7}}, CHAT, ["ignored"])
    assert (reported.prompt, reported.completion, reported.reported) == (31, 7, True)
    recounted = _usage_of({"choices": []}, CHAT, ["Fine, thanks."])
    # The platform's own counter: "Hello there, friend!" = 5 tokens (Hello, there, ",", friend, "!"), "Fine, thanks." 4.
    assert (recounted.prompt, recounted.completion, recounted.reported) == (5, 4, False)
    bogus = _usage_of({"usage": {"prompt_tokens": -1, "completion_tokens": "7"}}, CHAT, [""])
    assert not bogus.reported and bogus.completion == 0


def test_a_relayed_chunk_carries_the_callers_names_and_usage_only_when_asked() -> None:
    data = orjson.dumps(
        {
            "id": "upstream-id",
            "model": "upstream-model",
            "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        }
    )
    usage = _Usage()
    out = orjson.loads(_relay_chunk(data, CHAT, "chatcmpl-req_1", usage)[6:])  # type: ignore[index]
    assert (out["id"], out["model"]) == ("chatcmpl-req_1", "chat")
    assert "usage" not in out  # the caller did not ask for usage
    assert (usage.prompt, usage.completion, usage.reported, usage.texts) == (9, 1, True, ["Hi"])
    asked = oa.parse_chat({**CHAT.raw, "stream": True, "stream_options": {"include_usage": True}})
    out = orjson.loads(_relay_chunk(data, asked, "x", _Usage())[6:])  # type: ignore[index]
    assert out["usage"] is None  # every chunk but the last has usage null, as the OpenAI API does
    final = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    assert _relay_chunk(final, asked, "x", usage) is None  # the backend's usage chunk: ours follows after billing
    assert usage.completion == 3


def test_a_backend_gets_only_checked_fields_and_the_reserved_max_tokens() -> None:
    raw: dict[str, Any] = {
        **CHAT.raw,
        "service_tier": "priority",
        "store": True,
        "temperature": 0.5,
        "max_completion_tokens": 9,
    }
    body = orjson.loads(_backend_body(raw, Backend(None, "/v1", "their-model"), True, 9))
    assert body["model"] == "their-model" and body["max_tokens"] == 9 and body["temperature"] == 0.5
    assert "service_tier" not in body and "store" not in body and "max_completion_tokens" not in body
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert DEFAULT_MAX_TOKENS == 256


def test_the_reservation_bounds_a_prompt_by_any_tokenizer() -> None:
    assert prompt_bound("1234567890" * 30) >= 100 + 64  # digits split into many tokens by a BPE tokenizer
    assert prompt_bound("a b c d") >= 4 + 64


def test_backend_errors_map_to_the_right_class_and_never_carry_the_key() -> None:
    backend = Backend(None, "/v1", "m", ((b"authorization", b"Bearer sk-secret-123"),), "prov")
    body = orjson.dumps({"error": {"message": "bad input for key sk-secret-123", "param": "input"}})
    error = _backend_error(400, body, {}, _Version(), backend)  # type: ignore[arg-type]
    assert isinstance(error, InvalidInput) and getattr(error, "param", None) == "input"
    assert "sk-secret-123" not in str(error) and "[redacted]" in str(error)
    busy = _backend_error(429, body, {b"retry-after": b"7"}, _Version(), backend)  # type: ignore[arg-type]
    assert isinstance(busy, UpstreamBusy) and busy.retry_after == "7" and "sk-secret" not in str(busy)
    for status in (401, 403, 404, 500, 503):
        failed = _backend_error(status, body, {}, _Version(), backend)  # type: ignore[arg-type]
        assert isinstance(failed, ModelFailed) and "sk-secret" not in str(failed)


def test_sse_events_are_framed_across_pieces_and_bounded() -> None:
    parser = oa.SseParser(max_event_bytes=64)
    assert list(parser.feed(b'data: {"a"')) == []
    assert list(parser.feed(b": 1}\r\n\r\n: a comment\n\ndata: x\ndata: y\n\n")) == [b'{"a": 1}', b"x\ny"]
    with pytest.raises(ValueError):
        list(parser.feed(b"data: " + b"z" * 100 + b"\n"))


def test_the_cost_header_is_the_billing_arithmetic() -> None:
    """``call_figures`` (the x-modelmarket-iu and -cost headers) agrees with ``billing.charges.token_amount`` and
    the exact text of every unit, the decimal fast path included."""
    from decimal import Decimal
    from fractions import Fraction

    from modelmarket.billing.charges import token_amount
    from modelmarket.core.money import exact_text
    from modelmarket.gateway.economy import Priced, call_figures
    from modelmarket.registry.manifest import Pricing

    split = Pricing.model_validate(
        {"unit": "tokens_1k", "input_price_per_iu": "0.0002", "output_price_per_iu": "0.0006", "currency": "USD"}
    )

    class _Manifest:
        def __init__(self, pricing: Pricing) -> None:
            self.pricing = pricing

    class _V:
        def __init__(self, pricing: Pricing) -> None:
            self.manifest = _Manifest(pricing)

    for factor in (Decimal(1), Decimal("1.5")):
        priced = Priced(split.price_per_iu * factor, factor)
        for units, out in ((40, 7), (1000, 0), (1000, 1000), (3, 3)):
            iu, cost = call_figures(_V(split), units, out, priced)  # type: ignore[arg-type]
            assert iu == exact_text(Fraction(units, 1000))
            assert cost == exact_text(token_amount(split, units - out, out) * Fraction(factor))
    for unit, price, units in (("audio_minute", "0.0060", 61), ("image", "0.0010", 100), ("request", "0", 1)):
        pricing = Pricing.model_validate({"unit": unit, "price_per_iu": price, "currency": "USD"})
        iu, cost = call_figures(_V(pricing), units, 0, None)  # type: ignore[arg-type]
        assert iu == exact_text(pricing.unit.iu(units))
        assert cost == exact_text(Fraction(units) * Fraction(price) / pricing.unit.divisor)
