"""Reading the audit chain and the verifiable trees through a unit of work (what the CLI, the API and the
dashboard call)."""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelmarket.audit import chain, trees
from modelmarket.audit.checkpoints import Checkpoint, CheckpointKey
from modelmarket.audit.leaves import TREES, USAGE_TREE, parse_ref
from modelmarket.audit.ports import AuditUnitOfWork, ProofsUnitOfWork
from modelmarket.audit.proofs import InclusionProof
from modelmarket.audit.records import AuditRecord, VerifyResult
from modelmarket.audit.tree_verify import VERIFY_BATCH_ROWS, TreeReport, verify_tree
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.core.uow import UnitOfWorkFactory


class AuditProofsUnitOfWork(AuditUnitOfWork, ProofsUnitOfWork, Protocol):
    pass


class AuditService:
    def __init__(self, uow: UnitOfWorkFactory[AuditProofsUnitOfWork], key: CheckpointKey | None = None) -> None:
        self.uow = uow
        self.key = key

    def verify(self, batch_rows: int = chain.VERIFY_BATCH_ROWS) -> VerifyResult:
        with self.uow.read() as uow:
            return chain.verify(uow.audit, batch_rows=batch_rows)

    def list(self, limit: int, after_seq: int = 0) -> list[AuditRecord]:
        with self.uow.read() as uow:
            return chain.list_records(uow.audit, limit, after_seq)

    def head(self) -> AuditRecord | None:
        with self.uow.read() as uow:
            return chain.head(uow.audit)

    def verify_trees(self, batch_rows: int = VERIFY_BATCH_ROWS) -> tuple[TreeReport, ...]:
        """Both trees against their rows, their stored checkpoints, this home's key and the copies of the latest
        checkpoints the home keeps outside the store."""
        public_key = self._home_public_key()
        return tuple(self._verify_tree(tree, public_key, batch_rows) for tree in TREES)

    def _verify_tree(self, tree: str, public_key: Ed25519PublicKey | None, batch_rows: int) -> TreeReport:
        """The kept copy is read before the snapshot is taken, and is written just before the transaction that
        signed it commits: a tree that fails while a copy is kept is checked once more from a fresh snapshot, so
        a checkpoint committed meanwhile is not taken for a tail cut off."""
        report, kept = self._verify_once(tree, public_key, batch_rows)
        if not report.ok and kept:
            report, _ = self._verify_once(tree, public_key, batch_rows)
        return report

    def _verify_once(self, tree: str, public_key: Ed25519PublicKey | None, batch_rows: int) -> tuple[TreeReport, bool]:
        kept, unreadable = self._kept(tree)
        with self.uow.read() as uow:
            report = verify_tree(uow.proofs, tree, public_key, batch_rows, kept)
        if unreadable:
            report = replace(report, problems=(unreadable, *report.problems))
        return report, kept is not None

    def _kept(self, tree: str) -> tuple[Checkpoint | None, str | None]:
        if self.key is None:
            return None, None
        try:
            return self.key.kept(tree), None
        except InvalidInput as exc:
            return None, f"the copy of the latest {tree} checkpoint kept outside the store cannot be read: {exc}"

    def prove(self, ref: str, since: Checkpoint | None = None) -> InclusionProof:
        """The inclusion proof of a usage event (its id) or an audit record (``audit:SEQ``); with ``since``, an
        older checkpoint of its tree, also the proof that the latest checkpoint extends it."""
        tree, key = parse_ref(ref)
        with self.uow.read() as uow:
            return trees.prove(uow.proofs, tree, key, since)

    def prove_usage_event(self, event_id: str, account_id: str) -> InclusionProof:
        """The proof of one of ``account_id``'s usage events; another account's is not found, like an unknown one."""
        with self.uow.read() as uow:
            facts = uow.proofs.usage_facts(event_id) if 0 < len(event_id) <= 64 else None
            if facts is None or facts.account_id != account_id:
                raise NotFound(f"no usage event {event_id[:64]!r} (not applied yet, or unknown)")
            return trees.prove(uow.proofs, USAGE_TREE, event_id)

    def usage_event_applied(self, event_id: str) -> bool:
        """Whether metering applied the usage event ``event_id`` (of any account)."""
        if not 0 < len(event_id) <= 64:
            return False
        with self.uow.read() as uow:
            return uow.proofs.usage_facts(event_id) is not None

    def _home_public_key(self) -> Ed25519PublicKey | None:
        if self.key is None:
            return None
        try:
            return self.key.public_key(create=False)
        except NotFound:
            return None
