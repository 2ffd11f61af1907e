"""Publishing pipelines through the registry on a real store: refused unless every step resolves and fits, the
demo pipeline accepted, nothing stored for a refused one, and model versions keeping their digests."""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from modelmarket.adapters.store import SqlStore
from modelmarket.adapters.store import schema as t
from modelmarket.audit import chain as audit
from modelmarket.bootstrap import Platform, PluginRuntimes, bootstrap
from modelmarket.core.errors import InvalidInput
from modelmarket.core.tensors import TensorSpec
from modelmarket.registry import CatalogueLoader
from modelmarket.registry.manifest import MANIFEST_NAME
from modelmarket.settings import Settings

pytestmark = pytest.mark.timeout(180)

PROVIDER = "demo-provider"
NOW = datetime(2026, 1, 20, 9, 30, tzinfo=UTC)
_copies = itertools.count(1)


@pytest.fixture()
def platform(store: SqlStore, tmp_path: Path) -> Platform:
    plat = bootstrap(Settings(home=tmp_path / "home"), store=store, clock=lambda: NOW, runtimes=PluginRuntimes())
    plat.accounts.create(PROVIDER, "provider")
    return plat


def edited(demo_dir: Path, name: str, tmp_path: Path, edit: Any = None) -> Path:
    """A private copy of a demo package, its manifest changed by ``edit(doc)``."""
    dest = tmp_path / "packages" / f"{name}-{next(_copies)}"
    shutil.copytree(demo_dir / name, dest)
    if edit is not None:
        path = dest / MANIFEST_NAME
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        edit(doc)
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return dest


def publish_steps(platform: Platform, demo_dir: Path) -> None:
    for name in ("speech-to-text", "sentiment"):
        assert platform.registry.publish(demo_dir / name).created


def count(store: SqlStore, table: Any) -> int:
    with store.read() as uow:
        return int(uow.conn.execute(select(func.count()).select_from(table)).scalar_one())


def refused(platform: Platform, store: SqlStore, package: Path) -> str:
    before = [count(store, table) for table in (t.models, t.model_versions, t.audit_log)]
    with pytest.raises(InvalidInput) as info:
        platform.registry.publish(package)
    assert [count(store, table) for table in (t.models, t.model_versions, t.audit_log)] == before  # nothing stored
    return info.value.message


def test_the_demo_pipeline_publishes_after_its_steps(platform: Platform, store: SqlStore, demo_dir: Path) -> None:
    publish_steps(platform, demo_dir)
    blobs_before = count(store, t.artifacts)
    result = platform.registry.publish(demo_dir / "voice-sentiment", actor="alice")
    assert result.created
    version = result.version
    assert version.is_pipeline and not version.needs_runner and version.artifacts == ()
    assert version.inputs == (TensorSpec("audio", "BYTES", (-1,)),)
    assert [o.name for o in version.outputs] == ["text", "label", "scores"]
    assert count(store, t.artifacts) == blobs_before
    steps = version.manifest.steps
    assert steps is not None and [(s.id, s.model) for s in steps] == [
        ("transcribe", "speech-to-text"),
        ("classify", "sentiment"),
    ]

    catalogue = CatalogueLoader(platform.store).load()
    stored = catalogue.resolve("voice-sentiment")
    assert stored.manifest == version.manifest and stored.digest == version.digest
    assert stored.manifest.steps == steps  # the references as written, resolved on each call
    assert catalogue.resolve("sentiment").needs_runner and catalogue.resolve("speech-to-text").needs_runner
    with store.read() as uow:
        record = next(r for r in audit.list_records(uow.audit, limit=100) if r.subject == "voice-sentiment@1.0.0")
    assert record.action == "model.published"
    assert record.payload["steps"] == {"transcribe": "speech-to-text", "classify": "sentiment"}

    again = platform.registry.publish(demo_dir / "voice-sentiment")
    assert not again.created and again.version.digest == version.digest


