"""Inference Unit counting per unit kind, and the CloudEvents usage event that carries it to billing."""

from __future__ import annotations

import io
import json
import wave
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import exact_text
from modelmarket.core.tensors import Tensor, bytes_tensor
from modelmarket.metering.events import EVENT_TYPE, FIELD_LIMITS, UsageEvent
from modelmarket.metering.units import UnitKind, count_iu, count_tokens


def make_wav(seconds: float, rate_hz: int = 16_000, channels: int = 1, width_bytes: int = 2) -> bytes:
    frames = round(seconds * rate_hz)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width_bytes)
        writer.setframerate(rate_hz)
        writer.writeframes(b"\x00" * (frames * channels * width_bytes))
    return buf.getvalue()


def texts(*items: str) -> Tensor:
    return bytes_tensor("text", [s.encode("utf-8") for s in items])


# -- unit kinds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "divisor", "base_unit"),
    [
        (UnitKind.IMAGE, 1, "image"),
        (UnitKind.TOKENS_1K, 1000, "token"),
        (UnitKind.AUDIO_MINUTE, 60, "second"),
        (UnitKind.REQUEST, 1, "request"),
    ],
)
def test_each_unit_kind_names_its_base_unit_and_divisor(kind: UnitKind, divisor: int, base_unit: str) -> None:
    assert (kind.divisor, kind.base_unit) == (divisor, base_unit)
    assert kind.iu(divisor) == Fraction(1)
    assert isinstance(kind.iu(1), Fraction)


# -- request / image -------------------------------------------------------------------------------------


def test_request_is_one_iu_whatever_the_inputs() -> None:
    assert count_iu("request", [texts("a", "b", "c")]) == Fraction(1)
    assert count_iu("request", []) == Fraction(1)


@pytest.mark.parametrize(
    ("shape", "images"),
    [
        ([1, 64], 1),
        ([7, 64], 7),
        ([5, 3, 8, 8], 5),
        ([0, 64], 1),  # every call costs at least one base unit: an empty batch is billed as one image
    ],
)
def test_image_counts_the_batch_dimension_of_the_first_input(shape: list[int], images: int) -> None:
    pixels = Tensor("pixels", "FP32", shape, np.zeros(shape, dtype=np.float32))
    other = Tensor("extra", "FP32", [99, 2], np.zeros((99, 2), dtype=np.float32))
    assert UnitKind.IMAGE.measure([pixels, other]) == images
    iu = count_iu("image", [pixels, other])
    assert iu == Fraction(images)
    assert isinstance(iu, Fraction)


def test_unit_kinds_are_still_plain_strings() -> None:
    # ``measure`` counts base units; ``str.count`` keeps its meaning on the StrEnum
    assert UnitKind.TOKENS_1K.count("_") == 1
    assert UnitKind.AUDIO_MINUTE == "audio_minute"


def test_counting_needs_an_input_unless_billed_per_request() -> None:
    with pytest.raises(InvalidInput, match="at least one input tensor"):
        count_iu("image", [])
    assert UnitKind.REQUEST.measure([]) == 1


