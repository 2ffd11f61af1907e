"""The package manifest (modelmarket.yaml): the demo manifests validate; each mistake names its field."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelmarket.core.errors import InvalidInput
from modelmarket.registry.manifest import MANIFEST_NAME, load_manifest, parse_manifest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def digits_doc(demo_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((demo_dir / "digits" / MANIFEST_NAME).read_text(encoding="utf-8"))
    return copy.deepcopy(doc)


def test_demo_manifests_validate(demo_dir: Path) -> None:
    digits = load_manifest(demo_dir / "digits")
    assert (digits.name, digits.version, digits.runtime, digits.provider) == (
        "digits",
        "1.0.0",
        "onnx",
        "demo-provider",
    )
    assert digits.semver == (1, 0, 0)
    assert [(t.name, t.datatype, t.shape) for t in digits.inputs] == [("pixels", "FP32", [-1, 64])]
    assert digits.pricing.unit == "image"
    assert digits.pricing.price_per_iu == Decimal("0.0010")
    assert isinstance(digits.pricing.price_per_iu, Decimal)

    sentiment = load_manifest(demo_dir / "sentiment")
    assert sentiment.pricing.unit == "tokens_1k"
    assert [a.path for a in sentiment.artifacts] == ["vader_lexicon.txt", "emoji_utf8_lexicon.txt"]

    speech = load_manifest(demo_dir / "speech-to-text")
    assert speech.pricing.unit == "audio_minute"
    assert speech.modality == "audio"
    assert "en-us" in [a.path for a in speech.artifacts]


def test_manifest_json_round_trips_through_parse(demo_dir: Path) -> None:
    manifest = load_manifest(demo_dir / "sentiment")
    doc = manifest.to_json()
    assert doc["pricing"]["price_per_iu"] == "0.0200"  # exact decimal as a string, not a float
    assert parse_manifest(doc) == manifest


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b[0].c`` in a nested document."""
    node: Any = doc
    parts = path.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


def drop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        head, _, key = path.rpartition(".")
        node = doc
        for part in filter(None, head.split(".")):
            node = node[part]
        del node[key]

    return edit


