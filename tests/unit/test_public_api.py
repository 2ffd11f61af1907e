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
        "NotFound",
        "NotReady",
        "PermissionDenied",
        "Unauthenticated",
        "ensure",
        "quantize_minor",
    },
    "modelmarket.accounts": {"ROLES", "Account", "AccountService", "IssuedKey", "KeyIndex", "Role", "StoredKey"},
    "modelmarket.registry": {
        "LATEST",
        "ArtifactRecord",
        "Catalogue",
        "CatalogueLoader",
        "Manifest",
        "ModelEntry",
        "PublishResult",
        "RegistryService",
        "VersionRecord",
        "load_manifest",
        "model_summary",
    },
    "modelmarket.runtime": {"ModelSpec", "Runtime", "Tensor", "TensorSpec"},
    "modelmarket.metering": {"MeteringService", "UnitKind", "UsageEvent", "UsageService", "UsageSummary", "count_iu"},
    "modelmarket.billing": {
        "InvoiceDoc",
        "InvoiceService",
        "LedgerService",
        "Period",
        "PlanService",
        "PriceService",
        "ProviderStatement",
        "Rater",
        "parse_period",
        "render_invoice_text",
        "render_statement_text",
    },
    "modelmarket.audit": {
        "GENESIS_HASH",
        "AuditRecord",
        "AuditService",
        "VerifyResult",
        "append",
        "canonical_json",
        "head",
        "list_records",
        "record_hash",
        "verify",
    },
    "modelmarket.gateway": {"DataPlane", "GatewayApp", "GatewayParts", "bootstrap_gateway", "build_gateway"},
    "modelmarket.adapters": set(),
    "modelmarket.adapters.store": {"SqlStore", "SqlUnitOfWork", "open_store"},
    "modelmarket.adapters.blobs": {"FsBlobStore", "S3BlobStore", "open_blobs"},
    "modelmarket.adapters.bus": {
        "EventLogFull",
        "GroupCommitWriter",
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
