"""Model cards: the schema (errors that name the field, bounds, the old form kept), the gaps and the operator's
required fields, and the exports: terminal text, a Hugging Face README.md and a CycloneDX ML-BOM that validates."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from modelmarket.core.errors import InvalidInput
from modelmarket.demo._pipeline import voice_sentiment_manifest
from modelmarket.registry.card import RECOMMENDED, Card, card_fields, card_gaps, card_required_problems
from modelmarket.registry.card_export import card_json, card_text, cyclonedx_mlbom, hf_front_matter, hf_readme
from modelmarket.registry.catalogue import ArtifactRecord, VersionRecord
from modelmarket.registry.manifest import parse_manifest

ORIGINAL_CARD: dict[str, Any] = {
    "summary": "Rule-based sentiment.",
    "description": "d",
    "intended_use": "u",
    "limitations": "l",
    "training_data": "t",
    "evaluation_data": "e",
    "metrics": [{"name": "acc", "value": "0.9", "dataset": "set"}, {"name": "f1", "value": "0.8"}],
}

FULL_CARD: dict[str, Any] = {
    **ORIGINAL_CARD,
    "metrics": [
        {"name": "accuracy", "value": "0.9123", "dataset": "held-out set"},
        {"name": "f1", "value": "0.88", "dataset": "held-out set"},
        {"name": "note", "value": "n/a"},
    ],
    "language": ["en", "pt-BR"],
    "tags": ["credit", "tabular"],
    "library_name": "sklearn",
    "details": {
        "developers": ["Acme Research"],
        "contact": "models@acme.example",
        "release_date": "2025-03-01",
        "model_type": "logistic regression",
        "architecture": "standardisation then a logistic regression",
        "parameter_count": 11,
        "paper": "A paper",
        "citation": "@misc{acme}",
    },
    "primary_users": ["loan officers"],
    "out_of_scope_uses": ["fully automated decisions"],
    "intended_tasks": ["score applications"],
    "acceptable_use_policy": "A person reviews every refusal.",
    "factors": {"relevant": "age, sex", "evaluation": "sex and age band"},
    "quantitative_analyses": "Per-group accuracy in the bias report.",
    "ethical_considerations": "Credit decisions affect people's lives.",
    "caveats_and_recommendations": "Re-check the thresholds yearly.",
    "training": {
        "methodology": "L2 logistic regression",
        "data_type": "tabular applications",
        "data_provenance": "generated",
        "data_curation": "none",
        "data_size": "4,000 rows",
    },
    "compute": {"hardware": "1 CPU core", "training_time": "2 s", "training_flops": "1.5e9", "notes": "estimated"},
    "energy": {"training_energy_kwh": 0.0005, "training_co2_kg": 0.0002, "source": "hydropower", "notes": "est."},
}

EVALUATION: dict[str, Any] = {
    "submission": "sub_123",
    "smoke_test": {"summary": "1 example answered as expected"},
    "benchmark": {
        "example": "first",
        "calls": 50,
        "p50_ms": 1.25,
        "p95_ms": 2.5,
        "throughput_rps": 400.0,
        "rss_mb": 80.5,
        "profile": "strict",
    },
    "bias": {
        "passed": True,
        "failures": [],
        "figures": {
            "rows": 2000,
            "accuracy": 0.91,
            "positive_label": "1",
            "thresholds": {"max_demographic_parity_difference": 0.1, "min_group_size": 30},
            "sensitive_features": {
                "sex": {
                    "demographic_parity_difference": 0.03,
                    "demographic_parity_ratio": 0.94,
                    "equalized_odds_difference": 0.04,
                    "groups": {
                        "F": {"count": 990, "selection_rate": 0.5, "accuracy": 0.9, "true_positive_rate": 0.9,
                              "false_positive_rate": 0.1},
                        "M": {"count": 1010, "selection_rate": 0.53, "accuracy": 0.92, "true_positive_rate": None,
                              "false_positive_rate": 0.12},
                    },
                }
            },
        },
    },
}  # fmt: skip

SHA_A = "ab" * 32
SHA_B = "cd" * 32


def manifest_doc(card: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "credit",
        "version": "1.2.0",
        "task": "tabular-classification",
        "modality": "tabular",
        "runtime": "onnx",
        "provider": "acme",
        "license": "MIT",
        "artifacts": [{"path": "model.onnx"}, {"path": "eval.csv"}],
        "parameters": {"model_file": "model.onnx"},
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 5]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "pricing": {"unit": "request", "price_per_iu": "0.0010", "currency": "USD"},
        "card": copy.deepcopy(card),
        "lineage": {
            "datasets": [
                {"name": "acme/applications", "role": "training", "uri": "https://data.acme.example/apps"},
                {"name": "holdout", "role": "evaluation", "path": "eval.csv"},
            ],
            "parents": ["credit-base@1.0.0"],
        },
        "evaluation": {
            "dataset": "eval.csv",
            "label": "good",
            "features": ["a", "b", "c", "d", "e"],
            "sensitive_features": ["sex"],
        },
    }
    doc.update(changes)
    return doc


def version_of(doc: dict[str, Any], evaluation: dict[str, Any] | None = None) -> VersionRecord:
    manifest = parse_manifest(doc)
    artifacts = tuple(
        ArtifactRecord(path, sha, size) for path, sha, size in (("model.onnx", SHA_A, 1234), ("eval.csv", SHA_B, 99))
    )[: len(manifest.artifacts)]
    return VersionRecord(
        id="ver_1",
        model_name=manifest.name,
        version=manifest.version,
        digest="ef" * 32,
        manifest=manifest,
        provider_account_id="acc_1",
        artifacts=artifacts,
        created_at="2025-03-02T10:00:00+00:00",
        evaluation=evaluation,
    )


def refused(card: dict[str, Any]) -> str:
    with pytest.raises(InvalidInput) as info:
        parse_manifest(manifest_doc(card))
    return info.value.message


# -- the schema ----------------------------------------------------------------------------------------------------


def test_a_card_with_only_the_original_fields_serialises_as_it_always_did() -> None:
    card = Card.model_validate(ORIGINAL_CARD)
    assert card.model_dump(mode="json") == {**ORIGINAL_CARD, "metrics": [ORIGINAL_CARD["metrics"][0], {
        "name": "f1", "value": "0.8", "dataset": None}]}  # fmt: skip
    summary_only = Card.model_validate({"summary": "s"}).model_dump(mode="json")
    assert list(summary_only) == [
        "summary", "description", "intended_use", "limitations", "training_data", "evaluation_data", "metrics",
    ]  # fmt: skip
    # An empty section is no section: same card, same serialised form (and so the same version digest).
    empty = Card.model_validate({"summary": "s", "details": {}, "energy": {"notes": None}, "tags": []})
    assert empty == Card.model_validate({"summary": "s"})
    assert empty.model_dump(mode="json") == summary_only


def test_a_full_card_parses_and_round_trips_through_its_serialised_form() -> None:
    manifest = parse_manifest(manifest_doc(FULL_CARD))
    card = manifest.card
    assert card.details is not None and card.details.parameter_count == 11
    assert card.details.release_date is not None and card.details.release_date.isoformat() == "2025-03-01"
    assert card.compute is not None and card.compute.training_flops == 1.5e9  # quoted: YAML reads 1.5e9 as text
    assert parse_manifest(manifest.to_json()) == manifest
    dumped = manifest.to_json()["card"]
    assert dumped["details"]["release_date"] == "2025-03-01"
    assert "paper" in dumped["details"] and "notes" in dumped["compute"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"details": {"parameter_count": "11"}}, "card.details.parameter_count: Input should be a valid integer"),
        ({"details": {"parameter_count": True}}, "card.details.parameter_count: Input should be a valid integer"),
        ({"details": {"parameter_count": -1}}, "card.details.parameter_count: Input should be greater than"),
        ({"details": {"release_date": "last spring"}}, "card.details.release_date: Input should be a valid date"),
        ({"details": {"developers": [""]}}, "card.details.developers[0]: String should have at least 1 character"),
        ({"details": {"team": "x"}}, "card.details.team: unknown field"),
        ({"language": ["English"]}, "card.language[0]: 'English' is not an ISO 639 language code"),
        ({"tags": ["two words"]}, "card.tags[0]: 'two words' is not a tag"),
        ({"energy": {"source": "sunshine"}}, "card.energy.source: Input should be 'coal'"),
        ({"energy": {"training_energy_kwh": True}}, "card.energy.training_energy_kwh: must be a number"),
        ({"energy": {"training_energy_kwh": -1}}, "card.energy.training_energy_kwh: Input should be greater than"),
        ({"compute": {"training_flops": "lots"}}, "card.compute.training_flops: 'lots' is not a number"),
        ({"compute": {"training_flops": "inf"}}, "card.compute.training_flops: must be a finite number"),
        ({"out_of_scope_uses": ["x"] * 33}, "card.out_of_scope_uses: List should have at most 32 items"),
        ({"ethical_considerations": "x" * 20_001}, "card.ethical_considerations: String should have at most 20000"),
        ({"factors": "age"}, "card.factors: Input should be a valid dictionary"),
        ({"pipeline_tag": "text-generation"}, "card.pipeline_tag: unknown field"),
        ({"license": "MIT"}, "card.license: unknown field"),
    ],
)
def test_a_bad_card_field_is_refused_naming_it(change: dict[str, Any], message: str) -> None:
    assert message in refused({**ORIGINAL_CARD, **change})


def test_summary_stays_the_only_required_field() -> None:
    assert "card.summary: Field required" in refused({"description": "no summary"})
    assert parse_manifest(manifest_doc({"summary": "s"})).card.summary == "s"


# -- gaps and the operator's required fields -------------------------------------------------------------------------


def test_card_gaps_lists_the_recommended_fields_left_empty_in_card_order() -> None:
    bare = Card.model_validate({"summary": "s", "description": "   "})
    assert card_gaps(bare) == [f"card.{path}" for path in RECOMMENDED]
    assert card_gaps(Card.model_validate(FULL_CARD)) == []
    partial = copy.deepcopy(FULL_CARD)
    del partial["limitations"], partial["details"]["architecture"], partial["energy"]
    assert card_gaps(Card.model_validate(partial)) == ["card.details.architecture", "card.limitations", "card.energy"]


def test_required_by_policy_names_each_empty_field() -> None:
    card = Card.model_validate({"summary": "s", "intended_use": "demos", "details": {"developers": ["Acme"]}})
    required = ("intended_use", "card.limitations", "details.developers", "details.contact", "energy")
    assert card_required_problems(card, required) == [
        "card.limitations: required by the operator's gate policy",
        "card.details.contact: required by the operator's gate policy",
        "card.energy: required by the operator's gate policy",
    ]
    assert card_required_problems(Card.model_validate(FULL_CARD), required) == []
    assert card_required_problems(card, ()) == []


def test_an_unknown_required_field_is_the_policys_mistake() -> None:
    card = Card.model_validate({"summary": "s"})
    with pytest.raises(InvalidInput) as info:
        card_required_problems(card, ("limitations", "intended_usage", "details.weight"))
    message = info.value.message
    assert message.startswith("card.required: 'intended_usage', 'details.weight' is not a card field")
    assert "details.developers" in message and "limitations" in card_fields()


# -- exports ---------------------------------------------------------------------------------------------------------


def test_card_json_holds_the_manifests_facts_and_the_gates_figures() -> None:
    version = version_of(manifest_doc(FULL_CARD), EVALUATION)
    doc = card_json(version, EVALUATION)
    assert doc["ref"] == "credit@1.2.0" and doc["digest"] == "ef" * 32
    assert (doc["license"], doc["task"], doc["pipeline_tag"], doc["modality"]) == (
        "MIT", "tabular-classification", "tabular-classification", "tabular",
    )  # fmt: skip
    assert doc["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 5]}]
    assert doc["pricing"]["price_per_iu"] == "0.0010" and doc["provider"] == "acme"
    assert doc["artifacts"][0] == {"path": "model.onnx", "sha256": SHA_A, "size_bytes": 1234}
    assert doc["lineage"]["parents"] == ["credit-base@1.0.0"]
    assert doc["card"]["details"]["parameter_count"] == 11
    assert doc["evaluation"]["benchmark"]["p50_ms"] == 1.25 and doc["gaps"] == []
    json.dumps(doc)  # JSON values only
    assert card_json(version_of(manifest_doc(FULL_CARD)), None)["evaluation"] is None


def test_card_text_shows_every_section_in_order_with_the_gate_figures() -> None:
    text = card_text(version_of(manifest_doc(FULL_CARD), EVALUATION), EVALUATION)
    titles = [
        "MODEL DETAILS", "INTENDED USE", "FACTORS", "METRICS", "EVALUATION DATA", "TRAINING DATA",
        "QUANTITATIVE ANALYSES", "ETHICAL CONSIDERATIONS", "CAVEATS AND RECOMMENDATIONS", "COMPUTE AND ENERGY",
        "INTERFACE AND DISTRIBUTION",
    ]  # fmt: skip
    positions = [text.index(f"\n{title}\n") for title in titles]
    assert positions == sorted(positions)
    for expected in (
        "Parameters: 11",
        "accuracy = 0.9123 (held-out set)",
        "latency p50: 1.25 ms",
        "measured over 50 calls of example 'first' in the 'strict' sandbox",
        "sex: demographic parity difference 0.03, ratio 0.94, equalized odds difference 0.04",
        "sex=M: 1010 rows, accuracy 0.92, selection rate 0.53, TPR undefined, FPR 0.12",
        "Training compute: 1.5e+09 FLOPs",
        f"model.onnx (1,234 bytes) sha256 {SHA_A}",
        "Base models:",
    ):
        assert expected in " ".join(text.split()), expected
    assert "(not given)" not in text and "Recommended fields left empty" not in text
    bare = card_text(version_of(manifest_doc({"summary": "s"})), None)
    assert "FACTORS\n  (not given)" in bare
    assert "Recommended fields left empty: card.description, card.details.developers" in bare.replace("\n", " ")
    assert "Measured by the publish gate" not in bare


def front_matter(readme: str) -> dict[str, Any]:
    assert readme.startswith("---\n")
    head, _, _ = readme[4:].partition("\n---\n")
    doc = yaml.safe_load(head)
    assert isinstance(doc, dict)
    return doc


def test_hf_readme_front_matter_has_the_hugging_face_keys() -> None:
    readme = hf_readme(version_of(manifest_doc(FULL_CARD), EVALUATION), EVALUATION)
    meta = front_matter(readme)
    assert meta["license"] == "mit"
    assert meta["language"] == ["en", "pt-BR"]
    assert meta["pipeline_tag"] == "tabular-classification"
    assert meta["library_name"] == "sklearn"
    assert meta["base_model"] == ["credit-base"]
    assert meta["datasets"] == ["acme/applications"]  # training data only; the evaluation set is in model-index
    assert meta["tags"] == ["credit", "tabular"]
    (index,) = meta["model-index"]
    assert index["name"] == "credit"
    held_out, unnamed = index["results"]
    assert held_out["task"] == {"type": "tabular-classification"}
    assert held_out["dataset"] == {"name": "held-out set", "type": "held-out-set"}
    assert held_out["metrics"] == [
        {"type": "accuracy", "name": "accuracy", "value": 0.9123},
        {"type": "f1", "name": "f1", "value": 0.88},
    ]
    assert unnamed["metrics"] == [{"type": "note", "name": "note", "value": "n/a"}]
    body = readme.split("\n---\n", 1)[1]
    sections = ["## Model details", "## Intended use", "## Factors", "## Metrics", "## Evaluation data",
                "## Training data", "## Quantitative analyses", "## Ethical considerations",
                "## Caveats and recommendations", "## Compute and energy"]  # fmt: skip
    assert [body.index(s) for s in sections] == sorted(body.index(s) for s in sections)
    assert "**Acceptable use policy:** A person reviews every refusal." in body
    assert "- latency p95: 2.5 ms" in body


def test_hf_front_matter_maps_licenses_and_tasks_it_does_not_know() -> None:
    doc = manifest_doc({"summary": "s"}, license="BSD-2-Clause AND MIT", task="speech-sentiment-analysis")
    del doc["lineage"]
    meta = hf_front_matter(version_of(doc))
    assert meta["license"] == "other" and meta["license_name"] == "BSD-2-Clause AND MIT"
    assert "pipeline_tag" not in meta and meta["tags"] == ["speech-sentiment-analysis", "tabular"]
    assert not {"base_model", "datasets", "model-index", "language", "library_name"} & meta.keys()


def validate_cyclonedx(text: str) -> None:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, str(error)


def test_cyclonedx_mlbom_validates_and_holds_the_artifact_hashes_and_the_model_card() -> None:
    version = version_of(manifest_doc(FULL_CARD), EVALUATION)
    text = cyclonedx_mlbom(version, EVALUATION)
    validate_cyclonedx(text)
    assert cyclonedx_mlbom(version, EVALUATION) == text  # the same version gives the same bytes
    doc = json.loads(text)
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.6")
    (model,) = doc["components"]
    assert model["type"] == "machine-learning-model" and model["bom-ref"] == "credit@1.2.0"
    assert model["licenses"] == [{"expression": "MIT"}]
    hashes = {c["name"]: c["hashes"] for c in model["components"]}
    assert hashes == {
        "model.onnx": [{"alg": "SHA-256", "content": SHA_A}],
        "eval.csv": [{"alg": "SHA-256", "content": SHA_B}],
    }
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["modelmarket:digest"] == "ef" * 32 and props["modelmarket:gate_submission"] == "sub_123"
    card = model["modelCard"]
    params = card["modelParameters"]
    assert params["task"] == "tabular-classification" and params["architectureFamily"] == "logistic regression"
    assert [d["name"] for d in params["datasets"]] == ["acme/applications", "holdout"]
    assert params["inputs"] == [{"format": "features: FP32 [-1, 5]"}]
    metrics = {m["type"]: m["value"] for m in card["quantitativeAnalysis"]["performanceMetrics"]}
    assert metrics["accuracy"] == "0.9123" and metrics["benchmark_p50_ms"] == "1.25"
    considerations = card["considerations"]
    assert considerations["users"] == ["loan officers"]
    assert "score applications" in considerations["useCases"]
    assert considerations["ethicalConsiderations"][1] == {
        "name": "Out-of-scope use: fully automated decisions",
        "mitigationStrategy": "A person reviews every refusal.",
    }
    (fairness,) = considerations["fairnessAssessments"]
    assert fairness["groupAtRisk"] == "groups by sex: F, M"
    assert "demographic parity difference 0.03" in fairness["harms"]
    assert "demographic parity difference at most 0.1" in fairness["mitigationStrategy"]
    (energy,) = considerations["environmentalConsiderations"]["energyConsumptions"]
    assert energy["activity"] == "training" and energy["activityEnergyCost"] == {"value": 0.0005, "unit": "kWh"}
    assert energy["co2CostEquivalent"] == {"value": 0.0002 / 1000, "unit": "tCO2eq"}


def test_the_validator_used_above_does_refuse_a_broken_model_card() -> None:
    doc = json.loads(cyclonedx_mlbom(version_of(manifest_doc(FULL_CARD)), None))
    doc["components"][0]["modelCard"]["considerations"]["users"] = "loan officers"  # a string, not a list
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(doc)) is not None


def test_a_bare_card_and_a_pipeline_export_validly() -> None:
    bare = manifest_doc({"summary": "s"}, artifacts=[{"path": "model.onnx"}])
    del bare["lineage"], bare["evaluation"]
    pipeline = version_of(voice_sentiment_manifest())
    for version in (version_of(bare), pipeline):
        validate_cyclonedx(cyclonedx_mlbom(version, None))
        front_matter(hf_readme(version, None))
    doc = json.loads(cyclonedx_mlbom(pipeline, None))
    assert "components" not in doc["components"][0]  # a pipeline has no artifacts
    assert card_json(pipeline, None)["steps"] == [
        {"id": "transcribe", "model": "speech-to-text"},
        {"id": "classify", "model": "sentiment"},
    ]
    assert "transcribe: speech-to-text" in card_text(pipeline, None)


def test_unknown_gate_figures_are_listed_rather_than_refused() -> None:
    odd = {"benchmark": {"p50_ms": 3, "cold_start_ms": 900}, "bias": {"score": 0.2}}
    version = version_of(manifest_doc(FULL_CARD), odd)
    text = card_text(version, odd)
    assert "latency p50: 3 ms" in text and "cold_start_ms = 900" in text and "score = 0.2" in text
    doc = json.loads(cyclonedx_mlbom(version, odd))
    (fairness,) = doc["components"][0]["modelCard"]["considerations"]["fairnessAssessments"]
    assert fairness == {"groupAtRisk": "groups by sex", "harms": "Measured by the publish gate: score = 0.2"}
    validate_cyclonedx(json.dumps(doc))
