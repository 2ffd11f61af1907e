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
from modelmarket.core.wav import wav_duration_s
from modelmarket.demo import build_packages, digits_split
from modelmarket.runtime.base import ModelSpec, Runtime, Tensor, TensorSpec, bytes_tensor
from modelmarket.runtime.plugins import available_runtimes, load_runtime_class

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


# --- trust: a runtime opens only its version's artifacts; parameters are checked at publish; calls are bounded


def spec_with(package_dir: Path, **parameters: Any) -> ModelSpec:
    spec = spec_of(package_dir)
    return ModelSpec.from_json({**spec.to_json(), "parameters": {**spec.parameters, **parameters}})


def test_model_spec_artifact_takes_only_the_versions_own_files(demo_dir: Path) -> None:
    spec = spec_of(demo_dir / "digits")
    assert spec.artifact("model.onnx") == demo_dir / "digits" / "model.onnx"
    assert spec.artifact("./model.onnx") == spec.artifact("model.onnx")  # normalised first
    for bad, words in [
        ("../sentiment/vader_lexicon.txt", r"leaves the package folder \('\.\.'\)"),
        ("/etc/passwd", "is an absolute path"),
        ("modelmarket.yaml", "is not one of the version's artifacts: 'model.onnx'"),
        ("", "must be the path of one of the version's artifacts"),
    ]:
        with pytest.raises(InvalidInput, match=rf"^parameters\.model_file: .*{words}"):
            spec.artifact(bad, "model_file")
    with pytest.raises(InvalidInput, match=r"^artifact: '/etc/passwd' is an absolute path"):
        spec.artifact("/etc/passwd")


def test_model_spec_artifact_folder_needs_artifacts_inside_it(demo_dir: Path) -> None:
    spec = spec_of(demo_dir / "speech-to-text")
    assert any(a.startswith("en-us/") for a in spec.artifacts)
    assert spec.artifact_folder("en-us", "hmm") == demo_dir / "speech-to-text" / "en-us"
    for bad in ("en", "../speech-to-text/en-us", "/usr/share"):
        with pytest.raises(InvalidInput, match=r"^parameters\.hmm: "):
            spec.artifact_folder(bad, "hmm")
    with pytest.raises(InvalidInput, match=r"^parameters\.lm: 'en-us' is not one of"):
        spec.artifact("en-us", "lm")  # a folder is not a file artifact


@pytest.mark.parametrize(
    ("package", "parameters", "field"),
    [
        ("digits", {"model_file": "../sentiment/vader_lexicon.txt"}, "model_file"),
        ("sentiment", {"lexicon": "/etc/passwd"}, "lexicon"),
        ("sentiment", {"emoji_lexicon": "../digits/model.onnx"}, "emoji_lexicon"),
        ("speech-to-text", {"dict": "../sentiment/vader_lexicon.txt"}, "dict"),
        ("speech-to-text", {"hmm": "/usr/share"}, "hmm"),
    ],
)
def test_a_runtime_does_not_load_a_file_outside_its_package(
    demo_dir: Path, package: str, parameters: dict[str, Any], field: str
) -> None:
    spec = spec_with(demo_dir / package, **parameters)
    runtime = load_runtime_class(spec.runtime)(spec)
    with pytest.raises(InvalidInput, match=rf"^parameters\.{field}: "):
        runtime.load()


