"""Lineage: where a published version comes from, and what an invoice line was made of.

A version: its artifacts (path, sha256, size), the datasets and parent models its manifest declares
(``lineage:``, ``registry/declarations.py``), the publish gate's stages when it went through the gate, and the audit
records about it. An invoice: each line with the usage events it bills (the ``x-request-id`` of each call), their
count, first and last time and the sum of their amounts, which must be the line's.

Read only. An invoice's events are streamed from the store and grouped exactly as ``billing.lifecycle.build_lines``
groups them; at most ``limit_per_line`` calls are listed per line (the count, times and amounts cover them all).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from modelmarket.audit.ports import AuditRepository
from modelmarket.billing.lifecycle import Line, build_lines
from modelmarket.billing.period import parse_period
from modelmarket.billing.plans import segments
from modelmarket.billing.ports import BilledCall, PlanRepository, StoredInvoice
from modelmarket.core.errors import InvalidInput, NotFound, ensure
from modelmarket.core.uow import UnitOfWorkFactory
from modelmarket.governance.invoice_lineage import EventGroups, InvoiceLineage, match_lines
from modelmarket.governance.model import Submission
from modelmarket.governance.ports import GateRepository
from modelmarket.registry.catalogue import ArtifactRecord, VersionRecord
from modelmarket.registry.declarations import DatasetDecl
from modelmarket.registry.manifest import split_model_ref
from modelmarket.registry.ports import RegistryRepository, StoredVersion
from modelmarket.registry.service import version_from_stored

DEFAULT_LIMIT_PER_LINE = 100
MAX_LIMIT_PER_LINE = 10_000
"""Calls listed per invoice line (the line's count, times and amount always cover all of its events)."""
MAX_AUDIT_RECORDS = 500
"""Audit records listed about one version (the total is counted)."""
AUDIT_SCAN_BATCH_ROWS = 1000
MAX_REF_CHARS = 300
MAX_INVOICE_ID_CHARS = 64


class LineageLedger(Protocol):
    def invoice(self, invoice_id: str) -> StoredInvoice | None: ...

    def billed_calls(self, account_id: str, period: str, currency: str) -> Iterator[BilledCall]:
        """The rated events of one invoice with their calls' time and latency, by log offset; streamed."""
        ...


class LineageUnitOfWork(Protocol):
    @property
    def registry(self) -> RegistryRepository: ...

    @property
    def gate(self) -> GateRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    @property
    def plans(self) -> PlanRepository: ...

    @property
    def ledger(self) -> LineageLedger: ...


# -- a version -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatasetLineage:
    decl: DatasetDecl
    files: tuple[ArtifactRecord, ...]
    """For a package ``path``: the artifact files it names (one file, or a folder's files)."""

    @property
    def sha256(self) -> str | None:
        """A package file's hash as stored at publish; an external dataset's declared hash; else None."""
        if self.decl.path is None:
            return self.decl.sha256
        return self.files[0].sha256 if len(self.files) == 1 and self.files[0].path == self.decl.path else None

    def to_json(self) -> dict[str, Any]:
        d = self.decl
        doc: dict[str, Any] = {"name": d.name, "role": d.role, "description": d.description}
        if d.path is None:
            doc.update(source="external", uri=d.uri, sha256=d.sha256 or "not declared")
            return doc
        doc.update(source="package", path=d.path, sha256=self.sha256)
        if self.sha256 is not None:
            doc["size_bytes"] = self.files[0].size_bytes
        else:
            doc["files"] = [{"path": a.path, "sha256": a.sha256, "size_bytes": a.size_bytes} for a in self.files]
        if d.sha256 is not None:
            doc["declared_sha256"] = d.sha256
            doc["matches_declared"] = d.sha256 == self.sha256
        return doc


@dataclass(frozen=True, slots=True)
class ParentLineage:
    ref: str
    version: StoredVersion | None
    """None: not published here."""

    def to_json(self) -> dict[str, Any]:
        if self.version is None:
            return {"ref": self.ref, "published": False, "note": "not published here"}
        v = self.version
        return {"ref": self.ref, "published": True, "version_id": v.id, "digest": v.digest, "created_at": v.created_at}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    occurred_at: str
    actor: str
    action: str
    subject: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "action": self.action,
            "actor": self.actor,
            "occurred_at": self.occurred_at,
            "subject": self.subject,
        }


