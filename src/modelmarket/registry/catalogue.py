"""The catalogue's domain types: versions (immutable), models with their aliases, and the in-memory snapshot the
gateway routes with. Pure: no storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelmarket.core.errors import NotFound
from modelmarket.core.tensors import TensorSpec
from modelmarket.registry.manifest import Manifest

LATEST = "latest"
UPSTREAM_RUNTIME_PREFIX = "upstream-"
"""Runtimes named ``upstream-...`` forward calls to a service elsewhere: no runner process serves them."""


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """A published, immutable version. Its I/O contract (``inputs``, ``output_names``) is built once, here."""

    id: str
    model_name: str
    version: str
    digest: str
    manifest: Manifest
    provider_account_id: str
    artifacts: tuple[ArtifactRecord, ...]
    created_at: str
    evaluation: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """What the publish gate measured: ``{"benchmark": {...}, "bias": {...}, "submission": id}``; None when the
    version was published without the gate."""
    inputs: tuple[TensorSpec, ...] = field(init=False, compare=False, repr=False)
    outputs: tuple[TensorSpec, ...] = field(init=False, compare=False, repr=False)
    output_names: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        m = self.manifest
        outputs = tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in m.outputs)
        object.__setattr__(self, "inputs", tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in m.inputs))
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "output_names", frozenset(t.name for t in outputs))

    @property
    def ref(self) -> str:
        return f"{self.model_name}@{self.version}"

    @property
    def is_pipeline(self) -> bool:
        """A pipeline (``kind: pipeline``): served by calling its steps' models, never by a runner of its own."""
        return self.manifest.is_pipeline

    @property
    def needs_runner(self) -> bool:
        """Whether serving this version needs a ModelRunner process: not for a pipeline, nor for a runtime that
        forwards to an upstream service (``upstream-...``); for every other model, yes."""
        return not self.is_pipeline and not self.manifest.runtime.startswith(UPSTREAM_RUNTIME_PREFIX)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model_name,
            "version": self.version,
            "digest": self.digest,
            "created_at": self.created_at,
            "provider_account_id": self.provider_account_id,
            "manifest": self.manifest.to_json(),
            "artifacts": [{"path": a.path, "sha256": a.sha256, "size_bytes": a.size_bytes} for a in self.artifacts],
            **({"evaluation": self.evaluation} if self.evaluation is not None else {}),
        }


@dataclass(slots=True)
class ModelEntry:
    name: str
    provider_account_id: str
    versions: dict[str, VersionRecord] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def sorted_versions(self) -> list[VersionRecord]:
        """Oldest first, by semantic version (``1.10.0`` after ``1.9.0``)."""
        return sorted(self.versions.values(), key=lambda v: v.manifest.semver)

    def resolve(self, ref: str | None) -> VersionRecord:
        """``ref`` is a version, an alias, or None for ``latest``."""
        key = LATEST if ref is None else ref
        if key in self.versions:
            return self.versions[key]
        if key in self.aliases and self.aliases[key] in self.versions:
            return self.versions[self.aliases[key]]
        raise NotFound(f"model {self.name!r} has no version or alias {key!r}")


@dataclass(frozen=True, slots=True)
class Catalogue:
    """An in-memory snapshot of every model, version and alias (what the gateway routes with)."""

    models: dict[str, ModelEntry]

    def get(self, name: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None or not entry.versions:
            raise NotFound(f"model {name!r} is not published")
        return entry

    def resolve(self, name: str, ref: str | None = None) -> VersionRecord:
        return self.get(name).resolve(ref)

    def names(self) -> list[str]:
        """Published model names, sorted."""
        return sorted(name for name, entry in self.models.items() if entry.versions)

    @property
    def version_count(self) -> int:
        return sum(len(entry.versions) for entry in self.models.values())