# -- tokens_1k -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Hello, world!", 4),  # Hello , world !
        ("don't stop", 4),  # don ' t stop
        ("naïve café", 2),  # letters outside ASCII are word characters
        ("snake_case 12.50", 4),  # snake_case 12 . 50
        ("  \t\n ", 0),
        ("", 0),
        ("I ❤ NY", 3),  # a symbol is one token of its own
        ("...", 3),
    ],
)
def test_documented_tokenizer(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens
    # ...and what is billed: every element costs at least one token, so an empty text is not free
    assert UnitKind.TOKENS_1K.measure([texts(text)]) == max(1, tokens)


def test_tokens_1k_sums_every_bytes_element_of_every_bytes_input() -> None:
    ids = Tensor("ids", "INT64", [3], np.arange(3))  # numeric inputs carry no text
    inputs = [texts("Hello, world!", "don't stop"), ids, texts("one")]
    assert UnitKind.TOKENS_1K.measure(inputs) == 9
    assert count_iu("tokens_1k", inputs) == Fraction(9, 1000)


def test_empty_texts_cost_one_token_each() -> None:
    assert count_iu("tokens_1k", [texts("", "  ", "word")]) == Fraction(3, 1000)


def test_tokens_1k_is_exact_not_rounded() -> None:
    iu = count_iu("tokens_1k", [texts("word " * 1234 + "!")])
    assert iu == Fraction(1235, 1000)
    assert exact_text(iu) == "1.235"
    assert exact_text(count_iu("tokens_1k", [texts("x")])) == "0.001"


def test_tokens_1k_refuses_text_that_is_not_utf8() -> None:
    with pytest.raises(InvalidInput, match="input 'text': text is not valid UTF-8"):
        count_iu("tokens_1k", [bytes_tensor("text", [b"ok", b"\xff\xfe"])])


# -- audio_minute ----------------------------------------------------------------------------------------

ONE_SIXTIETH = Fraction(1, 60)  # exact: 1/60 has no finite decimal, so it is never written as one
TWO_SIXTIETHS = Fraction(2, 60)


def audio(*clips: bytes) -> list[Tensor]:
    return [bytes_tensor("audio", list(clips))]


def test_one_second_is_one_sixtieth_of_a_minute() -> None:
    assert UnitKind.AUDIO_MINUTE.measure(audio(make_wav(1.0))) == 1
    iu = count_iu("audio_minute", audio(make_wav(1.0)))
    assert iu == ONE_SIXTIETH
    assert exact_text(iu) == "1/60"


def test_started_seconds_are_billed_whole() -> None:
    assert count_iu("audio_minute", audio(make_wav(1.2))) == TWO_SIXTIETHS
    assert count_iu("audio_minute", audio(make_wav(0.05, rate_hz=8_000))) == ONE_SIXTIETH


def test_a_minute_is_one_iu_and_stereo_counts_time_not_samples() -> None:
    assert count_iu("audio_minute", audio(make_wav(60.0, rate_hz=8_000))) == Fraction(1)
    assert count_iu("audio_minute", audio(make_wav(1.0, rate_hz=44_100, channels=2))) == ONE_SIXTIETH


def test_each_file_is_rounded_up_then_summed() -> None:
    # 1.0 s + 1.2 s bills 1 + 2 = 3 seconds; 1.2 s + 1.2 s bills 2 + 2 = 4 (not ceil(2.4) = 3).
    assert count_iu("audio_minute", audio(make_wav(1.0), make_wav(1.2))) == Fraction("0.05")
    assert count_iu("audio_minute", audio(make_wav(1.2), make_wav(1.2))) == Fraction(4, 60)


def test_empty_wav_is_billed_one_second() -> None:
    # Every element costs at least one base unit: a WAV with no frames is one second, never free.
    assert UnitKind.AUDIO_MINUTE.measure(audio(make_wav(0.0))) == 1
    assert count_iu("audio_minute", audio(make_wav(0.0))) == ONE_SIXTIETH


def test_audio_that_is_not_wav_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="not a readable PCM WAV file"):
        count_iu("audio_minute", audio(make_wav(1.0), b"ID3\x03 this is an mp3, honest"))


def test_unknown_unit_kind() -> None:
    with pytest.raises(InvalidInput, match="unknown unit kind 'frames'"):
        count_iu("frames", [texts("a")])
    with pytest.raises(InvalidInput, match="known: image, tokens_1k, audio_minute, request"):
        UnitKind.parse("1k_tokens")


# -- the usage event -------------------------------------------------------------------------------------


def usage_event(**overrides: object) -> UsageEvent:
    fields: dict[str, object] = {
        "id": "req_0001",
        "source": "gateway-7",
        "account_id": "acc_consumer",
        "time": datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC),
        "model": "sentiment",
        "version": "1.0.0",
        "provider_account_id": "acc_provider",
        "unit_kind": UnitKind.TOKENS_1K,
        "quantity": UnitKind.TOKENS_1K.measure([texts("Hello, world!")]),
        "unit_price": Decimal("0.0200"),
        "currency": "USD",
        "latency_ms": Decimal("12.345"),
        "route": "default",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    fields.update(overrides)
    return UsageEvent(**fields)  # type: ignore[arg-type]


def test_usage_event_is_a_cloudevents_1_0_document() -> None:
    doc = json.loads(usage_event().encode())
    assert doc["specversion"] == "1.0"
    assert doc["type"] == EVENT_TYPE == "modelmarket.inference.completed"
    assert doc["id"] == "req_0001"
    assert doc["source"] == "gateway-7"
    assert doc["subject"] == "acc_consumer"
    assert doc["time"] == "2024-02-29T23:59:58.123456Z"
    assert doc["datacontenttype"] == "application/json"
    data = doc["data"]
    # The billed quantity is a whole number of base units; the IU is exact text, never a JSON float.
    assert (data["quantity"], data["base_unit"]) == (4, "token")
    assert data["quantity_iu"] == "0.004"
    # Decimals travel as strings, never as JSON numbers (which readers parse as floats).
    assert data["unit_price"] == "0.0200"
    assert data["latency_ms"] == "12.345"
    assert (data["model"], data["version"], data["provider"]) == ("sentiment", "1.0.0", "acc_provider")
    assert (data["unit_kind"], data["currency"], data["route"]) == ("tokens_1k", "USD", "default")