@dataclass(frozen=True, slots=True)
class VersionLineage:
    version: VersionRecord
    datasets: tuple[DatasetLineage, ...]
    parents: tuple[ParentLineage, ...]
    submission: Submission | None
    """The gate's submission that published it; None for a version published without the gate."""
    audit: tuple[AuditEntry, ...]
    audit_total: int

    def to_json(self) -> dict[str, Any]:
        v = self.version
        sub = self.submission
        gate: dict[str, Any] | None = None
        if sub is not None:
            gate = {
                "submission_id": sub.id,
                "status": sub.status,
                "decided_by": sub.decided_by,
                "stages": [{"stage": s.stage, "status": s.status, "summary": s.summary} for s in sub.stages],
            }
        return {
            "ref": v.ref,
            "version": {
                "id": v.id,
                "model": v.model_name,
                "version": v.version,
                "digest": v.digest,
                "created_at": v.created_at,
                "provider": v.manifest.provider,
                "provider_account_id": v.provider_account_id,
            },
            "artifacts": [{"path": a.path, "sha256": a.sha256, "size_bytes": a.size_bytes} for a in v.artifacts],
            "datasets": [d.to_json() for d in self.datasets],
            "parents": [p.to_json() for p in self.parents],
            "gate": gate,
            "audit": [a.to_json() for a in self.audit],
            "audit_total": self.audit_total,
        }


class LineageService:
    def __init__(self, uow: UnitOfWorkFactory[LineageUnitOfWork]) -> None:
        self.uow = uow

    # -- a version -----------------------------------------------------------------------------------------------
    def version_lineage(self, ref: str) -> VersionLineage:
        """``name@version`` (or ``name@alias``): its artifacts, declared datasets and parents, gate stages and
        audit records. ``NotFound`` for a model or version not published here."""
        if not ref or len(ref) > MAX_REF_CHARS:
            raise InvalidInput(f"ref: give NAME@VERSION (at most {MAX_REF_CHARS} characters)")
        name, wanted = split_model_ref(ref)
        if not name or not wanted:
            raise InvalidInput(f"ref: {ref[:80]!r} must be NAME@VERSION, e.g. digits@1.0.0")
        with self.uow.read() as uow:
            stored = _stored_version(uow.registry, name, wanted)
            version = version_from_stored(stored)
            declared = version.manifest.lineage
            datasets = (
                tuple(DatasetLineage(d, _dataset_files(d, version.artifacts)) for d in declared.datasets)
                if declared
                else ()
            )
            parents = (
                tuple(ParentLineage(p, uow.registry.version(*_name_version(p))) for p in declared.parents)
                if declared
                else ()
            )
            submission = _submission(uow.gate, version)
            subjects = {version.ref} | ({submission.id} if submission is not None else set())
            audit, total = _audit_about(uow.audit, subjects, version)
        return VersionLineage(version, datasets, parents, submission, audit, total)

    # -- an invoice ----------------------------------------------------------------------------------------------
    def invoice_lineage(self, invoice_id: str, limit_per_line: int = DEFAULT_LIMIT_PER_LINE) -> InvoiceLineage:
        """Each line of the invoice with the usage events it bills (the first ``limit_per_line`` listed with their
        calls). A draft's lines are computed from the rated events as they stand (as ``invoices show`` does);
        a finalized or void invoice's are its frozen lines, and its events must still make them exactly."""
        if not 0 <= limit_per_line <= MAX_LIMIT_PER_LINE:
            raise InvalidInput(f"limit: calls listed per line must be 0-{MAX_LIMIT_PER_LINE:,}, got {limit_per_line}")
        if not invoice_id or len(invoice_id) > MAX_INVOICE_ID_CHARS:
            raise InvalidInput(f"invoice: an invoice id (inv_...) of at most {MAX_INVOICE_ID_CHARS} characters")
        with self.uow.read() as uow:
            stored = uow.ledger.invoice(invoice_id)
            if stored is None:
                raise NotFound(f"no invoice {invoice_id!r} (list them with `modelmarket invoices list ACCOUNT`)")
            plans = {(p.name, p.version): p for p in uow.plans.plan_versions()}
            found = EventGroups(plans, limit_per_line)
            calls = uow.ledger.billed_calls(stored.account_id, stored.period, stored.currency)
            if stored.status == "draft":
                period = parse_period(stored.period)
                segs = segments(uow.plans.subscriptions(stored.account_id), period)
                lines = tuple(build_lines(found.tee(calls), plans, segs, period, stored.currency))
                events = found.count
            else:
                body = orjson.loads(stored.lines_json)
                lines = tuple(Line.from_json(x) for x in body["lines"])
                found.take_all(calls)
                events = int(body["events"])
                ensure(events == found.count, f"invoice {invoice_id}: billed {events} events, {found.count} land on it")
        matched = match_lines(invoice_id, lines, found.groups)
        return InvoiceLineage(stored, tuple(matched), events, limit_per_line)


