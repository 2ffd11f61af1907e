"""One shape for a model in lists: what the CLI, the API and the dashboard all show."""

from __future__ import annotations

from typing import Any

from modelmarket.registry.catalogue import ModelEntry
from modelmarket.registry.manifest import Manifest
from modelmarket.registry.protocols import protocols_of


def tags_of(manifest: Manifest) -> tuple[str, ...]:
    """Tags derived from the manifest (it has no tags of its own): task, modality, runtime and license, lower
    case, each once, in that order."""
    out: list[str] = []
    for value in (manifest.task, manifest.modality, manifest.runtime, manifest.license):
        tag = value.casefold()
        if tag not in out:
            out.append(tag)
    return tuple(out)


def model_summary(
    entry: ModelEntry, price_now: dict[str, Any] | None = None, measured: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A model with its latest version's facts; versions in semver order, aliases by name. ``price_now``: the
    price in force (an operator's list price, the dynamic factor), shown as ``price_now`` when given;
    ``measured``: figures from served calls (``registry.search.measured_json``), shown when given."""
    latest = entry.resolve(None)
    m = latest.manifest
    unit = m.pricing.unit
    benchmark = (latest.evaluation or {}).get("benchmark")  # measured by the publish gate
    return {
        "name": entry.name,
        "latest": latest.version,
        "versions": [v.version for v in entry.sorted_versions()],
        "aliases": dict(sorted(entry.aliases.items())),
        "task": m.task,
        "modality": m.modality,
        "runtime": m.runtime,
        "license": m.license,
        "provider": m.provider,
        "provider_account_id": entry.provider_account_id,
        "summary": m.card.summary,
        "tags": list(tags_of(m)),
        "protocols": list(protocols_of(m)),
        "pricing": m.pricing.to_json(),  # unit, price_per_iu, currency; then charge, tiers, ... when they apply
        "iu": {"unit": unit.value, "base_unit": unit.base_unit, "base_units_per_iu": unit.divisor},
        **({"benchmark": benchmark} if benchmark is not None else {}),
        **({"price_now": price_now} if price_now is not None else {}),
        **({"measured": measured} if measured is not None else {}),
    }
