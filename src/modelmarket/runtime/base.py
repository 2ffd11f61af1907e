"""The Runtime plug-in contract.

A Runtime knows one model format. The runner constructs it with a ``ModelSpec``, calls ``load()`` once, then
``predict()`` for every request. Runtimes are discovered through the entry point group ``modelmarket.runtimes``
(see ``runtime/plugins.py``), so a third party can ship one as its own distribution.

Tensors follow the Open Inference Protocol v2: numeric tensors carry a numpy array already in the tensor's
shape; ``BYTES`` tensors carry a numpy object array of ``bytes`` in the tensor's shape.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from modelmarket.core.tensors import Tensor, TensorSpec, bytes_tensor

__all__ = ["ModelSpec", "Runtime", "Tensor", "TensorSpec", "bytes_tensor"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything a runner needs to serve one version, with artifacts laid out under ``artifact_root``."""

    name: str
    version: str
    runtime: str
    artifact_root: Path
    artifacts: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def artifact(self, relpath: str) -> Path:
        return self.artifact_root / relpath

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "runtime": self.runtime,
            "artifact_root": str(self.artifact_root),
            "artifacts": list(self.artifacts),
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "parameters": dict(self.parameters),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelSpec:
        return cls(
            name=doc["name"],
            version=doc["version"],
            runtime=doc["runtime"],
            artifact_root=Path(doc["artifact_root"]),
            artifacts=tuple(doc["artifacts"]),
            inputs=tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in doc["inputs"]),
            outputs=tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in doc["outputs"]),
            parameters=dict(doc.get("parameters", {})),
        )


class Runtime(ABC):
    """Base class of runtime plug-ins. Subclasses set ``name`` and implement ``load`` and ``predict``."""

    name: ClassVar[str]

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    def load(self) -> None:
        """Load the artifacts. Called once, before the runner reports ready."""

    @abstractmethod
    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        """Run one request. Inputs are already validated against ``spec.inputs`` (names, datatypes, shapes).

        Raise ``modelmarket.core.InvalidInput`` for content the model cannot process (e.g. a non-WAV blob);
        anything else is a server error.
        """

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "versions": [self.spec.version],
            "platform": self.name,
            "inputs": [t.to_json() for t in self.spec.inputs],
            "outputs": [t.to_json() for t in self.spec.outputs],
        }