def put(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: set_path(doc, path, value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (put("pricing.price_per_iu", "cheap"), r"pricing\.price_per_iu: 'cheap' is not a decimal number"),
        (put("pricing.price_per_iu", "-0.01"), r"pricing\.price_per_iu: must not be negative"),
        (put("pricing.price_per_iu", "NaN"), r"pricing\.price_per_iu: .*not a finite number"),
        (put("pricing.price_per_iu", 0.001), r"pricing\.price_per_iu: .*not a float"),
        (put("pricing.unit", "tokens"), r"pricing\.unit: "),
        (put("pricing.currency", "usd"), r"pricing\.currency: "),
        (put("pricing.discount", "10%"), r"pricing\.discount: unknown field"),
        (put("version", "1.0"), r"version: '1\.0' is not a semantic version"),
        (put("version", "v1.0.0"), r"version: 'v1\.0\.0' is not a semantic version"),
        (put("name", "Digits"), r"name: must be lowercase"),
        (put("modality", "video"), r"modality: "),
        (put("inputs[0].datatype", "FLOAT32"), r"inputs\[0\]\.datatype: "),
        (put("inputs[0].shape", [0, 64]), r"inputs\[0\]\.shape: dimension 0 is invalid"),
        (put("inputs[0].shape", [-2]), r"inputs\[0\]\.shape: dimension -2 is invalid"),
        (put("outputs[1].shape", []), r"outputs\[1\]\.shape: "),
        (
            put("artifacts[0].path", "../model.onnx"),
            r"artifacts\[0\]\.path: must be a path inside the package",
        ),
        (put("artifacts[0].path", "/etc/passwd"), r"artifacts\[0\]\.path: must be a path inside the package"),
        (put("artifacts", []), r"artifacts: "),
        (put("card.summary", ""), r"card\.summary: "),
        (put("homepage", "https://example.com"), r"homepage: unknown field"),
        (drop("license"), r"license: Field required"),
        (drop("pricing.currency"), r"pricing\.currency: Field required"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malformed_manifest_names_the_field(
    digits_doc: dict[str, Any], edit: Callable[[dict[str, Any]], None], expected: str
) -> None:
    edit(digits_doc)
    with pytest.raises(InvalidInput, match=expected) as info:
        parse_manifest(digits_doc, "pkg/modelmarket.yaml")
    assert info.value.message.startswith("pkg/modelmarket.yaml: ")


def test_every_problem_is_reported_at_once(digits_doc: dict[str, Any]) -> None:
    digits_doc["version"] = "one"
    digits_doc["inputs"][0]["datatype"] = "STRING"
    digits_doc["extra"] = 1
    with pytest.raises(InvalidInput) as info:
        parse_manifest(digits_doc)
    message = info.value.message
    for field in ("version:", "inputs[0].datatype:", "extra: unknown field"):
        assert field in message


def write_package(tmp_path: Path, demo_dir: Path, text: str) -> Path:
    package = tmp_path / "digits"
    shutil.copytree(demo_dir / "digits", package)
    (package / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return package


def test_unquoted_yaml_price_is_a_float_and_is_refused(tmp_path: Path, demo_dir: Path) -> None:
    text = (demo_dir / "digits" / MANIFEST_NAME).read_text(encoding="utf-8")
    assert "price_per_iu: '0.0010'" in text
    package = write_package(tmp_path, demo_dir, text.replace("price_per_iu: '0.0010'", "price_per_iu: 0.0010"))
    with pytest.raises(InvalidInput, match=r"pricing\.price_per_iu: .*quoted decimal string, not a float"):
        load_manifest(package)


def test_integer_price_is_exact(digits_doc: dict[str, Any]) -> None:
    digits_doc["pricing"]["price_per_iu"] = 2
    assert parse_manifest(digits_doc).pricing.price_per_iu == Decimal(2)


@pytest.mark.parametrize("text", ["- name: digits\n- version: 1.0.0\n", "just a string\n", "42\n", ""])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, demo_dir: Path, text: str) -> None:
    package = write_package(tmp_path, demo_dir, text)
    with pytest.raises(InvalidInput, match="the manifest must be a YAML mapping of fields"):
        load_manifest(package)


def test_invalid_yaml(tmp_path: Path, demo_dir: Path) -> None:
    package = write_package(tmp_path, demo_dir, "name: digits\nversion: [1.0.0\n")
    with pytest.raises(InvalidInput, match=r"modelmarket\.yaml: not valid YAML"):
        load_manifest(package)


def test_missing_manifest_file(tmp_path: Path, demo_dir: Path) -> None:
    package = tmp_path / "digits"
    shutil.copytree(demo_dir / "digits", package)
    (package / MANIFEST_NAME).unlink()
    with pytest.raises(InvalidInput, match=r"no modelmarket\.yaml in the package folder"):
        load_manifest(package)


def test_package_that_is_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a directory"):
        load_manifest(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("price", "words"),
    [("0.00000000001", "at most 10 digits after the decimal point"), ("1000000000000", "must be less than")],
)
def test_price_precision_and_size_are_bounded(price: str, words: str) -> None:
    from modelmarket.registry.manifest import Manifest

    doc = {
        "name": "m",
        "version": "1.0.0",
        "task": "t",
        "modality": "text",
        "runtime": "vader",
        "provider": "p",
        "license": "MIT",
        "artifacts": [{"path": "a"}],
        "inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}],
        "pricing": {"unit": "request", "price_per_iu": price, "currency": "USD"},
        "card": {"summary": "s"},
    }
    with pytest.raises(InvalidInput, match=f"pricing.price_per_iu: .*{words}"):
        parse_manifest(doc)
    doc["pricing"]["price_per_iu"] = "0.0000000001"
    assert isinstance(parse_manifest(doc), Manifest)
