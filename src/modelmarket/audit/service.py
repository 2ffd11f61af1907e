"""Reading the audit chain and the verifiable trees through a unit of work (what the CLI, the API and the
dashboard call)."""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelmarket.audit import chain, trees
from modelmarket.audit.checkpoints import CheckpointKey
from modelmarket.audit.leaves import TREES, USAGE_TREE, parse_ref
from modelmarket.audit.ports import AuditUnitOfWork, ProofsUnitOfWork
from modelmarket.audit.proofs import InclusionProof
from modelmarket.audit.records import AuditRecord, VerifyResult
from modelmarket.audit.tree_verify import VERIFY_BATCH_ROWS, TreeReport, verify_tree
from modelmarket.core.errors import NotFound
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
        """Both trees against their rows, their stored checkpoints and this home's key."""
        public_key = self._home_public_key()
        with self.uow.read() as uow:
            return tuple(verify_tree(uow.proofs, tree, public_key, batch_rows) for tree in TREES)

    def prove(self, ref: str) -> InclusionProof:
        """The inclusion proof of a usage event (its id) or an audit record (``audit:SEQ``)."""
        tree, key = parse_ref(ref)
        with self.uow.read() as uow:
            return trees.prove(uow.proofs, tree, key)

    def prove_usage_event(self, event_id: str, account_id: str) -> InclusionProof:
        """The proof of one of ``account_id``'s usage events; another account's is not found, like an unknown one."""
        with self.uow.read() as uow:
            facts = uow.proofs.usage_facts(event_id) if 0 < len(event_id) <= 64 else None
            if facts is None or facts.account_id != account_id:
                raise NotFound(f"no usage event {event_id[:64]!r} (not applied yet, or unknown)")
            return trees.prove(uow.proofs, USAGE_TREE, event_id)

    def _home_public_key(self) -> Ed25519PublicKey | None:
        if self.key is None:
            return None
        try:
            return self.key.public_key(create=False)
        except NotFound:
            return None
