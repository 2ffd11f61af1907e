"""Registry: the manifest schema, publishing immutable versions, aliases and the catalogue."""

from modelmarket.registry.manifest import Manifest, load_manifest
from modelmarket.registry.service import PublishResult, RegistryService, VersionRecord

__all__ = ["Manifest", "PublishResult", "RegistryService", "VersionRecord", "load_manifest"]
