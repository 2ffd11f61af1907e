"""``modelmarket models card`` on a real home (SQLite store under MODELMARKET_HOME): the demo sentiment and
speech-to-text packages published, then their cards in every format, to stdout and to a file, by version and by
alias, and the errors for what does not exist."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from engines import developer_setting
from modelmarket.bootstrap import bootstrap
from modelmarket.cli.main import cli
from modelmarket.demo._files import PROVIDER
from modelmarket.demo._sentiment import build_sentiment
from modelmarket.demo._speech import EXAMPLE_WAV, build_speech


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Cli:
    def __init__(self, runner: CliRunner) -> None:
        self.runner = runner

    def run(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, f"modelmarket {' '.join(args)} exited {result.exit_code}:\n{result.output}"
        return result


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sentiment and speech-to-text demo packages (the speech one holds its spoken example)."""
    out = tmp_path_factory.mktemp("cards")
    return {
        "sentiment": build_sentiment(out / "sentiment", out / "examples", lambda _: None),
        "speech-to-text": build_speech(out / "speech-to-text", out / "examples", lambda _: None),
    }


@pytest.fixture()
def mm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packages: dict[str, Path]) -> Iterator[Cli]:
    for name in list(os.environ):
        if developer_setting(name):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MODELMARKET_HOME", str(tmp_path / "home"))
    runner = Cli(CliRunner())
    runner.run("accounts", "create", PROVIDER, "--role", "provider")
    platform = bootstrap()
    try:
        for package in packages.values():
            platform.registry.publish(package)
    finally:
        platform.close()
    yield runner


def card(mm: Cli, ref: str, *args: str) -> str:
    return mm.run("models", "card", ref, *args).stdout


def test_the_text_card_shows_the_sections_and_the_artifact_hashes(mm: Cli, packages: dict[str, Path]) -> None:
    text = card(mm, "sentiment")
    assert text.startswith("sentiment@1.0.0  (text-classification, text, MIT)\n")
    for title in ("MODEL DETAILS", "INTENDED USE", "FACTORS", "METRICS", "ETHICAL CONSIDERATIONS"):
        assert f"\n{title}\n" in text
    flat = " ".join(text.split())
    lexicon = packages["sentiment"] / "vader_lexicon.txt"
    assert f"vader_lexicon.txt ({lexicon.stat().st_size:,} bytes) sha256 {sha256_of(lexicon)}" in flat
    assert "Hutto" in flat and "sanity_accuracy = " in flat
    assert "Recommended fields left empty" not in flat  # the demo cards are complete


def test_the_json_card_is_the_published_version(mm: Cli, packages: dict[str, Path]) -> None:
    doc: dict[str, Any] = json.loads(card(mm, "speech-to-text@1.0.0", "--format", "json"))
    assert doc["ref"] == "speech-to-text@1.0.0" and doc["license"] == "BSD-2-Clause"
    assert doc["pipeline_tag"] == "automatic-speech-recognition"
    hashes = {a["path"]: a["sha256"] for a in doc["artifacts"]}
    assert hashes[EXAMPLE_WAV] == sha256_of(packages["speech-to-text"] / EXAMPLE_WAV)
    assert doc["card"]["details"]["parameter_count"] > 1_000_000
    assert doc["evaluation"] is None  # published directly, not through the gate
    assert doc["gaps"] == []
    show = json.loads(mm.run("models", "show", "speech-to-text", "--json").stdout)
    assert doc["digest"] == show["digest"]


def test_the_hf_card_is_written_to_a_file(mm: Cli, tmp_path: Path) -> None:
    target = tmp_path / "README.md"
    result = mm.run("models", "card", "sentiment", "--format", "hf", "--output", str(target))
    assert result.stdout.strip() == f"wrote the hf card of sentiment@1.0.0 to {target}"
    readme = target.read_text(encoding="utf-8")
    head, _, body = readme.removeprefix("---\n").partition("\n---\n")
    meta = yaml.safe_load(head)
    assert meta["license"] == "mit" and meta["language"] == ["en"]
    assert meta["pipeline_tag"] == "text-classification" and meta["library_name"] == "vaderSentiment"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["name"] == "sanity_accuracy"
    assert body.lstrip().startswith("# sentiment 1.0.0")
    assert "## Caveats and recommendations" in body


def test_the_cyclonedx_card_validates_and_holds_every_artifact_hash(mm: Cli, packages: dict[str, Path]) -> None:
    text = card(mm, "speech-to-text", "--format", "cyclonedx")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    (model,) = json.loads(text)["components"]
    assert model["type"] == "machine-learning-model" and model["version"] == "1.0.0"
    hashes = {c["name"]: c["hashes"][0]["content"] for c in model["components"]}
    package = packages["speech-to-text"]
    files = sorted(p for p in package.rglob("*") if p.is_file() and p.name != "modelmarket.yaml")
    assert hashes == {p.relative_to(package).as_posix(): sha256_of(p) for p in files}
    assert model["modelCard"]["modelParameters"]["task"] == "automatic-speech-recognition"


def test_a_card_by_alias_and_an_existing_output_file_replaced(mm: Cli, tmp_path: Path) -> None:
    mm.run("models", "alias", "sentiment", "stable", "1.0.0")
    target = tmp_path / "card.json"
    target.write_text("old")
    mm.run("models", "card", "sentiment@stable", "--format", "json", "-o", str(target))
    assert json.loads(target.read_text())["ref"] == "sentiment@1.0.0"


def test_what_does_not_exist_is_named(mm: Cli, tmp_path: Path) -> None:
    assert "model 'nope' is not published" in mm.run("models", "card", "nope", code=1).stderr
    missing = mm.run("models", "card", "sentiment@9.9.9", code=1).stderr
    assert "model 'sentiment' has no version or alias '9.9.9'" in missing
    folder = tmp_path / "out"
    folder.mkdir()
    refused = mm.run("models", "card", "sentiment", "--output", str(folder), code=1).stderr
    assert f"--output: {folder} is a directory" in refused and list(folder.iterdir()) == []
    nowhere = mm.run("models", "card", "sentiment", "-o", str(tmp_path / "no" / "README.md"), code=1).stderr
    assert "--output: the folder" in nowhere and "does not exist" in nowhere
    assert "Invalid value for '--format'" in mm.run("models", "card", "sentiment", "--format", "pdf", code=2).stderr
