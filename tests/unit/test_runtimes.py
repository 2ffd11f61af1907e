"""The built-in runtimes serving the demo packages, the plug-in lookup, WAV parsing and the demo build."""

from __future__ import annotations

import hashlib
import io
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from modelmarket.core.errors import InvalidInput
from modelmarket.demo import build_packages, digits_split
from modelmarket.runtime.base import ModelSpec, Runtime, Tensor, TensorSpec, bytes_tensor
from modelmarket.runtime.plugins import available_runtimes, load_runtime_class
from modelmarket.core.wav import wav_duration_s

pytestmark = pytest.mark.timeout(120)


def read_manifest(package_dir: Path) -> dict[str, Any]:
    with (package_dir / "modelmarket.yaml").open(encoding="utf-8") as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


def spec_of(package_dir: Path) -> ModelSpec:
    """What the registry hands a runner: directories in the manifest expanded into their files."""
    doc = read_manifest(package_dir)
    files: list[str] = []
    for entry in doc["artifacts"]:
        path = package_dir / entry["path"]
        if path.is_dir():
            files += sorted(str(p.relative_to(package_dir)) for p in path.rglob("*") if p.is_file())
        else:
            files.append(entry["path"])

    def tensors(key: str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in doc[key])

    return ModelSpec(
        name=doc["name"],
        version=doc["version"],
        runtime=doc["runtime"],
        artifact_root=package_dir,
        artifacts=tuple(files),
        inputs=tensors("inputs"),
        outputs=tensors("outputs"),
        parameters=doc["parameters"],
    )


def loaded(package_dir: Path) -> Runtime:
    spec = spec_of(package_dir)
    runtime = load_runtime_class(spec.runtime)(spec)
    runtime.load()
    return runtime


def outputs_by_name(outputs: list[Tensor]) -> dict[str, Tensor]:
    return {t.name: t for t in outputs}


def make_wav(samples: np.ndarray[Any, Any], rate_hz: int, channels: int, width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate_hz)
        writer.writeframes(samples.tobytes())
    return buffer.getvalue()


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- plug-ins


def test_builtin_runtimes_are_discovered_by_entry_point() -> None:
    assert {"onnx", "vader", "pocketsphinx"} <= set(available_runtimes())
    for name in ("onnx", "vader", "pocketsphinx"):
        cls = load_runtime_class(name)
        assert issubclass(cls, Runtime)
        assert cls.name == name


def test_unknown_runtime_names_the_available_ones() -> None:
    with pytest.raises(InvalidInput) as info:
        load_runtime_class("tensorflow-lite")
    message = info.value.message
    assert "tensorflow-lite" in message
    for name in ("onnx", "pocketsphinx", "vader"):
        assert name in message


# --- onnx / digits


