"""The package manifest (modelmarket.yaml): the demo manifests validate; each mistake names its field."""

from __future__ import annotations

import copy
import re
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


# -- bounds and one canonical form (trust: a manifest is untrusted data)


def minimal_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
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
        "pricing": {"unit": "request", "price_per_iu": "0.01", "currency": "USD"},
        "card": {"summary": "s"},
    }
    doc.update(changes)
    return doc


def test_version_components_are_bounded() -> None:
    assert parse_manifest(minimal_doc(version="999999999.999999999.999999999")).semver == (999_999_999,) * 3
    for version in ("1000000000.0.0", "1.0.10000000000", "1.0." + "9" * 5000):
        with pytest.raises(InvalidInput, match=r"version: .*each be at most 999,999,999") as info:
            parse_manifest(minimal_doc(version=version))
        assert len(info.value.message) < 300  # a 5,000-digit value is not echoed whole


@pytest.mark.parametrize("price", ["0", "2", "0.0010", "12.5", "0.0000001", "0.0000000001", "999999999999.9"])
def test_canonical_prices_are_kept_exactly_as_written(price: str) -> None:
    manifest = parse_manifest(minimal_doc(pricing={"unit": "request", "price_per_iu": price, "currency": "USD"}))
    assert manifest.pricing.price_per_iu == Decimal(price)
    assert manifest.pricing.price_text == price
    assert manifest.to_json()["pricing"]["price_per_iu"] == price  # never "1E-7"
    assert parse_manifest(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    ("price", "words"),
    [
        ("-0", "must not be negative"),
        ("-0.0", "must not be negative"),
        ("1E+2", "plain decimal digits"),
        ("1e2", "plain decimal digits"),
        ("1_0", "plain decimal digits"),
        ("+1", "plain decimal digits"),
        (" 1", "plain decimal digits"),
        ("01", "plain decimal digits"),
        (".5", "plain decimal digits"),
        ("5.", "plain decimal digits"),
        ("\u0661", "plain decimal digits"),  # ARABIC-INDIC DIGIT ONE: Decimal() would accept it
        ("Infinity", "not a finite number"),
        ("sNaN", "not a finite number"),
        (True, "not bool"),
        ([1], "not list"),
        (-1, "must not be negative"),
        pytest.param(10**5000, "must be less than", id="a-5000-digit-int"),
    ],
)
def test_prices_in_any_other_form_are_refused(price: Any, words: str) -> None:
    doc = minimal_doc(pricing={"unit": "request", "price_per_iu": price, "currency": "USD"})
    with pytest.raises(InvalidInput, match=rf"pricing\.price_per_iu: .*{re.escape(words)}"):
        parse_manifest(doc)


@pytest.mark.parametrize(
    ("currency", "words"),
    [("XXX", "has no minor unit"), ("ABC", "not an ISO 4217 currency code"), ("DEM", "no longer in use")],
)
def test_currency_must_be_a_current_iso_4217_code(currency: str, words: str) -> None:
    doc = minimal_doc(pricing={"unit": "request", "price_per_iu": "1", "currency": currency})
    with pytest.raises(InvalidInput, match=rf"pricing\.currency: '{currency}' .*{words}"):
        parse_manifest(doc)
    doc["pricing"]["currency"] = "JPY"
    assert parse_manifest(doc).pricing.currency == "JPY"


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("license", "x" * 201, "license"),
        ("task", "x" * 101, "task"),
        ("runtime", "x" * 101, "runtime"),
        ("provider", "x" * 101, "provider"),
        ("card", {"summary": "s", "description": "x" * 20_001}, r"card\.description"),
        ("card", {"summary": "s", "limitations": "x" * 20_001}, r"card\.limitations"),
        ("card", {"summary": "s", "metrics": [{"name": "m", "value": "1"}] * 101}, r"card\.metrics"),
        ("card", {"summary": "s", "metrics": [{"name": "m", "value": "1" * 101}]}, r"card\.metrics\[0\]\.value"),
        ("artifacts", [{"path": f"f{i}"} for i in range(1001)], "artifacts"),
        ("inputs", [{"name": f"x{i}", "datatype": "BYTES", "shape": [-1]} for i in range(65)], "inputs"),
        ("parameters", {f"p{i}": i for i in range(65)}, "parameters"),
        ("parameters", {"blob": "x" * 20_000}, r"parameters: .*bytes as JSON; the limit is 16,384"),
    ],
)
def test_text_and_list_fields_are_bounded(field: str, value: Any, where: str) -> None:
    with pytest.raises(InvalidInput, match=rf"{where}(\.|\[|:|$)"):
        parse_manifest(minimal_doc(**{field: value}))


