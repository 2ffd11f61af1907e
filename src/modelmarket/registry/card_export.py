"""A published version's model card with the manifest's facts, as JSON, terminal text, a Hugging Face ``README.md``
and a CycloneDX ML-BOM (see docs/model-cards.md).

Every form is built from the same version and, when the version went through the publish gate, the gate's figures
(``evaluation``: ``{"benchmark": {...}, "bias": {...}}``, both optional). Pure: no storage, no clock; the same
version gives the same bytes.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from typing import Any

import yaml

from modelmarket.registry.card import Card, card_gaps
from modelmarket.registry.card_figures import benchmark_lines, bias_lines, gate_group, smoke_test_line
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.registry.manifest import Manifest, TensorDecl, split_model_ref

TEXT_WIDTH = 100
HF_PIPELINE_TAGS = frozenset(
    (
        "any-to-any", "audio-classification", "audio-text-to-text", "audio-to-audio", "automatic-speech-recognition",
        "depth-estimation", "document-question-answering", "feature-extraction", "fill-mask", "graph-ml",
        "image-classification", "image-feature-extraction", "image-segmentation", "image-text-to-text", "image-to-3d",
        "image-to-image", "image-to-text", "image-to-video", "keypoint-detection", "mask-generation", "multiple-choice",
        "object-detection", "question-answering", "reinforcement-learning", "robotics", "sentence-similarity",
        "summarization", "table-question-answering", "table-to-text", "tabular-classification", "tabular-regression",
        "tabular-to-text", "text-classification", "text-generation", "text-ranking", "text-retrieval", "text-to-3d",
        "text-to-audio", "text-to-image", "text-to-speech", "text-to-video", "text2text-generation",
        "time-series-forecasting", "token-classification", "translation", "unconditional-image-generation",
        "video-classification", "video-text-to-text", "visual-document-retrieval", "visual-question-answering",
        "voice-activity-detection", "zero-shot-classification", "zero-shot-image-classification",
        "zero-shot-object-detection",
    )
)  # fmt: skip
"""The Hugging Face ``pipeline_tag`` values; a task that is none of them becomes a tag instead."""
HF_LICENSES = frozenset(
    (
        "afl-3.0", "agpl-3.0", "apache-2.0", "artistic-2.0", "bigscience-openrail-m", "bsd", "bsd-2-clause",
        "bsd-3-clause", "bsd-3-clause-clear", "bsl-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
        "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0",
        "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cc-by-nd-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc0-1.0",
        "creativeml-openrail-m", "ecl-2.0", "epl-1.0", "epl-2.0", "eupl-1.1", "gpl", "gpl-2.0", "gpl-3.0", "isc",
        "lgpl-2.1", "lgpl-3.0", "lgpl-lr", "mit", "mpl-2.0", "ms-pl", "odbl", "odc-by", "openrail", "openrail++",
        "pddl", "postgresql", "unlicense", "wtfpl", "zlib",
    )
)  # fmt: skip
"""Hugging Face license identifiers (lower-case SPDX ids); any other license is ``other`` with ``license_name``."""

Entry = tuple[str, str | list[str]]
"""One item of a card section: a label ("" for a plain paragraph) and a text or a list of texts."""
Section = tuple[str, list[Entry]]


# -- the facts ---------------------------------------------------------------------------------------------------


def pipeline_tag(task: str) -> str | None:
    """The Hugging Face ``pipeline_tag`` of a manifest's task, or None when the task is not one of them."""
    return task if task in HF_PIPELINE_TAGS else None


def _tensor(t: TensorDecl) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


def tensor_text(t: TensorDecl) -> str:
    return f"{t.name}: {t.datatype} {list(t.shape)}"


