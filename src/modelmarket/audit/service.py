"""Reading the audit chain and the verifiable trees through a unit of work (what the CLI, the API and the
dashboard call)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelmarket.audit import chain, trees
from modelmarket.audit.checkpoints import Checkpoint, CheckpointKey, key_id_of
from modelmarket.audit.leaves import TREES, USAGE_TREE, parse_ref
from modelmarket.audit.ports import AuditUnitOfWork, ProofsUnitOfWork
from modelmarket.audit.proofs import InclusionProof
from modelmarket.audit.records import AuditRecord, VerifyResult
from modelmarket.audit.tree_verify import VERIFY_BATCH_ROWS, TreeReport, verify_tree
from modelmarket.core.clock import Clock
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.core.uow import UnitOfWorkFactory


class AuditProofsUnitOfWork(AuditUnitOfWork, ProofsUnitOfWork, Protocol):
    pass


@dataclass(frozen=True, slots=True)
class CheckpointFacts:
    """What is known of a tree without walking it: its size, its latest signed checkpoint with the signature
    checked against this home's key, and how that checkpoint stands to the copy kept outside the store."""

    tree: str
    leaves: int
    checkpoint: Checkpoint | None
    """The store's latest (None before the first)."""
    signature: str
    """``valid``, ``invalid``, ``unchecked`` (this home has no key) or ``none`` (no checkpoint)."""
    kept: Checkpoint | None
    """The copy kept in the home's keys folder (None: none kept, or unreadable)."""
    kept_state: str
    """``matches``, ``none kept``, ``unreadable``, ``store ahead``, ``store behind`` or ``other root``."""
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def checkpoint_facts(
    tree: str,
    leaves: int,
    latest: Checkpoint | None,
    kept: Checkpoint | None,
    unreadable: str | None,
    public_key: Ed25519PublicKey | None,
) -> CheckpointFacts:
    """The checks of ``verify_tree`` that need no walk of the tree: the latest checkpoint's signature, its size
    against the tree's, and the store's latest checkpoint against the copy kept outside the store."""
    problems = [unreadable] if unreadable else []
    signature = "none"
    if latest is None and leaves and public_key is not None:
        problems.append(f"the {tree} tree has {leaves} leaves but no signed checkpoint, and this home has a key")
    if latest is not None:
        signature = "unchecked" if public_key is None else "valid" if latest.signed_by(public_key) else "invalid"
        if signature == "invalid":
            problems.append(f"the latest checkpoint ({latest.describe()}) is not signed by this home's key")
        if latest.size > leaves:
            problems.append(f"the latest checkpoint ({latest.describe()}) covers more than the {leaves} leaves stored")
    kept_state = "unreadable" if unreadable else "none kept"
    if kept is not None:
        if latest is None or latest.size < kept.size:
            kept_state = "store behind"
            problems.append(
                f"the store's latest {tree} checkpoint is older than the copy kept outside the store "
                f"({kept.describe()}): a tail was cut off, or the store was put back to an older copy"
            )
        elif latest.size > kept.size:
            kept_state = "store ahead"
        elif latest.root != kept.root:
            kept_state = "other root"
            problems.append(f"the store's latest {tree} checkpoint has another root than the copy kept outside it")
        else:
            kept_state = "matches"
        if public_key is not None and not kept.signed_by(public_key):
            problems.append(
                f"the {tree} checkpoint kept outside the store is not signed by this home's key {key_id_of(public_key)}"
            )
    return CheckpointFacts(tree, leaves, latest, signature, kept, kept_state, tuple(problems))


@dataclass(frozen=True, slots=True)
class FullVerification:
    """One run of everything ``modelmarket audit verify`` checks: the hash chain and both trees, walked whole."""

    chain: VerifyResult
    trees: tuple[TreeReport, ...]
    records: int
    """The chain's head seq when the run began (the records it covered)."""
    started_at: str
    finished_at: str

    @property
    def ok(self) -> bool:
        return self.chain.ok and all(t.ok for t in self.trees)

    @property
    def sizes(self) -> dict[str, int]:
        """What it covered: ``records`` and the leaves of each tree (by tree name)."""
        return {"records": self.records, **{t.tree: t.leaves for t in self.trees}}


class AuditService:
    def __init__(
        self, uow: UnitOfWorkFactory[AuditProofsUnitOfWork], key: CheckpointKey | None = None, usage_partitions: int = 1
    ) -> None:
        self.uow = uow
        self.key = key
        self.usage_partitions = usage_partitions
        """Partitions of the usage-event log: the usage tree's log offsets increase within each one."""
        self._full_lock = threading.Lock()
        self._full_since: str | None = None
        self._full_last: FullVerification | None = None

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

    def checkpoint_facts(self) -> tuple[CheckpointFacts, ...]:
        """Each tree's size and latest checkpoint, checked without walking the tree (a few rows and the kept
        copies read): what can be shown on every page view. ``verify_trees`` is the whole check."""
        public_key = self._home_public_key()
        out = []
        for tree in TREES:
            kept, unreadable = self._kept(tree)
            leaves, latest = self._latest(tree)
            if kept is not None and (latest is None or latest.size < kept.size):
                leaves, latest = self._latest(tree)  # the copy is written just before its checkpoint commits
            out.append(checkpoint_facts(tree, leaves, latest, kept, unreadable, public_key))
        return tuple(out)

    def _latest(self, tree: str) -> tuple[int, Checkpoint | None]:
        with self.uow.read() as uow:
            head = uow.proofs.head(tree)
            newest = uow.proofs.newest_checkpoint(tree)
        found = [cp for cp in (None if head is None else head.checkpoint, newest) if cp is not None]
        return (0 if head is None else head.size), max(found, key=lambda cp: cp.size, default=None)

    def verify_all(self, clock: Clock) -> FullVerification | None:
        """The chain and both trees verified whole (``verify`` and ``verify_trees``), one run at a time in this
        process: None, at once, while another runs. The last run is kept (``last_full_verification``)."""
        if not self._full_lock.acquire(blocking=False):
            return None
        try:
            started = clock().isoformat()
            self._full_since = started
            head = self.head()
            chain_result = self.verify()
            trees = self.verify_trees()
            done = FullVerification(chain_result, trees, 0 if head is None else head.seq, started, clock().isoformat())
            self._full_last = done
            return done
        finally:
            self._full_since = None
            self._full_lock.release()

    def full_verification_running(self) -> str | None:
        """When the full verification running in this process began, or None."""
        return self._full_since

    def last_full_verification(self) -> FullVerification | None:
        """The last full verification this process ran (None: none yet)."""
        return self._full_last

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
            report = verify_tree(uow.proofs, tree, public_key, batch_rows, kept, self.usage_partitions)
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
