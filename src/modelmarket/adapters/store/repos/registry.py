"""``RegistryRepository`` on SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update

from modelmarket.adapters.store import schema as t
from modelmarket.registry.catalogue import ArtifactRecord
from modelmarket.registry.ports import StoredAlias, StoredModel, StoredVersion

_V = t.model_versions.c


class SqlRegistryRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def model(self, name: str) -> StoredModel | None:
        row = self.conn.execute(select(t.models).where(t.models.c.name == name)).first()
        return None if row is None else StoredModel(row.name, row.provider_account_id, row.created_at)

    def add_model(self, model: StoredModel) -> None:
        self.conn.execute(insert(t.models).values(**model._asdict()))

    def version(self, model_name: str, version: str) -> StoredVersion | None:
        row = self._versions_query().where(_V.model_name == model_name, _V.version == version)
        found = self.conn.execute(row).first()
        return None if found is None else self._stored([found])[0]

    def add_version(self, version: StoredVersion) -> None:
        major, minor, patch = version.semver
        self.conn.execute(
            insert(t.model_versions).values(
                id=version.id,
                model_name=version.model_name,
                version=version.version,
                version_major=major,
                version_minor=minor,
                version_patch=patch,
                digest=version.digest,
                manifest_json=version.manifest_json,
                created_at=version.created_at,
                evaluation_json=version.evaluation_json,
            )
        )
        if version.artifacts:  # a pipeline has none (an empty executemany would insert one row of NULLs)
            self.conn.execute(
                insert(t.artifacts),
                [
                    {"version_id": version.id, "path": a.path, "sha256": a.sha256, "size_bytes": a.size_bytes}
                    for a in version.artifacts
                ],
            )

    def newest_version(self, model_name: str) -> str | None:
        value = self.conn.execute(
            select(_V.version)
            .where(_V.model_name == model_name)
            .order_by(_V.version_major.desc(), _V.version_minor.desc(), _V.version_patch.desc())
            .limit(1)
        ).scalar()
        return None if value is None else str(value)

    def alias(self, model_name: str, alias: str) -> str | None:
        a = t.aliases.c
        value = self.conn.execute(select(a.version).where(a.model_name == model_name, a.alias == alias)).scalar()
        return None if value is None else str(value)

    def set_alias(self, alias: StoredAlias, updated_at: str) -> None:
        a = t.aliases.c
        where = (a.model_name == alias.model_name, a.alias == alias.alias)
        changed = self.conn.execute(
            update(t.aliases).where(*where).values(version=alias.version, updated_at=updated_at)
        )
        if changed.rowcount == 0:
            self.conn.execute(insert(t.aliases).values(**alias._asdict(), updated_at=updated_at))

    def models(self) -> list[StoredModel]:
        rows = self.conn.execute(select(t.models).order_by(t.models.c.name))
        return [StoredModel(r.name, r.provider_account_id, r.created_at) for r in rows]

    def version_index(self) -> list[tuple[str, str]]:
        return [(str(r.id), str(r.model_name)) for r in self.conn.execute(select(_V.id, _V.model_name))]

    def versions(self, ids: Sequence[str]) -> list[StoredVersion]:
        if not ids:
            return []
        rows = self.conn.execute(self._versions_query().where(_V.id.in_(list(ids)))).all()
        return self._stored(rows)

    def aliases(self) -> list[StoredAlias]:
        return [StoredAlias(r.model_name, r.alias, r.version) for r in self.conn.execute(select(t.aliases))]

    @staticmethod
    def _versions_query() -> Any:
        return select(t.model_versions, t.models.c.provider_account_id).join(
            t.models, t.models.c.name == t.model_versions.c.model_name
        )

    def _stored(self, rows: Sequence[Any]) -> list[StoredVersion]:
        ids = [r.id for r in rows]
        arts: dict[str, list[ArtifactRecord]] = {}
        query = select(t.artifacts).where(t.artifacts.c.version_id.in_(ids)).order_by(t.artifacts.c.path)
        for a in self.conn.execute(query):
            arts.setdefault(a.version_id, []).append(ArtifactRecord(a.path, a.sha256, a.size_bytes))
        return [
            StoredVersion(
                id=r.id,
                model_name=r.model_name,
                version=r.version,
                semver=(r.version_major, r.version_minor, r.version_patch),
                digest=r.digest,
                manifest_json=r.manifest_json,
                created_at=r.created_at,
                provider_account_id=r.provider_account_id,
                artifacts=tuple(arts.get(r.id, ())),
                evaluation_json=r.evaluation_json,
            )
            for r in rows
        ]