def card_json(version: VersionRecord, evaluation: Mapping[str, Any] | None) -> dict[str, Any]:
    """The full card with the manifest's facts; ``evaluation``: the publish gate's figures, when there are any."""
    m = version.manifest
    doc: dict[str, Any] = {
        "model": version.model_name,
        "version": version.version,
        "ref": version.ref,
        "digest": version.digest,
        "published_at": version.created_at,
        "kind": m.kind,
        "task": m.task,
        "pipeline_tag": pipeline_tag(m.task),
        "modality": m.modality,
        "runtime": m.runtime,
        "license": m.license,
        "provider": m.provider,
        "provider_account_id": version.provider_account_id,
        "inputs": [_tensor(t) for t in m.inputs],
        "outputs": [_tensor(t) for t in m.outputs],
        "pricing": m.pricing.to_json(),
        "artifacts": [{"path": a.path, "sha256": a.sha256, "size_bytes": a.size_bytes} for a in version.artifacts],
        "lineage": m.lineage.model_dump(mode="json") if m.lineage is not None else None,
        "card": m.card.model_dump(mode="json"),
        "evaluation": dict(evaluation) if evaluation is not None else None,
        "gaps": card_gaps(m.card),
    }
    if m.steps is not None:
        doc["steps"] = [{"id": s.id, "model": s.model} for s in m.steps]
    return doc


# -- the sections, in Mitchell's order, then the EU AI Act's items -------------------------------------------------


def _details(version: VersionRecord) -> list[Entry]:
    m, card = version.manifest, version.manifest.card
    d = card.details
    entries: list[Entry] = [
        ("Description", card.description or ""),
        ("Developers", d.developers if d else []),
        ("Provider", m.provider),
        ("Contact", (d.contact if d else None) or ""),
        ("Release date", d.release_date.isoformat() if d and d.release_date else ""),
        ("Version", f"{version.version} (digest {version.digest})"),
        ("Model type", (d.model_type if d else None) or ""),
        ("Architecture", (d.architecture if d else None) or ""),
        ("Parameters", f"{d.parameter_count:,}" if d and d.parameter_count is not None else ""),
        ("Task", m.task),
        ("Modality", m.modality),
        ("Runtime", m.runtime),
        ("License", m.license),
        ("Paper", (d.paper if d else None) or ""),
        ("Citation", (d.citation if d else None) or ""),
    ]
    if m.steps is not None:
        entries.append(("Steps", [f"{s.id}: {s.model}" for s in m.steps]))
    return entries


def _intended_use(card: Card) -> list[Entry]:
    return [
        ("", card.intended_use or ""),
        ("Intended tasks", card.intended_tasks),
        ("Primary users", card.primary_users),
        ("Out-of-scope uses", card.out_of_scope_uses),
        ("Acceptable use policy", card.acceptable_use_policy or ""),
    ]


def _metrics(card: Card, evaluation: Mapping[str, Any] | None) -> list[Entry]:
    metrics = [f"{x.name} = {x.value}" + (f" ({x.dataset})" if x.dataset else "") for x in card.metrics]
    return [
        ("Reported by the provider", metrics),
        ("Measured by the publish gate", benchmark_lines(gate_group(evaluation, "benchmark"))),
        ("Smoke test (publish gate)", smoke_test_line(evaluation)),
    ]


def _datasets(m: Manifest, roles: tuple[str, ...]) -> list[str]:
    out = []
    for ds in m.lineage.datasets if m.lineage else ():
        if ds.role in roles:
            where = ds.path or ds.uri or ""
            digest = f", sha256 {ds.sha256}" if ds.sha256 else ""
            note = f": {ds.description}" if ds.description else ""
            out.append(f"{ds.name} ({ds.role}; {where}{digest}){note}")
    return out


def _evaluation_data(m: Manifest) -> list[Entry]:
    declared = ""
    if m.evaluation is not None:
        ev = m.evaluation
        declared = (
            f"{ev.dataset} (label {ev.label!r}; groups by {', '.join(ev.sensitive_features)}), "
            "run by the publish gate's bias stage"
        )
    return [("", m.card.evaluation_data or ""), ("Datasets", _datasets(m, ("evaluation",))), ("Bias set", declared)]


def _training_data(m: Manifest) -> list[Entry]:
    t = m.card.training
    parents = list(m.lineage.parents) if m.lineage else []
    return [
        ("", m.card.training_data or ""),
        ("Type", (t.data_type if t else None) or ""),
        ("Provenance", (t.data_provenance if t else None) or ""),
        ("Curation", (t.data_curation if t else None) or ""),
        ("Size", (t.data_size if t else None) or ""),
        ("Methodology", (t.methodology if t else None) or ""),
        ("Datasets", _datasets(m, ("training", "fine-tuning", "other"))),
        ("Base models", parents),
    ]


