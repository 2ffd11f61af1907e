"""Pipeline manifests (``kind: pipeline``): the schema, the step graph, each mistake named by its field; model
manifests keep their serialised form and digest; the publish-time checks of each step against its model."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.demo._pipeline import voice_sentiment_manifest
from modelmarket.registry.catalogue import ArtifactRecord, VersionRecord
from modelmarket.registry.manifest import (
    MANIFEST_NAME,
    Source,
    load_manifest,
    parse_manifest,
    parse_source,
    split_model_ref,
)
from modelmarket.registry.service import check_pipeline_steps, shapes_compatible, version_digest

MODEL_DOC: dict[str, Any] = {
    "name": "echo",
    "version": "1.2.3",
    "task": "text-classification",
    "modality": "text",
    "runtime": "vader",
    "provider": "demo-provider",
    "license": "MIT",
    "artifacts": [{"path": "lexicon.txt"}],
    "parameters": {"lexicon": "lexicon.txt"},
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]}],
    "pricing": {"unit": "tokens_1k", "price_per_iu": "0.0200", "currency": "USD"},
    "card": {"summary": "s"},
}
MODEL_ARTIFACTS = (ArtifactRecord("lexicon.txt", "ab" * 32, 10),)
MODEL_DIGEST = "5928451f3d1ff3f836f9f7707a09744d96c04e407aa9686b5c5197b9b1728512"
"""``version_digest`` of MODEL_DOC as computed before pipelines existed: published versions keep their digest."""


def pipeline_doc() -> dict[str, Any]:
    return copy.deepcopy(voice_sentiment_manifest())


def refused(doc: dict[str, Any]) -> str:
    with pytest.raises(InvalidInput) as info:
        parse_manifest(doc)
    return info.value.message


# -- models are unchanged --------------------------------------------------------------------------------


def test_a_model_manifest_serialises_and_digests_as_before() -> None:
    manifest = parse_manifest(copy.deepcopy(MODEL_DOC))
    assert manifest.kind == "model" and not manifest.is_pipeline
    assert manifest.steps is None and manifest.outputs_from is None
    doc = manifest.to_json()
    assert not {"kind", "steps", "outputs_from"} & doc.keys()
    assert version_digest(manifest, MODEL_ARTIFACTS) == MODEL_DIGEST
    explicit = parse_manifest({**copy.deepcopy(MODEL_DOC), "kind": "model"})
    assert explicit == manifest
    assert version_digest(explicit, MODEL_ARTIFACTS) == MODEL_DIGEST


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"steps": [{"id": "a", "model": "m", "inputs": {"x": "input.text"}}]}, r"steps: only with kind 'pipeline'"),
        ({"outputs_from": {"label": "a.label"}}, r"outputs_from: only with kind 'pipeline'"),
        ({"runtime": "pipeline"}, r"runtime: 'pipeline' is only for kind 'pipeline'"),
        ({"artifacts": []}, r"artifacts: List should have at least 1 item"),
        ({"kind": "service"}, r"kind: Input should be 'model' or 'pipeline'"),
    ],
)
def test_model_mistakes_name_their_field(changes: dict[str, Any], pattern: str) -> None:
    assert re.search(pattern, refused({**copy.deepcopy(MODEL_DOC), **changes}))


# -- the pipeline schema ---------------------------------------------------------------------------------


def test_the_demo_pipeline_manifest_validates() -> None:
    manifest = parse_manifest(pipeline_doc())
    assert (manifest.kind, manifest.runtime, manifest.artifacts, manifest.parameters) == (
        "pipeline",
        "pipeline",
        [],
        {},
    )
    assert manifest.is_pipeline
    assert manifest.steps is not None and manifest.outputs_from is not None
    transcribe, classify = manifest.steps
    assert (transcribe.id, transcribe.model_name, transcribe.model_ref) == ("transcribe", "speech-to-text", None)
    assert transcribe.sources == {"audio": Source(None, "audio")} and transcribe.after == frozenset()
    assert classify.sources == {"text": Source("transcribe", "text")} and classify.after == {"transcribe"}
    assert manifest.outputs_from == {"text": "transcribe.text", "label": "classify.label", "scores": "classify.scores"}
    assert str(manifest.pricing.price_per_iu) == "0.0010" and manifest.pricing.unit == "request"


def test_a_pipeline_round_trips_through_its_json_and_yaml(tmp_path: Path) -> None:
    doc = pipeline_doc()
    del doc["runtime"]  # defaults to pipeline
    manifest = parse_manifest(doc)
    assert manifest.runtime == "pipeline"
    as_json = manifest.to_json()
    assert as_json["kind"] == "pipeline" and as_json["steps"][1]["model"] == "sentiment"
    assert parse_manifest(as_json) == manifest
    (tmp_path / MANIFEST_NAME).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    assert load_manifest(tmp_path) == manifest


def test_step_model_references_and_sources_parse() -> None:
    assert split_model_ref("sentiment") == ("sentiment", None)
    assert split_model_ref("sentiment@1.0.0") == ("sentiment", "1.0.0")
    assert split_model_ref("sentiment@stable") == ("sentiment", "stable")
    assert parse_source("input.audio") == Source(None, "audio")
    assert parse_source("transcribe.text.v2") == Source("transcribe", "text.v2")  # a tensor name may hold dots
    assert str(Source(None, "audio")) == "input.audio" and str(Source("a", "b")) == "a.b"
    with pytest.raises(ValueError, match=r"must be '<step id>\.<output>'"):
        parse_source("transcribe")


_DROP = object()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``steps/0/id``; ``inputs/+`` appends; the value ``_DROP`` deletes."""

    def edit(doc: dict[str, Any]) -> None:
        node: Any = doc
        parts = path.split("/")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        last = parts[-1]
        if last == "+":
            node.append(value)
        elif value is _DROP:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return edit