def test_onnx_accuracy_on_holdout_equals_the_card(demo_dir: Path) -> None:
    runtime = loaded(demo_dir / "digits")
    _, x_test, _, y_test = digits_split()
    pixels = x_test.astype(np.float32)
    out = outputs_by_name(runtime.predict([Tensor("pixels", "FP32", list(pixels.shape), pixels)], {}))

    label, probabilities = out["label"], out["probabilities"]
    assert (label.datatype, label.shape) == ("INT64", [len(y_test)])
    assert (probabilities.datatype, probabilities.shape) == ("FP32", [len(y_test), 10])
    np.testing.assert_allclose(probabilities.data.sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(probabilities.data.argmax(axis=1), label.data)

    accuracy = float(np.mean(label.data == y_test))
    metric = read_manifest(demo_dir / "digits")["card"]["metrics"][0]
    assert metric["name"] == "test_accuracy"
    assert metric["value"] == f"{accuracy:.4f}"
    assert accuracy > 0.9


def test_onnx_serves_the_example_request_and_casts_dtypes(demo_dir: Path) -> None:
    runtime = loaded(demo_dir / "digits")
    body = json.loads((demo_dir / "examples" / "digit.json").read_text(encoding="utf-8"))
    row = body["inputs"][0]
    as_float64 = np.asarray(row["data"], dtype=np.float64).reshape(row["shape"])
    label = outputs_by_name(runtime.predict([Tensor("pixels", "FP32", row["shape"], as_float64)], {}))["label"]

    _, x_test, _, y_test = digits_split()
    index = int(body["id"].rsplit("-", 1)[1])
    assert np.array_equal(x_test[index], as_float64[0])
    assert label.data.tolist() == [y_test[index]]


def test_onnx_rejects_a_wrongly_sized_row(demo_dir: Path) -> None:
    runtime = loaded(demo_dir / "digits")
    short = np.zeros((1, 63), dtype=np.float32)
    with pytest.raises(InvalidInput, match="pixels"):
        runtime.predict([Tensor("pixels", "FP32", [1, 63], short)], {})


# --- vader / sentiment


def test_vader_labels_positive_negative_and_neutral(demo_dir: Path) -> None:
    runtime = loaded(demo_dir / "sentiment")
    texts = [
        "I absolutely love this, it is wonderful and works great!",
        "This is horrible, the worst purchase I have ever made.",
        "The invoice lists three items.",
    ]
    out = outputs_by_name(runtime.predict([bytes_tensor("text", [t.encode() for t in texts])], {}))
    assert out["label"].data.tolist() == [b"positive", b"negative", b"neutral"]
    scores = out["scores"]
    assert (scores.datatype, scores.shape, scores.data.dtype) == ("FP32", [3, 4], np.float32)
    compound = scores.data[:, 3]
    assert compound[0] >= 0.05 and compound[1] <= -0.05 and abs(compound[2]) < 0.05
    np.testing.assert_allclose(scores.data[:, :3].sum(axis=1), 1.0, atol=2e-3)


def test_vader_rejects_text_that_is_not_utf8(demo_dir: Path) -> None:
    runtime = loaded(demo_dir / "sentiment")
    with pytest.raises(InvalidInput, match="UTF-8"):
        runtime.predict([bytes_tensor("text", [b"fine", b"\xff\xfe bad"])], {})


# --- pocketsphinx / speech-to-text


@pytest.fixture(scope="module")
def sphinx(demo_dir: Path) -> Runtime:
    return loaded(demo_dir / "speech-to-text")


def test_example_wav_transcribes_deterministically(demo_dir: Path, sphinx: Runtime) -> None:
    wav = (demo_dir / "examples" / "hello.wav").read_bytes()
    first = sphinx.predict([bytes_tensor("audio", [wav])], {})[0]
    assert (first.name, first.datatype, first.shape) == ("text", "BYTES", [1])
    text = first.data[0]
    assert isinstance(text, bytes) and text.strip()
    again = sphinx.predict([bytes_tensor("audio", [wav, wav])], {})[0]
    assert again.data.tolist() == [text, text]


def test_stereo_and_other_rates_are_downmixed_and_resampled(demo_dir: Path, sphinx: Runtime) -> None:
    wav = (demo_dir / "examples" / "hello.wav").read_bytes()
    with wave.open(io.BytesIO(wav)) as reader:
        rate_hz = reader.getframerate()
        mono = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    n_out = round(mono.size * 44_100 / rate_hz)
    upsampled = np.interp(np.arange(n_out) * rate_hz / 44_100, np.arange(mono.size), mono)
    left = np.rint(upsampled).astype("<i2")
    stereo = make_wav(np.stack([left, np.zeros_like(left)], axis=1), 44_100, channels=2)

    # Fed to the 16 kHz decoder without downmix and resampling, this clip comes out as different words.
    texts = sphinx.predict([bytes_tensor("audio", [stereo, wav])], {})[0].data.tolist()
    assert texts[0].strip()
    assert texts[0] == texts[1]
    assert wav_duration_s(stereo) == pytest.approx(n_out / 44_100)


def test_wav_duration_is_frames_over_rate(demo_dir: Path) -> None:
    wav = (demo_dir / "examples" / "hello.wav").read_bytes()
    with wave.open(io.BytesIO(wav)) as reader:
        expected_s = reader.getnframes() / reader.getframerate()
    assert expected_s > 0.5
    assert wav_duration_s(wav) == pytest.approx(expected_s)
    one_second = make_wav(np.zeros((8_000, 2), dtype="<i2"), 8_000, channels=2)
    assert wav_duration_s(one_second) == pytest.approx(1.0)


@pytest.mark.parametrize("payload", [b"", b"definitely not audio", b"RIFF\x24\x00\x00\x00WAVEfmt "])
def test_non_wav_payload_is_invalid_input(sphinx: Runtime, payload: bytes) -> None:
    with pytest.raises(InvalidInput, match="WAV"):
        wav_duration_s(payload)
    with pytest.raises(InvalidInput, match="audio element 1"):
        sphinx.predict([bytes_tensor("audio", [make_wav(np.zeros(1600, dtype="<i2"), 16_000, 1), payload])], {})


def test_8_bit_wav_is_refused_by_the_recognizer(sphinx: Runtime) -> None:
    eight_bit = make_wav(np.full(16_000, 128, dtype=np.uint8), 16_000, channels=1, width=1)
    assert wav_duration_s(eight_bit) == pytest.approx(1.0)
    with pytest.raises(InvalidInput, match="16-bit"):
        sphinx.predict([bytes_tensor("audio", [eight_bit])], {})


# --- the demo build


def test_manifests_quote_prices_and_metrics_as_decimal_strings(demo_dir: Path) -> None:
    expected = {
        "digits": ("onnx", "image", "0.0010", "BSD-3-Clause"),
        "sentiment": ("vader", "tokens_1k", "0.0200", "MIT"),
        "speech-to-text": ("pocketsphinx", "audio_minute", "0.0060", "BSD-2-Clause"),
    }
    for name, (runtime, unit, price, license_id) in expected.items():
        text = (demo_dir / name / "modelmarket.yaml").read_text(encoding="utf-8")
        assert f"price_per_iu: '{price}'" in text
        doc = read_manifest(demo_dir / name)
        assert (doc["name"], doc["runtime"], doc["license"]) == (name, runtime, license_id)
        assert doc["pricing"] == {"unit": unit, "price_per_iu": price, "currency": "USD"}
        assert all(isinstance(m["value"], str) for m in doc["card"]["metrics"])
        for entry in doc["artifacts"]:
            assert (demo_dir / name / entry["path"]).exists()


def test_building_twice_gives_identical_files(demo_dir: Path, tmp_path: Path) -> None:
    build_packages(tmp_path, progress=lambda _: None)
    first, second = file_hashes(demo_dir), file_hashes(tmp_path)
    assert len(first) > 10
    assert first == second


def test_build_names_espeak_ng_when_it_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(RuntimeError, match="espeak-ng"):
        build_packages(tmp_path / "out", progress=lambda _: None)
    assert not (tmp_path / "out").exists()