@pytest.mark.parametrize(
    ("runtime", "parameters", "words"),
    [
        ("onnx", {"model_file": "../../blobs/sha256/ab/abcdef"}, r"parameters\.model_file: .*leaves the package"),
        ("onnx", {"model_file": "/var/lib/modelmarket/modelmarket.db"}, r"parameters\.model_file: .*absolute path"),
        ("onnx", {"model_file": "other.onnx"}, r"parameters\.model_file: 'other\.onnx' is not one of"),
        ("onnx", {"intra_op_num_threads": 0}, r"parameters\.intra_op_num_threads: must be a whole number from 1 to"),
        ("onnx", {"intra_op_num_threads": 10_000}, r"parameters\.intra_op_num_threads: must be a whole number"),
        ("onnx", {"inter_op_num_threads": -1}, r"parameters\.inter_op_num_threads: "),
        ("onnx", {"inter_op_num_threads": "4"}, r"parameters\.inter_op_num_threads: .*not '4'"),
        ("onnx", {"inter_op_num_threads": True}, r"parameters\.inter_op_num_threads: "),
        ("onnx", {"intra_op_num_threads": 2.5}, r"parameters\.intra_op_num_threads: "),
        ("onnx", {"threads": 4}, r"parameters\.threads: runtime 'onnx' has no parameter of that name; its param"),
        ("vader", {"lexicon": "/etc/passwd"}, r"parameters\.lexicon: '/etc/passwd' is an absolute path"),
        (
            "vader",
            {"lexicon": "model.onnx", "color": "red"},
            r"parameters\.color: .*parameters: emoji_lexicon, lexicon$",
        ),
        ("pocketsphinx", {"hmm": "../en-us"}, r"parameters\.hmm: .*leaves the package"),
        ("pocketsphinx", {"max_audio_s": 0}, r"parameters\.max_audio_s: must be a number above 0 and at most 10"),
        ("pocketsphinx", {"max_audio_s": 600}, r"parameters\.max_audio_s: "),
        ("pocketsphinx", {"max_audio_s": "5"}, r"parameters\.max_audio_s: "),
        ("pocketsphinx", {"loglevel": "LOUD"}, r"parameters\.loglevel: must be one of DEBUG, INFO, WARN, ERROR"),
        ("tensorflow-lite", {}, r"^runtime: unknown runtime 'tensorflow-lite'"),
    ],
)
def test_bad_runtime_parameters_are_refused_at_publish(runtime: str, parameters: dict[str, Any], words: str) -> None:
    from modelmarket.runtime.plugins import validate_runtime_parameters

    artifacts = {
        "onnx": ["model.onnx"],
        "vader": ["vader_lexicon.txt", "emoji_utf8_lexicon.txt", "model.onnx"],
        "pocketsphinx": ["en-us/mdef", "en-us/means", "en-us.lm.bin", "cmudict-en-us.dict"],
    }.get(runtime, [])
    with pytest.raises(InvalidInput, match=words):
        validate_runtime_parameters(runtime, parameters, artifacts)


def test_defaults_must_name_artifacts_too() -> None:
    from modelmarket.runtime.plugins import validate_runtime_parameters

    with pytest.raises(InvalidInput, match=r"parameters\.model_file: no artifact ends in \.onnx"):
        validate_runtime_parameters("onnx", {}, ["weights.bin"])
    with pytest.raises(InvalidInput, match=r"parameters\.lexicon: 'vader_lexicon\.txt' is not one of"):
        validate_runtime_parameters("vader", {}, ["emoji_utf8_lexicon.txt"])
    with pytest.raises(InvalidInput, match=r"parameters\.hmm: 'en-us' is not a folder of"):
        validate_runtime_parameters("pocketsphinx", {}, ["en-us.lm.bin", "cmudict-en-us.dict"])


def test_the_demo_packages_parameters_pass_against_their_collected_artifacts(demo_dir: Path) -> None:
    from modelmarket.registry.manifest import load_manifest
    from modelmarket.registry.package import collect_artifacts
    from modelmarket.runtime.plugins import validate_runtime_parameters

    for name in ("digits", "sentiment", "speech-to-text"):
        manifest = load_manifest(demo_dir / name)
        files = collect_artifacts(demo_dir / name, manifest)
        validate_runtime_parameters(manifest.runtime, manifest.parameters, [f.relpath for f in files])
    validate_runtime_parameters("onnx", {"model_file": "model.onnx", "intra_op_num_threads": 4}, ["model.onnx"])


def test_every_builtin_runtime_declares_its_parameters_and_input_limits() -> None:
    from modelmarket.runtime.base import DEFAULT_INPUT_LIMITS, InputLimits
    from modelmarket.runtime.plugins import runtime_input_limits

    for name in ("onnx", "vader", "pocketsphinx"):
        cls = load_runtime_class(name)
        assert cls.parameter_names, name
        assert "validate_parameters" in vars(cls), name
        limits = runtime_input_limits(name)
        assert isinstance(limits, InputLimits) and limits is not DEFAULT_INPUT_LIMITS
        assert limits.max_element_bytes is not None and limits.max_call_bytes is not None
    assert runtime_input_limits("vader").max_element_bytes == 16 * 1024
    assert runtime_input_limits("vader").max_elements_per_call == 32


