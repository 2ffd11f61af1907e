"""Tensors as the Open Inference Protocol v2 defines them: the data every context (metering counts it, runtimes
compute on it, the codec reads and writes it) shares. Pure data, no I/O.

Numeric tensors carry a numpy array already in the tensor's shape; ``BYTES`` tensors carry a numpy object array
of ``bytes`` in the tensor's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Tensor", "TensorSpec", "bytes_tensor"]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Declared metadata of one input or output tensor (-1 in ``shape`` means any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: npt.NDArray[Any]
    parameters: dict[str, Any] = field(default_factory=dict)


def bytes_tensor(name: str, items: Sequence[bytes], shape: Sequence[int] | None = None) -> Tensor:
    """Build a BYTES tensor from a sequence of bytes objects."""
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        arr[i] = item
    shp = list(shape) if shape is not None else [len(items)]
    return Tensor(name=name, datatype="BYTES", shape=shp, data=arr.reshape(shp))