def load_text(tmp_path: Path, text: str | bytes) -> Any:
    package = tmp_path / "pkg"
    package.mkdir(exist_ok=True)
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    (package / MANIFEST_NAME).write_bytes(data)
    return load_manifest(package)


def test_yaml_aliases_are_refused_before_they_expand(tmp_path: Path) -> None:
    # Nine levels of ten aliases each: 10**9 strings once expanded, from a file of about a kilobyte.
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    text = "\n".join(lines) + "\n"
    assert len(text) < 2048
    with pytest.raises(InvalidInput, match=r"line 1: YAML anchors and aliases \(&name, \*name\) are not allowed"):
        load_text(tmp_path, text)


def test_yaml_merge_keys_and_plain_aliases_are_refused(digits_doc: dict[str, Any], tmp_path: Path) -> None:
    text = yaml.safe_dump(digits_doc, sort_keys=False)
    assert isinstance(load_text(tmp_path, text).name, str)
    merged = text.replace("card:", "base: &base {unit: image}\ncard:")
    with pytest.raises(InvalidInput, match="anchors and aliases"):
        load_text(tmp_path, merged)
    inline_merge = text.replace("card:", "<<: {extra: 1}\ncard:")
    with pytest.raises(InvalidInput, match=r"merge keys \('<<'\) are not allowed"):
        load_text(tmp_path, inline_merge)
    aliased = "x: &x 1\n" + text.replace("name: digits", "name: *x")
    with pytest.raises(InvalidInput, match=r"line 1: .*anchors and aliases"):
        load_text(tmp_path, aliased)


def test_a_key_given_twice_is_refused(digits_doc: dict[str, Any], tmp_path: Path) -> None:
    text = yaml.safe_dump(digits_doc, sort_keys=False) + "name: someone-else\n"
    with pytest.raises(InvalidInput, match=r"line \d+: key 'name' is given twice"):
        load_text(tmp_path, text)


@pytest.mark.parametrize("spelling", ["0x40", "0100", "6_4", "1:04", "+64", "0b1000000"])
def test_integers_in_other_yaml_spellings_are_refused(
    digits_doc: dict[str, Any], tmp_path: Path, spelling: str
) -> None:
    text = yaml.safe_dump(digits_doc, sort_keys=False).replace("- 64", f"- {spelling}", 1)
    assert spelling in text
    with pytest.raises(InvalidInput, match=rf"write the integer '{re.escape(spelling)}' in plain decimal digits"):
        load_text(tmp_path, text)


def test_an_unquoted_yaml_price_with_underscores_is_refused(digits_doc: dict[str, Any], tmp_path: Path) -> None:
    text = yaml.safe_dump(digits_doc, sort_keys=False).replace("price_per_iu: '0.0010'", "price_per_iu: 1_0")
    with pytest.raises(InvalidInput, match="plain decimal digits"):  # plain YAML would read it as 10
        load_text(tmp_path, text)


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="nested more than 32 levels deep"):
        load_text(tmp_path, "parameters: " + "[" * 5000 + "]" * 5000 + "\n")


def test_the_manifest_file_size_is_bounded(digits_doc: dict[str, Any], tmp_path: Path) -> None:
    from modelmarket.registry.manifest import MAX_MANIFEST_BYTES

    text = yaml.safe_dump(digits_doc, sort_keys=False)
    padded = text + "#" * (MAX_MANIFEST_BYTES - len(text) - 1) + "\n"
    assert len(padded) == MAX_MANIFEST_BYTES
    assert load_text(tmp_path, padded).name == "digits"
    with pytest.raises(InvalidInput, match=r"larger than the limit of 262,144 bytes for a manifest"):
        load_text(tmp_path, padded + "#")


def test_a_manifest_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"not UTF-8 text \(byte 6 cannot be decoded\)"):
        load_text(tmp_path, b"name: \xff\xfe\n")