TRANSCRIBE = {"id": "transcribe", "model": "speech-to-text", "inputs": {"audio": "input.audio"}}


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (_set("steps", []), r"steps: List should have at least 1 item"),
        (_set("steps", [TRANSCRIBE] * 17), r"steps: List should have at most 16 items"),
        (_set("steps", _DROP), r"steps: Field required with kind 'pipeline'"),
        (_set("outputs_from", _DROP), r"outputs_from: Field required with kind 'pipeline'"),
        (_set("steps/0/id", "Transcribe"), r"steps\[0\]\.id: 'Transcribe' must be 1-32 lowercase letters"),
        (_set("steps/0/id", "t" * 33), r"steps\[0\]\.id: '.*' must be 1-32"),
        (_set("steps/0/id", "input"), r"steps\[0\]\.id: 'input' names the pipeline's own inputs"),
        (_set("steps/1/id", "transcribe"), r"steps\[1\]\.id: 'transcribe' is the id of steps\[0\] too"),
        (_set("steps/1/model", "Sentiment"), r"steps\[1\]\.model: 'Sentiment' must be a model name"),
        (_set("steps/1/model", "sentiment@1.0"), r"steps\[1\]\.model: 'sentiment@1\.0' must be a model name"),
        (_set("steps/1/inputs", {}), r"steps\[1\]\.inputs: Dictionary should have at least 1 item"),
        (_set("steps/1/inputs/text", "transcribe"), r"steps\[1\]\.inputs\.text: 'transcribe' must be '<step id>"),
        (_set("steps/1/inputs/text", "classify.text"), r"steps\[1\]\.inputs\.text: a step may not use its own"),
        (_set("steps/1/inputs/text", "later.text"), r"steps\[1\]\.inputs\.text: no step has the id 'later'"),
        (_set("steps/0/inputs/audio", "classify.text"), r"steps\[0\]\.inputs\.audio: step 'classify' runs after"),
        (_set("steps/0/inputs/audio", "input.wav"), r"steps\[0\]\.inputs\.audio: the pipeline declares no input 'wav'"),
        (
            _set("inputs/+", {"name": "lang", "datatype": "BYTES", "shape": [-1]}),
            r"inputs\[1\]\.name: pipeline input 'lang' is used by no step",
        ),
        (_set("outputs_from/scores", _DROP), r"outputs_from: output 'scores' \(outputs\[2\]\) is not mapped"),
        (_set("outputs_from/extra", "classify.scores"), r"outputs_from\.extra: no declared output 'extra'"),
        (_set("outputs_from/text", "input.audio"), r"outputs_from\.text: a pipeline output comes from a step"),
        (_set("outputs_from/text", "nope.text"), r"outputs_from\.text: no step has the id 'nope'"),
        (_set("outputs_from/text", "nope"), r"outputs_from\.text: 'nope' must be '<step id>"),
        (
            _set("steps/+", {"id": "idle", "model": "sentiment", "inputs": {"text": "transcribe.text"}}),
            r"steps\[2\]: step 'idle' feeds no later step and no output",
        ),
        (_set("parameters", {"lexicon": "x"}), r"parameters: a pipeline takes no parameters"),
        (_set("runtime", "vader"), r"runtime: must be 'pipeline' with kind 'pipeline'"),
        (_set("steps/0/extra", 1), r"steps\[0\]\.extra: unknown field"),
    ],
)
def test_pipeline_mistakes_name_their_field(edit: Callable[[dict[str, Any]], None], pattern: str) -> None:
    doc = pipeline_doc()
    edit(doc)
    message = refused(doc)
    assert re.search(pattern, message), message
    assert message.startswith(f"{MANIFEST_NAME}: ")


# -- publish-time checks of each step against its model --------------------------------------------------


def model_version(
    name: str, inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]]
) -> VersionRecord:
    doc = {
        **copy.deepcopy(MODEL_DOC),
        "name": name,
        "version": "1.0.0",
        "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in inputs],
        "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in outputs],
    }
    return VersionRecord("ver_" + name, name, "1.0.0", "d" * 64, parse_manifest(doc), "acc_p", (), "2026-01-01")


SPEECH = model_version("speech-to-text", [("audio", "BYTES", [-1])], [("text", "BYTES", [-1])])
SENTIMENT = model_version(
    "sentiment", [("text", "BYTES", [-1])], [("scores", "FP32", [-1, 4]), ("label", "BYTES", [-1])]
)


