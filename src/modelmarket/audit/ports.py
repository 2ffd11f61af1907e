"""What the audit chain needs from storage."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import NamedTuple, Protocol

from modelmarket.audit.checkpoints import Checkpoint
from modelmarket.audit.leaves import UsageFacts
from modelmarket.audit.records import AuditRecord


class StoredAuditRecord(NamedTuple):
    """A record as stored: ``payload_json`` is text, parsed (and checked) by the chain, not by the adapter."""

    seq: int
    occurred_at: str
    actor: str
    action: str
    subject: str
    payload_json: str
    prev_hash: str
    hash: str


class AuditRepository(Protocol):
    def last(self) -> tuple[int, str] | None:
        """The (seq, hash) of the newest record, or None. Takes the append lock until the transaction ends, so
        concurrent appenders take turns (call it as the last step of a write transaction)."""
        ...

    def insert(self, record: AuditRecord, payload_json: str) -> None: ...

    def scan(self, batch_rows: int) -> Iterator[StoredAuditRecord]:
        """Every record in seq order, fetched ``batch_rows`` at a time (the table is never loaded whole)."""
        ...

    def page(self, after_seq: int, limit: int) -> list[StoredAuditRecord]: ...

    def newest(self) -> StoredAuditRecord | None: ...


class AuditUnitOfWork(Protocol):
    @property
    def audit(self) -> AuditRepository: ...


# -- the verifiable trees (audit/trees.py) -------------------------------------------------------------------


class CheckpointSigner(Protocol):
    """Signs checkpoint bodies (Ed25519), and keeps a copy of each tree's latest checkpoint outside the store:
    ``audit.checkpoints.CheckpointKey``."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...

    def keep(self, checkpoint: Checkpoint) -> None:
        """Replace the copy of its tree's latest checkpoint kept outside the store."""
        ...

    def kept(self, tree: str) -> Checkpoint | None:
        """The copy kept outside the store (None: none yet)."""
        ...


class TreeHead(NamedTuple):
    """A tree's stored state: its size, its frontier (``merkle.Frontier.encode``) and its latest checkpoint."""

    size: int
    frontier: bytes
    checkpoint: Checkpoint | None


class StoredLeaf(NamedTuple):
    leaf_index: int
    ref: str
    """What the leaf is of: a usage event id, or an audit record's seq (as text)."""
    leaf_hash: bytes


class MerkleRepository(Protocol):
    """The trees' leaves, the heads of their perfect subtrees at every ``trees.STORED_LEVEL_STRIDE``-th level, their
    heads and checkpoints; and, to check them, the rows their leaves are made of. A tree is extended only under its
    source's write lock (the audit append lock, ``Lock.METERING``)."""

    def head(self, tree: str) -> TreeHead | None: ...

    def on_commit(self, key: str, action: Callable[[], None]) -> None:
        """Run ``action`` as the transaction commits, before the commit is made (when it raises, nothing is
        committed); never on a rollback. A later action of the same ``key`` in the transaction replaces it."""
        ...

    def save_head(self, tree: str, head: TreeHead) -> None: ...

    def add_leaves(self, tree: str, first_index: int, leaves: Sequence[tuple[str, bytes]]) -> None:
        """(ref, leaf hash) pairs at indexes ``first_index``, ``first_index + 1``, ..."""
        ...

    def add_nodes(self, tree: str, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        """(level, index at that level, head) of completed perfect subtrees."""
        ...

    def hashes_at(self, tree: str, level: int, indexes: Collection[int]) -> dict[int, bytes]:
        """The stored hashes at ``level`` (0: the leaf hashes) of ``indexes``, by index (a missing one left out)."""
        ...

    def leaf(self, tree: str, ref: str) -> StoredLeaf | None: ...

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint`` in the tree's history (one per size)."""
        ...

    def checkpoint(self, tree: str, size: int) -> Checkpoint | None:
        """The checkpoint of the history at ``size``, if one was kept."""
        ...

    def checkpoints(self, tree: str, after_size: int, limit: int) -> list[Checkpoint]:
        """The history's checkpoints with sizes above ``after_size``, by size."""
        ...

    def newest_checkpoint(self, tree: str) -> Checkpoint | None:
        """The history's largest."""
        ...

    def clear(self, tree: str) -> None:
        """Forget the tree's leaves and subtree heads, and make its head empty but for its latest checkpoint (the
        history is kept too), before a rebuild adds the same leaves again."""
        ...

    def usage_facts(self, event_id: str) -> UsageFacts | None: ...

    def audit_record(self, seq: int) -> StoredAuditRecord | None: ...

    def usage_leaves(self, after_index: int, limit: int) -> list[tuple[StoredLeaf, UsageFacts | None]]:
        """The usage tree's next leaves after ``after_index``, by index, each with its event's stored facts (None:
        the event is not in ``usage_events``)."""
        ...

    def audit_leaves(self, after_index: int, limit: int) -> list[tuple[StoredLeaf, StoredAuditRecord | None]]:
        """The audit tree's next leaves, each with the record at seq ``index + 1`` (None: there is none)."""
        ...

    def nodes(self, tree: str, level: int, after_index: int, limit: int) -> list[tuple[int, bytes]]:
        """Stored (index, head) of ``level`` with indexes above ``after_index``, by index."""
        ...

    def source_rows(self, tree: str) -> int:
        """How many rows the tree is made of: usage events applied, or audit records."""
        ...

    def outside_tree(self, tree: str, limit: int) -> list[str]:
        """Up to ``limit`` refs of source rows that have no leaf (usage event ids, audit seqs)."""
        ...


class ProofsUnitOfWork(Protocol):
    @property
    def proofs(self) -> MerkleRepository: ...
