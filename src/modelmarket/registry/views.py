"""One shape for a model in lists: what the CLI, the API and the dashboard all show."""

from __future__ import annotations

from typing import Any

from modelmarket.registry.catalogue import ModelEntry


def model_summary(entry: ModelEntry, price_now: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model with its latest version's facts; versions in semver order, aliases by name. ``price_now``: the
    price in force (an operator's list price, the dynamic factor), shown as ``price_now`` when given."""
    latest = entry.resolve(None)
    m = latest.manifest
    return {
        "name": entry.name,
        "latest": latest.version,
        "versions": [v.version for v in entry.sorted_versions()],
        "aliases": dict(sorted(entry.aliases.items())),
        "task": m.task,
        "modality": m.modality,
        "runtime": m.runtime,
        "license": m.license,
        "summary": m.card.summary,
        "pricing": m.pricing.to_json(),  # unit, price_per_iu, currency; then charge, tiers, ... when they apply
        **({"price_now": price_now} if price_now is not None else {}),
    }