def _compute_energy(card: Card) -> list[Entry]:
    c, e = card.compute, card.energy
    return [
        ("Hardware", (c.hardware if c else None) or ""),
        ("Training time", (c.training_time if c else None) or ""),
        ("Training compute", f"{c.training_flops:.3g} FLOPs" if c and c.training_flops is not None else ""),
        ("Compute notes", (c.notes if c else None) or ""),
        ("Training energy", f"{e.training_energy_kwh:g} kWh" if e and e.training_energy_kwh is not None else ""),
        ("Training emissions", f"{e.training_co2_kg:g} kg CO2eq" if e and e.training_co2_kg is not None else ""),
        ("Energy source", (e.source if e else None) or ""),
        ("Energy notes", (e.notes if e else None) or ""),
    ]


def _interface(version: VersionRecord) -> list[Entry]:
    m = version.manifest
    p = m.pricing.to_json()
    return [
        ("Inputs", [tensor_text(t) for t in m.inputs]),
        ("Outputs", [tensor_text(t) for t in m.outputs]),
        ("Price", f"{p['price_per_iu']} {p['currency']} per IU ({p['unit']})" + _charge_note(p)),
        ("Artifacts", [f"{a.path} ({a.size_bytes:,} bytes) sha256 {a.sha256}" for a in version.artifacts]),
    ]


def _charge_note(pricing: dict[str, Any]) -> str:
    if "input_price_per_iu" in pricing:
        return f"; input {pricing['input_price_per_iu']}, output {pricing['output_price_per_iu']}"
    return f"; charge {pricing['charge']}" if "charge" in pricing else ""


def card_sections(version: VersionRecord, evaluation: Mapping[str, Any] | None) -> list[Section]:
    """The card's sections in the order of Mitchell et al., then the EU AI Act's compute, energy and interface."""
    m, card = version.manifest, version.manifest.card
    factors = card.factors
    return [
        ("Model details", _details(version)),
        ("Intended use", _intended_use(card)),
        (
            "Factors",
            [
                ("Relevant factors", (factors.relevant if factors else None) or ""),
                ("Evaluation factors", (factors.evaluation if factors else None) or ""),
            ],
        ),
        ("Metrics", _metrics(card, evaluation)),
        ("Evaluation data", _evaluation_data(m)),
        ("Training data", _training_data(m)),
        (
            "Quantitative analyses",
            [("", card.quantitative_analyses or ""), ("Bias figures (publish gate)", _bias_lines(evaluation))],
        ),
        ("Ethical considerations", [("", card.ethical_considerations or "")]),
        (
            "Caveats and recommendations",
            [("", card.caveats_and_recommendations or ""), ("Known limitations", card.limitations or "")],
        ),
        ("Compute and energy", _compute_energy(card)),
        ("Interface and distribution", _interface(version)),
    ]


def _bias_lines(evaluation: Mapping[str, Any] | None) -> list[str]:
    return bias_lines(gate_group(evaluation, "bias"))


def _filled(entries: list[Entry]) -> list[Entry]:
    return [(label, value) for label, value in entries if (value.strip() if isinstance(value, str) else value)]


# -- terminal text -------------------------------------------------------------------------------------------------


def card_text(version: VersionRecord, evaluation: Mapping[str, Any] | None) -> str:
    """The card for the terminal: every section, wrapped to ``TEXT_WIDTH``; empty ones say so; gaps at the end."""
    m = version.manifest
    lines = [f"{version.ref}  ({m.task}, {m.modality}, {m.license})", _wrap(m.card.summary, "")]
    for title, entries in card_sections(version, evaluation):
        lines += ["", title.upper()]
        filled = _filled(entries)
        if not filled:
            lines.append("  (not given)")
        for label, value in filled:
            head = f"  {label}: " if label else "  "
            if isinstance(value, list):
                lines.append(head.rstrip())
                lines += [_wrap(item, "    - ", "      ") for item in value]
            else:
                lines.append(_wrap(value, head, "    " if label else "  "))
    gaps = card_gaps(m.card)
    if gaps:
        lines += ["", _wrap("Recommended fields left empty: " + ", ".join(gaps), "")]
    return "\n".join(lines) + "\n"


