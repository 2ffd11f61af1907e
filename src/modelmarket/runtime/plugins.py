"""Discovery of Runtime plug-ins through the entry point group ``modelmarket.runtimes``.

A third party ships a runtime as its own distribution by declaring, in its ``pyproject.toml``::

    [project.entry-points."modelmarket.runtimes"]
    myformat = "mypackage.runtime:MyRuntime"
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import InputLimits, Runtime

__all__ = [
    "ENTRY_POINT_GROUP",
    "available_runtimes",
    "load_runtime_class",
    "runtime_input_limits",
    "validate_runtime_parameters",
]

ENTRY_POINT_GROUP = "modelmarket.runtimes"


def _runtime_entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_runtimes() -> list[str]:
    """Names of the installed runtimes, sorted."""
    return sorted(_runtime_entry_points())


def load_runtime_class(name: str) -> type[Runtime]:
    """Import and return the Runtime class registered under ``name``.

    An unknown name is an operating error (a manifest naming a runtime that is not installed) and raises
    ``InvalidInput`` listing the installed runtimes. An entry point that does not name a Runtime subclass is a
    broken plug-in and raises ``TypeError``.
    """
    found = _runtime_entry_points()
    entry = found.get(name)
    if entry is None:
        available = ", ".join(sorted(found)) or "none"
        raise InvalidInput(f"unknown runtime {name!r}; available runtimes: {available}")
    loaded = entry.load()
    if not (isinstance(loaded, type) and issubclass(loaded, Runtime)):
        raise TypeError(f"entry point {entry.value!r} for runtime {name!r} is not a Runtime subclass")
    return loaded


def validate_runtime_parameters(runtime_name: str, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
    """Check a manifest's ``parameters`` against runtime ``runtime_name`` at publish.

    ``artifacts`` are the version's artifact paths as collected (``PackageFile.relpath``). Raises ``InvalidInput``
    with the field path (``parameters.model_file: ...``; ``runtime: ...`` for a runtime that is not installed).
    A plug-in whose check fails with anything but ``InvalidInput`` is broken, and that error propagates.
    """
    try:
        cls = load_runtime_class(runtime_name)
    except InvalidInput as exc:
        raise InvalidInput(f"runtime: {exc.message}") from None
    if not isinstance(parameters, Mapping):
        raise InvalidInput("parameters: must be a mapping of names to values")
    cls.validate_parameters(parameters, tuple(artifacts))


@functools.cache
def runtime_input_limits(runtime_name: str) -> InputLimits:
    """The bounds runtime ``runtime_name`` puts on one call, for the gateway to refuse a request before forwarding."""
    return load_runtime_class(runtime_name).input_limits