def _name_version(ref: str) -> tuple[str, str]:
    name, version = split_model_ref(ref)
    return name, version or ""


def _stored_version(registry: RegistryRepository, name: str, wanted: str) -> StoredVersion:
    if registry.model(name) is None:
        raise NotFound(f"model {name!r} is not published here")
    stored = registry.version(name, wanted)
    if stored is None:
        aliased = registry.alias(name, wanted)
        stored = registry.version(name, aliased) if aliased is not None else None
    if stored is None:
        raise NotFound(f"model {name!r} has no version or alias {wanted!r}")
    return stored


def _dataset_files(decl: DatasetDecl, artifacts: tuple[ArtifactRecord, ...]) -> tuple[ArtifactRecord, ...]:
    """The stored files a dataset's package ``path`` names: the file, or a folder's files."""
    if decl.path is None:
        return ()
    exact = tuple(a for a in artifacts if a.path == decl.path)
    return exact or tuple(a for a in artifacts if a.path.startswith(decl.path + "/"))


def _submission(gate: GateRepository, version: VersionRecord) -> Submission | None:
    """The submission that published the version (named in its evaluation), else the newest of its ref."""
    sub_id = (version.evaluation or {}).get("submission")
    if isinstance(sub_id, str):
        found = gate.get(sub_id)
        if found is not None:
            return found
    return gate.latest_for(version.model_name, version.version)


def _audit_about(
    repo: AuditRepository, subjects: set[str], version: VersionRecord
) -> tuple[tuple[AuditEntry, ...], int]:
    """The records whose subject is the version (or its submission), and alias moves to or from it: the chain
    streamed in batches, the first ``MAX_AUDIT_RECORDS`` kept."""
    alias_prefix = f"{version.model_name}@"
    kept: list[AuditEntry] = []
    total = 0
    for r in repo.scan(AUDIT_SCAN_BATCH_ROWS):
        about = r.subject in subjects
        if not about and r.action == "alias.moved" and r.subject.startswith(alias_prefix):
            payload = orjson.loads(r.payload_json)
            about = version.version in (payload.get("from"), payload.get("to"))
        if about:
            total += 1
            if len(kept) < MAX_AUDIT_RECORDS:
                kept.append(AuditEntry(r.seq, r.occurred_at, r.actor, r.action, r.subject))
    return tuple(kept), total