def test_a_pipeline_is_refused_until_its_step_models_are_published(
    platform: Platform, store: SqlStore, demo_dir: Path, tmp_path: Path
) -> None:
    assert platform.registry.publish(demo_dir / "speech-to-text").created
    message = refused(platform, store, demo_dir / "voice-sentiment")
    assert message.startswith(
        "steps[1].model: model 'sentiment' is not published (step 'classify'): publish the model first"
    )
    assert platform.registry.publish(demo_dir / "sentiment").created

    def pin_missing_version(doc: dict[str, Any]) -> None:
        doc["steps"][1]["model"] = "sentiment@2.0.0"

    message = refused(platform, store, edited(demo_dir, "voice-sentiment", tmp_path, pin_missing_version))
    assert "steps[1].model: model 'sentiment' has no version or alias '2.0.0' (step 'classify')" in message
    assert platform.registry.publish(demo_dir / "voice-sentiment").created


def test_a_mapping_must_name_the_step_models_inputs(
    platform: Platform, store: SqlStore, demo_dir: Path, tmp_path: Path
) -> None:
    publish_steps(platform, demo_dir)

    def unknown_input(doc: dict[str, Any]) -> None:
        doc["steps"][1]["inputs"] = {"txt": "transcribe.text"}

    message = refused(platform, store, edited(demo_dir, "voice-sentiment", tmp_path, unknown_input))
    assert message.startswith(
        "steps[1].inputs.txt: sentiment@1.0.0 (step 'classify') has no input 'txt' (its inputs: text)"
    )

    def unknown_output(doc: dict[str, Any]) -> None:
        doc["steps"][1]["inputs"] = {"text": "transcribe.transcript"}

    message = refused(platform, store, edited(demo_dir, "voice-sentiment", tmp_path, unknown_output))
    assert message.startswith("steps[1].inputs.text: step 'transcribe' (speech-to-text@1.0.0) has no output")


def test_datatypes_must_match_along_every_mapping(
    platform: Platform, store: SqlStore, demo_dir: Path, tmp_path: Path
) -> None:
    publish_steps(platform, demo_dir)

    def float_audio(doc: dict[str, Any]) -> None:
        doc["inputs"][0]["datatype"] = "FP32"

    message = refused(platform, store, edited(demo_dir, "voice-sentiment", tmp_path, float_audio))
    assert message.startswith(
        "steps[0].inputs.audio: 'input.audio' is FP32 but input 'audio' of speech-to-text@1.0.0 (step "
        "'transcribe') is BYTES"
    )

    def scores_as_label(doc: dict[str, Any]) -> None:
        doc["outputs_from"]["label"] = "classify.scores"

    message = refused(platform, store, edited(demo_dir, "voice-sentiment", tmp_path, scores_as_label))
    assert message.startswith("outputs_from.label: 'classify.scores' is FP32 but output 'label' (outputs[1]) is BYTES")


def test_a_pipeline_may_not_be_a_step(platform: Platform, store: SqlStore, demo_dir: Path, tmp_path: Path) -> None:
    publish_steps(platform, demo_dir)
    assert platform.registry.publish(demo_dir / "voice-sentiment").created

    def nested(doc: dict[str, Any]) -> None:
        doc["name"] = "voice-sentiment-twice"
        doc["steps"][0]["model"] = "voice-sentiment"
        doc["steps"][0]["inputs"] = {"audio": "input.audio"}

    message = refused(platform, store, edited(demo_dir, "voice-sentiment", tmp_path, nested))
    assert message.startswith("steps[0].model: voice-sentiment@1.0.0 (step 'transcribe') is a pipeline")


def test_model_versions_keep_their_serialised_form_and_digest(
    platform: Platform, store: SqlStore, demo_dir: Path, tmp_path: Path
) -> None:
    first = platform.registry.publish(demo_dir / "sentiment").version
    with store.read() as uow:
        stored = uow.registry.version("sentiment", "1.0.0")
    assert stored is not None
    assert not {"kind", "steps", "outputs_from"} & json.loads(stored.manifest_json).keys()

    def explicit_kind(doc: dict[str, Any]) -> None:
        doc["kind"] = "model"

    again = platform.registry.publish(edited(demo_dir, "sentiment", tmp_path, explicit_kind))
    assert not again.created and again.version.digest == first.digest  # same digest: a no-op, not a conflict