def resolver(*versions: VersionRecord) -> Callable[[str, str | None], VersionRecord]:
    by_name = {v.model_name: v for v in versions}

    def resolve(name: str, ref: str | None) -> VersionRecord:
        if name not in by_name:
            raise NotFound(f"model {name!r} is not published")
        if ref not in (None, "latest", by_name[name].version):
            raise NotFound(f"model {name!r} has no version or alias {ref!r}")
        return by_name[name]

    return resolve


def steps_refused(doc: dict[str, Any], *versions: VersionRecord) -> str:
    with pytest.raises(InvalidInput) as info:
        check_pipeline_steps(parse_manifest(doc), resolver(*versions))
    return info.value.message


def test_the_demo_pipeline_fits_its_step_models() -> None:
    check_pipeline_steps(parse_manifest(pipeline_doc()), resolver(SPEECH, SENTIMENT))


def test_each_step_is_checked_against_its_model() -> None:
    doc = pipeline_doc()
    assert steps_refused(doc, SPEECH).startswith(
        "steps[1].model: model 'sentiment' is not published (step 'classify'): publish the model first"
    )
    doc["steps"][1]["model"] = "sentiment@2.0.0"
    assert "steps[1].model: model 'sentiment' has no version or alias '2.0.0'" in steps_refused(doc, SPEECH, SENTIMENT)

    doc = pipeline_doc()
    doc["steps"][1]["inputs"] = {"txt": "transcribe.text"}
    assert steps_refused(doc, SPEECH, SENTIMENT).startswith(
        "steps[1].inputs.txt: sentiment@1.0.0 (step 'classify') has no input 'txt' (its inputs: text)"
    )

    two_inputs = model_version(
        "sentiment", [("text", "BYTES", [-1]), ("lang", "BYTES", [-1])], [("scores", "FP32", [-1, 4])]
    )
    assert steps_refused(pipeline_doc(), SPEECH, two_inputs).startswith(
        "steps[1].inputs: sentiment@1.0.0 (step 'classify') needs input(s) lang: give each a source"
    )


def test_sources_must_exist_and_match_datatype_and_shape() -> None:
    doc = pipeline_doc()
    doc["steps"][1]["inputs"] = {"text": "transcribe.words"}
    assert steps_refused(doc, SPEECH, SENTIMENT).startswith(
        "steps[1].inputs.text: step 'transcribe' (speech-to-text@1.0.0) has no output 'words' (its outputs: text)"
    )
    doc = pipeline_doc()
    doc["inputs"][0]["datatype"] = "FP32"
    assert steps_refused(doc, SPEECH, SENTIMENT).startswith(
        "steps[0].inputs.audio: 'input.audio' is FP32 but input 'audio' of speech-to-text@1.0.0 (step "
        "'transcribe') is BYTES"
    )
    doc = pipeline_doc()
    doc["outputs_from"]["label"] = "classify.scores"
    assert steps_refused(doc, SPEECH, SENTIMENT).startswith(
        "outputs_from.label: 'classify.scores' is FP32 but output 'label' (outputs[1]) is BYTES"
    )
    doc = pipeline_doc()
    doc["outputs"][2]["shape"] = [-1, 3]
    assert steps_refused(doc, SPEECH, SENTIMENT).startswith(
        "outputs_from.scores: 'classify.scores' has shape [-1, 4] but output 'scores' (outputs[2]) takes [-1, 3]"
    )
    doc = pipeline_doc()
    doc["outputs_from"]["text"] = "classify.words"
    assert "outputs_from.text: step 'classify' (sentiment@1.0.0) has no output 'words'" in steps_refused(
        doc, SPEECH, SENTIMENT
    )


def test_a_step_may_not_call_a_pipeline() -> None:
    nested = VersionRecord(
        "ver_vs", "speech-to-text", "1.0.0", "e" * 64, parse_manifest(pipeline_doc()), "acc_p", (), "2026-01-01"
    )
    assert steps_refused(pipeline_doc(), nested, SENTIMENT).startswith(
        "steps[0].model: speech-to-text@1.0.0 (step 'transcribe') is a pipeline: a step calls a model"
    )


def test_shapes_compatible() -> None:
    assert shapes_compatible((-1,), (-1,)) and shapes_compatible((2, 4), (-1, 4)) and shapes_compatible((3,), (-1,))
    assert not shapes_compatible((-1,), (-1, 4)) and not shapes_compatible((2, 4), (2, 3))


def test_needs_runner() -> None:
    pipeline = VersionRecord("v", "vs", "1.0.0", "d" * 64, parse_manifest(pipeline_doc()), "a", (), "t")
    assert pipeline.is_pipeline and not pipeline.needs_runner
    assert SENTIMENT.needs_runner and not SENTIMENT.is_pipeline
    upstream = parse_manifest({**copy.deepcopy(MODEL_DOC), "runtime": "upstream-openai"})
    assert not VersionRecord("v", "u", "1.2.3", "d" * 64, upstream, "a", (), "t").needs_runner