def test_input_limits_check_shape_needs_no_data() -> None:
    limits = load_runtime_class("onnx").input_limits
    assert limits.check_shape("pixels", [1024, 64]) == 65_536
    with pytest.raises(
        InvalidInput, match=r"input 'pixels': 16,777,280 elements in this call; the limit is 16,777,216"
    ):
        limits.check_shape("pixels", [262_145, 64])
    with pytest.raises(InvalidInput, match=r"input 'text': element 3 is 16,385 bytes; the limit is 16,384 bytes"):
        load_runtime_class("vader").input_limits.check_element_bytes("text", 3, 16_385)


def test_onnx_predict_enforces_its_limits(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelmarket.runtime.base import InputLimits

    runtime = loaded(demo_dir / "digits")
    pixels = np.zeros((4, 64), dtype=np.float32)
    assert len(runtime.predict([Tensor("pixels", "FP32", [4, 64], pixels)], {})) == 2
    monkeypatch.setattr(type(runtime), "input_limits", InputLimits(max_elements_per_call=255))
    with pytest.raises(InvalidInput, match=r"input 'pixels': 256 elements in this call; the limit is 255"):
        runtime.predict([Tensor("pixels", "FP32", [4, 64], pixels)], {})


def test_vader_word_count_counts_emoji_names() -> None:
    from modelmarket.runtime.runtimes.vader import vader_word_count

    names = {"\U0001f639": "cat face with tears of joy"}
    assert vader_word_count("I love it", names) == 3
    assert vader_word_count("I love it \U0001f639", names) == 9
    assert vader_word_count("\U0001f639\U0001f639", names) == 12


def test_vader_refuses_elements_too_long_to_score_quickly(demo_dir: Path) -> None:
    runtime = loaded(demo_dir / "sentiment")
    many_words = ("good " * 1001).encode()
    with pytest.raises(InvalidInput, match=r"input 'text': element 1 has 1,001 words .*the limit is 1,000 per"):
        runtime.predict([bytes_tensor("text", [b"fine", many_words])], {})
    emoji_bomb = ("\U0001f639" * 200).encode()  # 800 bytes, 1,200 words once VADER names each emoji
    assert len(emoji_bomb) < 1024
    with pytest.raises(InvalidInput, match=r"element 0 has 1,200 words \(an emoji counts as the words of its name\)"):
        runtime.predict([bytes_tensor("text", [emoji_bomb])], {})
    with pytest.raises(InvalidInput, match=r"element 0 is 16,385 bytes; the limit is 16,384"):
        runtime.predict([bytes_tensor("text", [b"a" * 16_385])], {})
    with pytest.raises(InvalidInput, match=r"input 'text': 33 elements in this call; the limit is 32"):
        runtime.predict([bytes_tensor("text", [b"ok"] * 33)], {})


def test_vader_worst_element_within_the_bound_is_well_under_a_second(demo_dir: Path) -> None:
    import time

    runtime = loaded(demo_dir / "sentiment")
    worst = ("\U0001f639" * 166).encode()  # 996 words: repeated sentiment-bearing emoji names, the costliest found
    best_s = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        runtime.predict([bytes_tensor("text", [worst])], {})
        best_s = min(best_s, time.perf_counter() - started)
    assert best_s < 1.0


def test_pocketsphinx_bounds_clip_and_call_durations(sphinx: Runtime) -> None:
    eleven_s = make_wav(np.zeros(11 * 16_000, dtype="<i2"), 16_000, channels=1)
    with pytest.raises(InvalidInput, match=r"audio element 0: audio is 11\.0 s long; the limit is 10 s"):
        sphinx.predict([bytes_tensor("audio", [eleven_s])], {})
    nine_s = make_wav(np.zeros(9 * 16_000, dtype="<i2"), 16_000, channels=1)
    with pytest.raises(InvalidInput, match=r"input 'audio': the call holds 36\.0 s of audio; the limit is 30 s"):
        sphinx.predict([bytes_tensor("audio", [nine_s] * 4)], {})
    short = make_wav(np.zeros(160, dtype="<i2"), 16_000, channels=1)
    with pytest.raises(InvalidInput, match=r"input 'audio': 17 elements in this call; the limit is 16"):
        sphinx.predict([bytes_tensor("audio", [short] * 17)], {})
