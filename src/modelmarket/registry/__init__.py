"""Registry: the manifest schema, publishing immutable versions, aliases and the catalogue."""

from modelmarket.registry.catalogue import LATEST, ArtifactRecord, Catalogue, ModelEntry, VersionRecord
from modelmarket.registry.manifest import Manifest, load_manifest
from modelmarket.registry.service import CatalogueLoader, PublishResult, RegistryService
from modelmarket.registry.views import model_summary

__all__ = [
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
]
