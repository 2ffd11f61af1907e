"""The real `tritonclient.http` client against the gateway, binary tensor data included."""

from __future__ import annotations

import math
import wave
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tests.e2e.conftest import Gateway
from tritonclient.utils import InferenceServerException

from modelmarket.demo.build import digits_split
from modelmarket.metering.units import count_tokens


@pytest.fixture(scope="module")
def triton(gateway: Gateway) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gateway.hostport)


@pytest.fixture(scope="module")
def auth(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.cli.new_consumer('triton-user')}"}


def test_server_and_model_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("digits")
    meta = triton.get_model_metadata("digits")
    assert meta["name"] == "digits" and meta["versions"] == ["1.0.0"]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert triton.get_model_metadata("digits", "1.0.0")["versions"] == ["1.0.0"]
    with pytest.raises(InferenceServerException, match="not published"):
        triton.get_model_metadata("no-such-model")


def test_digits_held_out_accuracy_matches_card(
    triton: httpclient.InferenceServerClient, auth: dict[str, str], gateway: Gateway
) -> None:
    card = gateway.cli.json("models", "show", "digits")["manifest"]["card"]
    measured = Decimal(next(m["value"] for m in card["metrics"] if m["name"] == "test_accuracy"))
    _, x_test, _, y_test = digits_split()
    pixels = httpclient.InferInput("pixels", list(x_test.shape), "FP32")
    pixels.set_data_from_numpy(x_test.astype(np.float32), binary_data=True)
    wanted = [httpclient.InferRequestedOutput("label", binary_data=True)]
    result = triton.infer("digits", [pixels], outputs=wanted, headers=auth)
    labels = result.as_numpy("label")
    assert labels.shape == (len(y_test),)
    accuracy = float(np.mean(labels == y_test))
    assert abs(accuracy - float(measured)) <= 1 / len(y_test)  # the card states what the build measured
    assert accuracy > 0.9

    usage = gateway.cli.json("usage", "triton-user")
    digits = next(m for m in usage["models"] if m["model"] == "digits")
    assert digits["unit_kind"] == "image" and Decimal(digits["iu"]) == len(y_test)


def test_sentiment_and_speech_each_billed_in_its_unit(
    triton: httpclient.InferenceServerClient, auth: dict[str, str], gateway: Gateway
) -> None:
    texts = [b"I absolutely love this marketplace, it is great!", b"This is a terrible, awful experience."]
    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=object))
    result = triton.infer("sentiment", [text], headers=auth)
    assert list(result.as_numpy("label")) == [b"positive", b"negative"]
    scores = result.as_numpy("scores")
    assert scores.shape == (2, 4) and scores[0, 3] > 0.5 and scores[1, 3] < -0.5

    wav_path = gateway.cli.home / "demo" / "examples" / "hello.wav"
    audio = httpclient.InferInput("audio", [1], "BYTES")
    audio.set_data_from_numpy(np.array([wav_path.read_bytes()], dtype=object))
    transcript = triton.infer("speech-to-text", [audio], headers=auth).as_numpy("text")
    assert transcript.shape == (1,)
    assert transcript[0].decode().strip() == "hello world"

    usage = {m["model"]: m for m in gateway.cli.json("usage", "triton-user")["models"]}
    tokens = sum(count_tokens(t.decode()) for t in texts)
    assert usage["sentiment"]["unit_kind"] == "tokens_1k"
    assert Decimal(usage["sentiment"]["iu"]) == Decimal(tokens) / 1000
    seconds = _wav_seconds(wav_path)
    assert usage["speech-to-text"]["unit_kind"] == "audio_minute"
    assert usage["speech-to-text"]["quantity"] == math.ceil(seconds)  # whole seconds, billed exactly
    assert Fraction(usage["speech-to-text"]["iu"]) == Fraction(math.ceil(seconds), 60)


def test_missing_key_is_refused(triton: httpclient.InferenceServerClient) -> None:
    pixels = httpclient.InferInput("pixels", [1, 64], "FP32")
    pixels.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="missing API key"):
        triton.infer("digits", [pixels])


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()
