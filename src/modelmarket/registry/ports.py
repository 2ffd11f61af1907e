"""What the registry needs from storage, from the blob store and from the runtimes it can publish for."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from modelmarket.accounts.ports import AccountRepository
from modelmarket.audit.ports import AuditRepository
from modelmarket.registry.catalogue import ArtifactRecord


class StoredModel(NamedTuple):
    name: str
    provider_account_id: str
    created_at: str


class StoredVersion(NamedTuple):
    """A version as stored: the manifest as JSON text, parsed by the registry (not by the adapter)."""

    id: str
    model_name: str
    version: str
    semver: tuple[int, int, int]
    digest: str
    manifest_json: str
    created_at: str
    provider_account_id: str
    artifacts: tuple[ArtifactRecord, ...]
    evaluation_json: str | None = None
    """What the publish gate measured (benchmark, bias), as JSON text; None for a version published without it."""


class StoredAlias(NamedTuple):
    model_name: str
    alias: str
    version: str


class RegistryRepository(Protocol):
    def model(self, name: str) -> StoredModel | None: ...

    def add_model(self, model: StoredModel) -> None: ...

    def version(self, model_name: str, version: str) -> StoredVersion | None: ...

    def add_version(self, version: StoredVersion) -> None:
        """The version row and its artifact rows."""
        ...

    def newest_version(self, model_name: str) -> str | None:
        """The highest version by semver (major, minor, patch as numbers)."""
        ...

    def alias(self, model_name: str, alias: str) -> str | None: ...

    def set_alias(self, alias: StoredAlias, updated_at: str) -> None: ...

    def models(self) -> list[StoredModel]: ...

    def version_index(self) -> list[tuple[str, str]]:
        """(version id, model name) of every version: cheap, so a reload reads in full only what is new."""
        ...

    def versions(self, ids: Sequence[str]) -> list[StoredVersion]: ...

    def aliases(self) -> list[StoredAlias]: ...


class RegistryUnitOfWork(Protocol):
    @property
    def registry(self) -> RegistryRepository: ...

    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def audit(self) -> AuditRepository: ...


class BlobStore(Protocol):
    """Content-addressed, immutable artifact bytes."""

    def put_file(self, src: Path, expected_sha256: str | None = None) -> tuple[str, int]:
        """Copy ``src`` in; returns (sha256, size). With ``expected_sha256``, refuses bytes that hash otherwise
        (the file changed after it was checked)."""
        ...

    def path(self, digest: str) -> Path: ...

    def exists(self, digest: str) -> bool: ...


class RuntimeCatalog(Protocol):
    """The runtimes a version can be published for, and each one's check of its parameters."""

    def names(self) -> Iterable[str]: ...

    def validate(self, runtime: str, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        """Raise InvalidInput naming the parameter (``parameters.x: ...``) if the runtime would refuse it."""
        ...
