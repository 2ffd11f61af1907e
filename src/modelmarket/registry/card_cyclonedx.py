"""A published version's model card as a CycloneDX 1.6 ML-BOM (JSON): the model as a ``machine-learning-model``
component with its license, its artifacts as ``file`` components with their SHA-256 hashes, and its ``modelCard``
(model parameters, quantitative analysis, considerations) from the card, the manifest and the publish gate's figures.

The BOM is built and written with cyclonedx-python-lib; the library has no model-card type yet, so the ``modelCard``
object is added to its JSON here, in the shape of the 1.6 schema (the tests validate the whole document against it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.contact import OrganizationalEntity
from cyclonedx.model.license import LicenseExpression
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6

from modelmarket import __version__
from modelmarket.registry.card import Card
from modelmarket.registry.card_export import tensor_text
from modelmarket.registry.card_figures import benchmark_metrics, fairness_assessments, gate_group
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.registry.manifest import Manifest

SPEC_VERSION = "1.6"


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime(1970, 1, 1, tzinfo=UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _bom(version: VersionRecord) -> tuple[Bom, str]:
    """The BOM of one version (the model, its artifacts as file components with SHA-256 hashes) and its bom-ref."""
    m = version.manifest
    ref = version.ref
    files = [
        Component(
            type=ComponentType.FILE,
            name=a.path,
            bom_ref=f"{ref}/{a.path}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=a.sha256)],
            properties=[Property(name="modelmarket:size_bytes", value=str(a.size_bytes))],
        )
        for a in version.artifacts
    ]
    properties = {"digest": version.digest, "task": m.task, "modality": m.modality, "runtime": m.runtime}
    submission = (version.evaluation or {}).get("submission")
    if submission:
        properties["gate_submission"] = str(submission)
    model = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=m.name,
        version=m.version,
        bom_ref=ref,
        description=m.card.summary,
        supplier=OrganizationalEntity(name=m.provider),
        licenses=[LicenseExpression(m.license)],
        properties=[Property(name=f"modelmarket:{k}", value=v) for k, v in properties.items()],
        components=files,
    )
    tool = Component(type=ComponentType.APPLICATION, name="modelmarket", version=__version__)
    bom = Bom(
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"modelmarket:{ref}:{version.digest}"),
        metadata=BomMetaData(tools=ToolRepository(components=[tool]), timestamp=_timestamp(version.created_at)),
        components=[model],
    )
    bom.register_dependency(model, files)
    return bom, ref


def mlbom(version: VersionRecord, evaluation: Mapping[str, Any] | None) -> str:
    """A CycloneDX 1.6 ML-BOM (JSON): the model component with its artifacts' SHA-256 hashes, license and model
    card. The BOM is built and written by cyclonedx-python-lib; the library has no model-card type yet, so the
    ``modelCard`` object is added to its output here, in the schema's shape (validated against it in the tests)."""
    bom, ref = _bom(version)
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    component = next(c for c in doc["components"] if c.get("bom-ref") == ref)
    component["modelCard"] = model_card(version, evaluation)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def model_card(version: VersionRecord, evaluation: Mapping[str, Any] | None) -> dict[str, Any]:
    """The CycloneDX ``modelCard`` of a version: parameters, quantitative analysis and considerations."""
    m, card = version.manifest, version.manifest.card
    d = card.details
    parameters: dict[str, Any] = {"task": m.task}
    if d is not None and d.model_type:
        parameters["architectureFamily"] = d.model_type
    if d is not None and d.architecture:
        parameters["modelArchitecture"] = d.architecture
    datasets = _cdx_datasets(m)
    if datasets:
        parameters["datasets"] = datasets
    parameters["inputs"] = [{"format": tensor_text(t)} for t in m.inputs]
    parameters["outputs"] = [{"format": tensor_text(t)} for t in m.outputs]
    out: dict[str, Any] = {"bom-ref": f"{version.ref}/model-card", "modelParameters": parameters}
    metrics = _cdx_metrics(card, evaluation)
    if metrics:
        out["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    considerations = _cdx_considerations(m, evaluation)
    if considerations:
        out["considerations"] = considerations
    properties = _cdx_properties(card)
    if properties:
        out["properties"] = properties
    return out


def _cdx_datasets(m: Manifest) -> list[dict[str, Any]]:
    out = []
    for ds in m.lineage.datasets if m.lineage else ():
        facts = [f"role: {ds.role}"] + [f"{k}: {v}" for k, v in (("path", ds.path), ("uri", ds.uri)) if v]
        facts += [f"sha256: {ds.sha256}"] if ds.sha256 else []
        description = "; ".join(([ds.description] if ds.description else []) + facts)
        out.append({"type": "dataset", "name": ds.name, "description": description})
    if not out:  # no lineage: the card's own words about its data
        for name, text in (("training data", m.card.training_data), ("evaluation data", m.card.evaluation_data)):
            if text:
                out.append({"type": "dataset", "name": name, "description": text})
    return out


def _cdx_metrics(card: Card, evaluation: Mapping[str, Any] | None) -> list[dict[str, str]]:
    out = [{"type": x.name, "value": x.value, **({"slice": x.dataset} if x.dataset else {})} for x in card.metrics]
    for kind, value, where in benchmark_metrics(gate_group(evaluation, "benchmark")):
        out.append({"type": kind, "value": value, "slice": where})
    return out


def _cdx_considerations(m: Manifest, evaluation: Mapping[str, Any] | None) -> dict[str, Any]:
    card = m.card
    sensitive = list(m.evaluation.sensitive_features) if m.evaluation is not None else []
    use_cases = list(card.intended_tasks) + ([card.intended_use] if card.intended_use else [])
    limits = [x for x in (card.limitations, card.caveats_and_recommendations) if x]
    risks = [{"name": card.ethical_considerations}] if card.ethical_considerations else []
    policy = card.acceptable_use_policy
    risks += [
        {"name": f"Out-of-scope use: {use}", **({"mitigationStrategy": policy} if policy else {})}
        for use in card.out_of_scope_uses
    ]
    doc: dict[str, Any] = {
        "users": list(card.primary_users),
        "useCases": use_cases,
        "technicalLimitations": limits,
        "ethicalConsiderations": risks,
        "fairnessAssessments": fairness_assessments(gate_group(evaluation, "bias"), sensitive),
    }
    environment = _cdx_environment(card)
    if environment:
        doc["environmentalConsiderations"] = environment
    return {k: v for k, v in doc.items() if v}


def _cdx_environment(card: Card) -> dict[str, Any]:
    e, c = card.energy, card.compute
    props = {
        "energy.source": e.source if e else None,
        "energy.notes": e.notes if e else None,
        "compute.hardware": c.hardware if c else None,
        "compute.training_time": c.training_time if c else None,
        "compute.training_flops": f"{c.training_flops:.6g}" if c and c.training_flops is not None else None,
        "compute.notes": c.notes if c else None,
    }
    doc: dict[str, Any] = {}
    if e is not None and e.training_energy_kwh is not None:
        use: dict[str, Any] = {
            "activity": "training",
            "energyProviders": [],
            "activityEnergyCost": {"value": e.training_energy_kwh, "unit": "kWh"},
        }
        if e.training_co2_kg is not None:
            use["co2CostEquivalent"] = {"value": e.training_co2_kg / 1000, "unit": "tCO2eq"}
        doc["energyConsumptions"] = [use]
    listed = [{"name": f"modelmarket:{k}", "value": v} for k, v in props.items() if v]
    if listed:
        doc["properties"] = listed
    return doc


def _cdx_properties(card: Card) -> list[dict[str, str]]:
    d = card.details
    facts = {
        "developers": "; ".join(d.developers) if d else None,
        "contact": d.contact if d else None,
        "release_date": d.release_date.isoformat() if d and d.release_date else None,
        "parameter_count": str(d.parameter_count) if d and d.parameter_count is not None else None,
        "paper": d.paper if d else None,
        "language": ", ".join(card.language) or None,
        "acceptable_use_policy": card.acceptable_use_policy,
        "factors.relevant": card.factors.relevant if card.factors else None,
        "factors.evaluation": card.factors.evaluation if card.factors else None,
        "quantitative_analyses": card.quantitative_analyses,
    }
    t = card.training
    if t is not None:
        facts.update({f"training.{k}": v for k, v in t.model_dump().items() if isinstance(v, str)})
    return [{"name": f"modelmarket:{k}", "value": v} for k, v in facts.items() if v]
