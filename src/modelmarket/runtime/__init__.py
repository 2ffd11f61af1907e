"""Serving: the Runtime plug-in contract, runtimes/, the ModelRunner process, its supervisor and pool."""

from modelmarket.runtime.base import ModelSpec, Runtime, Tensor, TensorSpec

__all__ = ["ModelSpec", "Runtime", "Tensor", "TensorSpec"]