def test_usage_event_round_trip_is_exact() -> None:
    event = usage_event()
    decoded = UsageEvent.decode(event.encode())
    assert decoded == event
    assert decoded.time.utcoffset() == timedelta(0)
    assert decoded.unit_kind is UnitKind.TOKENS_1K
    assert decoded.quantity_iu == Fraction(4, 1000)
    assert isinstance(decoded.quantity_iu, Fraction)
    assert decoded.amount_numerator == Decimal("0.0800")  # 4 tokens x 0.0200 USD per 1k tokens, over 1000
    assert decoded.amount == Fraction("0.00008")  # 0.004 IU x 0.0200 USD


def test_audio_event_round_trip_is_exact_in_seconds() -> None:
    seconds = UnitKind.AUDIO_MINUTE.measure(audio(make_wav(1.0)))
    event = usage_event(unit_kind=UnitKind.AUDIO_MINUTE, quantity=seconds, unit_price=Decimal("0.0060"))
    assert json.loads(event.encode())["data"]["quantity_iu"] == "1/60"
    decoded = UsageEvent.decode(event.encode())
    assert decoded.quantity_iu == ONE_SIXTIETH
    assert decoded.amount == event.amount == Fraction(1, 10_000)  # 0.0060 / 60, no 28-digit rounding


def test_image_amount_is_iu_times_price() -> None:
    event = usage_event(unit_kind=UnitKind.IMAGE, quantity=3, unit_price=Decimal("0.0010"))
    assert UsageEvent.decode(event.encode()).amount == Fraction("0.0030")


def test_trace_id_is_null_without_a_traceparent_and_offsets_survive() -> None:
    local = datetime(2024, 5, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    decoded = UsageEvent.decode(usage_event(trace_id=None, time=local).encode())
    assert decoded.trace_id is None
    assert json.loads(usage_event(trace_id=None).encode())["data"]["trace_id"] is None
    assert decoded.time == local


def test_decode_refuses_other_event_types() -> None:
    doc = json.loads(usage_event().encode())
    doc["type"] = "com.example.other"
    with pytest.raises(ValueError, match="not a usage event"):
        UsageEvent.decode(json.dumps(doc).encode())
    doc["type"], doc["specversion"] = EVENT_TYPE, "0.3"
    with pytest.raises(ValueError, match="not a usage event"):
        UsageEvent.decode(json.dumps(doc).encode())


@pytest.mark.parametrize("quantity", ["4", 4.0, True, None])
def test_decode_refuses_a_quantity_that_is_not_a_whole_number(quantity: object) -> None:
    doc = json.loads(usage_event().encode())
    doc["data"]["quantity"] = quantity
    with pytest.raises(TypeError, match="quantity must be an integer"):
        UsageEvent.decode(json.dumps(doc).encode())


def test_event_strings_are_bounded_and_trace_ids_checked() -> None:
    assert usage_event(model="m" * FIELD_LIMITS["model"]).model == "m" * FIELD_LIMITS["model"]
    for name in ("id", "model", "route", "account_id", "provider_account_id", "version", "source"):
        limit = FIELD_LIMITS[name]
        with pytest.raises(ValueError, match=f"{name} must be 1-{limit} characters"):
            usage_event(**{name: "x" * (limit + 1)})
    with pytest.raises(ValueError, match="trace_id"):
        usage_event(trace_id="g" * 32)  # 32 characters, not hex
    with pytest.raises(ValueError, match="currency"):
        usage_event(currency="DOLLARS")
    with pytest.raises(ValueError, match="model must be"):
        usage_event(model="")
    with pytest.raises(ValueError, match="trace_id"):
        usage_event(trace_id="4bf92f3577b34da6")
    with pytest.raises(ValueError, match="quantity must not be negative"):
        usage_event(quantity=-1)


@pytest.mark.parametrize("key", ["unit_price", "latency_ms"])
def test_decode_refuses_decimals_written_as_json_numbers(key: str) -> None:
    doc = json.loads(usage_event().encode())
    doc["data"][key] = 0.1
    with pytest.raises(TypeError, match=f"{key} must be a decimal string"):
        UsageEvent.decode(json.dumps(doc).encode())