def _wrap(text: str, first: str, rest: str | None = None) -> str:
    paragraphs = [p for p in text.splitlines() if p.strip()] or [""]
    indent = rest if rest is not None else first
    wrapper = textwrap.TextWrapper(TEXT_WIDTH, break_long_words=False, break_on_hyphens=False)
    out = [_fill(wrapper, paragraphs[0], first, indent)]
    out += [_fill(wrapper, p, indent, indent) for p in paragraphs[1:]]
    return "\n".join(out)


def _fill(wrapper: textwrap.TextWrapper, text: str, first: str, rest: str) -> str:
    wrapper.initial_indent, wrapper.subsequent_indent = first, rest
    return wrapper.fill(text)


# -- Hugging Face README.md ----------------------------------------------------------------------------------------


def _metric_value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-")[:96] or "evaluation"


def _model_index(m: Manifest) -> list[dict[str, Any]]:
    """``model-index``: one result per dataset the card's metrics were measured on, in the card's order."""
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for metric in m.card.metrics:
        by_dataset.setdefault(metric.dataset or "evaluation data", []).append(
            {"type": _slug(metric.name), "name": metric.name, "value": _metric_value(metric.value)}
        )
    task = {"type": pipeline_tag(m.task) or m.task}
    results = [
        {"task": task, "dataset": {"name": name, "type": _slug(name)}, "metrics": metrics}
        for name, metrics in by_dataset.items()
    ]
    return [{"name": m.name, "results": results}]


def hf_front_matter(version: VersionRecord) -> dict[str, Any]:
    """The YAML metadata of a Hugging Face model card; keys with nothing to say are left out."""
    m, card = version.manifest, version.manifest.card
    license_id = m.license.casefold()
    tag = pipeline_tag(m.task)
    datasets = m.lineage.datasets if m.lineage else []
    tags = list(card.tags) + [x for x in (m.task if tag is None else None, m.modality) if x and x not in card.tags]
    doc: dict[str, Any] = {
        "license": license_id if license_id in HF_LICENSES else "other",
        "license_name": None if license_id in HF_LICENSES else m.license,
        "language": list(card.language),
        "library_name": card.library_name,
        "pipeline_tag": tag,
        "tags": tags,
        "base_model": [split_model_ref(p)[0] for p in m.lineage.parents] if m.lineage else [],
        "datasets": list(dict.fromkeys(ds.name for ds in datasets if ds.role in ("training", "fine-tuning"))),
        "model-index": _model_index(m) if m.card.metrics else [],
    }
    return {k: v for k, v in doc.items() if v not in (None, [], "")}


def hf_readme(version: VersionRecord, evaluation: Mapping[str, Any] | None) -> str:
    """A Hugging Face model card ``README.md``: YAML front matter, then the sections in Markdown."""
    m = version.manifest
    front = yaml.safe_dump(hf_front_matter(version), sort_keys=False, allow_unicode=True, width=1_000)
    parts = [f"---\n{front}---\n", f"# {m.name} {m.version}\n", f"{m.card.summary}\n"]
    for title, entries in card_sections(version, evaluation):
        parts.append(f"## {title}\n")
        filled = _filled(entries)
        if not filled:
            parts.append("_Not given._\n")
        for label, value in filled:
            parts.append(_markdown_entry(label, value))
    return "\n".join(parts)


def _markdown_entry(label: str, value: str | list[str]) -> str:
    if isinstance(value, list):
        items = "\n".join(f"- {item}" for item in value)
        return f"**{label}:**\n\n{items}\n" if label else f"{items}\n"
    return f"**{label}:** {value}\n" if label else f"{value}\n"


# -- CycloneDX ML-BOM (registry/card_cyclonedx.py) -------------------------------------------------------------


def cyclonedx_mlbom(version: VersionRecord, evaluation: Mapping[str, Any] | None) -> str:
    """A CycloneDX 1.6 ML-BOM (JSON) of the version: see ``card_cyclonedx.mlbom``. Imported on first use: the
    CycloneDX library is only loaded when a BOM is asked for."""
    from modelmarket.registry.card_cyclonedx import mlbom

    return mlbom(version, evaluation)
