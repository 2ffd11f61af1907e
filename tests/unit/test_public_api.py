"""The public surface is what we mean it to be: each package's __all__ names exist and nothing else leaks in."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "modelmarket": {"__version__"},
    "modelmarket.core": {
        "AlreadyExists",
        "Conflict",
        "DomainError",
        "InvalidInput",
        "Money",
        "NotFound",
        "NotReady",
        "PermissionDenied",
        "Unauthenticated",
        "ensure",
        "quantize_minor",
    },
    "modelmarket.accounts": {"Account", "AccountService", "IssuedKey", "KeyIndex"},
    "modelmarket.registry": {
        "Manifest",
        "PublishResult",
        "RegistryService",
        "VersionRecord",
        "load_manifest",
    },
    "modelmarket.runtime": {"ModelSpec", "Runtime", "Tensor", "TensorSpec"},
    "modelmarket.metering": {"UsageEvent", "count_iu"},
    "modelmarket.gateway": {"GatewayApp"},
    "modelmarket.adapters.store": {"Store", "open_store"},
    "modelmarket.adapters.blobs": {"BlobStore", "FsBlobStore"},
    "modelmarket.adapters.bus": {
        "EventLogFull",
        "GroupCommitWriter",
        "LogRecord",
        "LoopGroupCommitWriter",
        "SqliteEventLog",
        "make_writer",
    },
}


@pytest.mark.parametrize("module_name", sorted(EXPECTED))
def test_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == EXPECTED[module_name]
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name} is exported but missing"
