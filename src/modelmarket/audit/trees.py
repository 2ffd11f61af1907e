"""The verifiable trees in the store: extended with their source's rows, signed, and proven. No storage code here.

Two trees (``leaves.TREES``): ``audit`` gets one leaf per audit record, in the transaction that appends the record,
and a signed checkpoint with it; ``usage`` one leaf per usage event the metering consumer applies, in its batch's
transaction, and a signed checkpoint at the end of each batch (so every applied event is covered when the batch
commits). Each tree keeps its latest checkpoint with its head; its history keeps every audit checkpoint and a
usage checkpoint at most every ``usage_checkpoint_s``. The signer also keeps a copy of the latest checkpoint
outside the store, replaced as the transaction commits, and only by one whose tree extends it.

A proof reads O(log n) rows: besides the leaves, the heads of the perfect subtrees at every
``STORED_LEVEL_STRIDE``-th level are stored as the tree grows (about n/15 rows), so any subtree head is computed
from at most ``2**(STORED_LEVEL_STRIDE - 1)`` stored hashes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import TypeVar

from modelmarket.audit.chain import record_from_stored
from modelmarket.audit.checkpoints import Checkpoint, checkpoint_body
from modelmarket.audit.leaves import AUDIT_TREE, TREES, USAGE_TREE, audit_leaf, usage_leaf
from modelmarket.audit.merkle import (
    EMPTY_ROOT,
    HASH_BYTES,
    Frontier,
    SubtreeHash,
    consistency_path,
    inclusion_path,
    leaf_hash,
    perfect_root,
    root_from_inclusion,
    subtree_root,
)
from modelmarket.audit.ports import CheckpointSigner, MerkleRepository, StoredAuditRecord, TreeHead
from modelmarket.audit.proofs import Consistency, InclusionProof
from modelmarket.audit.records import AuditRecord, format_timestamp
from modelmarket.core.errors import Conflict, InvalidInput, NotFound, NotReady, ensure

STORED_LEVEL_STRIDE = 4
"""Subtree heads are stored at levels 4, 8, 12, ... (a level-4 head covers 16 leaves)."""
_T = TypeVar("_T")


def grow(
    repo: MerkleRepository,
    tree: str,
    leaves: Sequence[tuple[str, bytes]],
    signer: CheckpointSigner | None,
    now: datetime,
    history_every_s: float = 0.0,
) -> TreeHead:
    """Append ``leaves`` ((ref, leaf data) pairs, in order) to ``tree`` and sign a checkpoint of the result (none
    without a signer). The history keeps it unless its newest is under ``history_every_s`` old."""
    ensure(tree in TREES, f"no tree {tree!r}")
    head = repo.head(tree)
    frontier = Frontier() if head is None else Frontier.decode(head.size, head.frontier)
    first = frontier.size
    kept = signer.kept(tree) if signer is not None and leaves else None
    kept_root = frontier.root() if kept is not None and kept.size == first else None
    hashed = [(ref, leaf_hash(data)) for ref, data in leaves]
    nodes: list[tuple[int, int, bytes]] = []
    for _, h in hashed:
        completed = frontier.append(h, STORED_LEVEL_STRIDE)
        if completed:
            nodes += completed
        if kept is not None and frontier.size == kept.size:
            kept_root = frontier.root()  # the tree passes the kept checkpoint's size: it must have its root
    repo.add_leaves(tree, first, hashed)
    if nodes:
        repo.add_nodes(tree, nodes)
    previous = latest = None if head is None else head.checkpoint
    if signer is not None and hashed:
        latest = _sign(repo, tree, frontier, latest, signer, now, history_every_s)
        if latest is not None and latest is not previous and _extends_kept(repo, kept, kept_root, first, previous):
            repo.on_commit(f"kept-checkpoint:{tree}", partial(signer.keep, latest))
    grown = TreeHead(frontier.size, frontier.encode(), latest)
    repo.save_head(tree, grown)
    return grown


def _extends_kept(
    repo: MerkleRepository,
    kept: Checkpoint | None,
    kept_root: bytes | None,
    first: int,
    previous: Checkpoint | None,
) -> bool:
    """Whether the tree just grown from ``first`` leaves extends the checkpoint kept outside the store, which
    may then be replaced by the new one. When it does not (its tail was cut off and it grew again, or the store
    was put back to an older copy), the kept copy stays as it is and ``audit verify`` names the difference."""
    if kept is None:
        return True
    if kept_root is not None:  # the tree had the kept checkpoint's size at the start or on the way
        return kept_root == kept.root
    if kept.size > first:  # still short of it
        return False
    if kept == previous:
        return True
    try:
        return stored_root(repo, kept.tree, kept.size) == kept.root
    except Conflict:  # stored hashes missing
        return False


def _sign(
    repo: MerkleRepository,
    tree: str,
    frontier: Frontier,
    latest: Checkpoint | None,
    signer: CheckpointSigner,
    now: datetime,
    history_every_s: float,
) -> Checkpoint | None:
    """The new latest checkpoint. A tree rebuilt in a transaction (``metering rebuild``) grows again up to the
    size it had: a checkpoint is signed again only past it, and one it meets must have the same root."""
    root = frontier.root()
    if latest is not None and latest.size >= frontier.size:
        ensure(
            latest.size > frontier.size or latest.root == root,
            f"the {tree} tree rebuilt to {frontier.size} leaves has another root than its checkpoint "
            f"({latest.describe()})",
        )
        return latest
    kept = repo.checkpoint(tree, frontier.size)
    if kept is not None:
        ensure(kept.root == root, f"the {tree} tree at {frontier.size} leaves has another root than its checkpoint")
    signed_at = format_timestamp(now)
    body = checkpoint_body(tree, frontier.size, root, signed_at)
    checkpoint = Checkpoint(tree, frontier.size, root, signed_at, signer.key_id, signer.sign(body))
    if kept is None and _history_due(repo.newest_checkpoint(tree), now, history_every_s):
        repo.add_checkpoint(checkpoint)
    return checkpoint


def _history_due(newest: Checkpoint | None, now: datetime, every_s: float) -> bool:
    if newest is None or every_s <= 0:
        return True
    return (now - datetime.fromisoformat(newest.signed_at)).total_seconds() >= every_s


def record_appended(repo: MerkleRepository, record: AuditRecord, signer: CheckpointSigner | None) -> TreeHead:
    """The audit tree grown by ``record`` (just inserted, seq = its size + 1) and signed at the record's time."""
    head = repo.head(AUDIT_TREE)
    size = 0 if head is None else head.size
    ensure(record.seq == size + 1, f"audit record seq {record.seq} would be leaf {size}, not {record.seq - 1}")
    return grow(
        repo, AUDIT_TREE, [(str(record.seq), audit_leaf(record))], signer, datetime.fromisoformat(record.occurred_at)
    )


# -- proofs ------------------------------------------------------------------------------------------------------


def _stored_range(lo: int, hi: int) -> tuple[int, range]:
    """Where the head of the perfect subtree ``[lo, hi)`` is computed from: the stored level at or below it, and
    the indexes at that level (at most ``2**(STORED_LEVEL_STRIDE - 1)``)."""
    level = (hi - lo).bit_length() - 1
    base = level - level % STORED_LEVEL_STRIDE
    return base, range(lo >> base, (lo >> base) + (1 << (level - base)))


def stored_path(repo: MerkleRepository, tree: str, index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the stored tree's first ``size`` leaves."""
    return _from_stored(repo, tree, lambda subtree: inclusion_path(index, size, subtree))


def stored_root(repo: MerkleRepository, tree: str, size: int) -> bytes:
    """The head of the stored tree's first ``size`` leaves, from O(log n) stored hashes."""
    return EMPTY_ROOT if size == 0 else _from_stored(repo, tree, lambda subtree: subtree(0, size))


def stored_consistency(repo: MerkleRepository, tree: str, old_size: int, new_size: int) -> list[bytes]:
    """The consistency proof between the stored tree's first ``old_size`` and first ``new_size`` leaves."""
    return _from_stored(repo, tree, lambda subtree: consistency_path(old_size, new_size, subtree))


def _from_stored(repo: MerkleRepository, tree: str, compute: Callable[[SubtreeHash], _T]) -> _T:
    """``compute(subtree)`` with subtree heads made of stored hashes. What it reads is known before any hash is: a
    first pass notes every perfect subtree it needs, their stored hashes are read at once (one query per stored
    level), and a second pass computes the result from them. Conflict: stored hashes are missing."""
    needed: dict[int, set[int]] = {}

    def note(lo: int, hi: int) -> bytes:
        base, indexes = _stored_range(lo, hi)
        needed.setdefault(base, set()).update(indexes)
        return bytes(HASH_BYTES)

    compute(lambda lo, hi: subtree_root(lo, hi, note))
    stored = {base: repo.hashes_at(tree, base, indexes) for base, indexes in needed.items()}

    def perfect(lo: int, hi: int) -> bytes:
        base, indexes = _stored_range(lo, hi)
        try:
            return perfect_root([stored[base][i] for i in indexes])
        except KeyError:
            raise Conflict(
                f"the {tree} tree is missing stored hashes of leaves {lo}-{hi - 1}: run `modelmarket audit verify`"
            ) from None

    return compute(lambda lo, hi: subtree_root(lo, hi, perfect))


def prove(repo: MerkleRepository, tree: str, ref: str, since: Checkpoint | None = None) -> InclusionProof:
    """The inclusion proof of the leaf of ``ref`` (a usage event id, an audit seq) under the tree's latest
    checkpoint; with ``since`` (an older checkpoint of the tree), also the proof that the latest extends it.
    NotFound: no such leaf; NotReady: not covered by a signed checkpoint yet; Conflict: the stored row or tree no
    longer matches what was signed, or the tree is smaller than ``since``."""
    what = _what(tree, ref)
    leaf = repo.leaf(tree, ref)
    if leaf is None:
        raise NotFound(
            f"no {what} in the {tree} tree" + (" (not applied yet, or unknown)" if tree == USAGE_TREE else "")
        )
    head = repo.head(tree)
    checkpoint = None if head is None else head.checkpoint
    if checkpoint is None or leaf.leaf_index >= checkpoint.size:
        raise NotReady(f"{what} is not covered by a signed checkpoint yet: retry in a second")
    data = leaf_data(repo, tree, ref)
    if data is None or leaf_hash(data) != leaf.leaf_hash:
        change = "is gone" if data is None else "was changed"
        raise Conflict(
            f"the stored {what} {change} since it was added to the {tree} tree: run `modelmarket audit verify`"
        )
    path = stored_path(repo, tree, leaf.leaf_index, checkpoint.size)
    if root_from_inclusion(leaf.leaf_index, checkpoint.size, leaf.leaf_hash, path) != checkpoint.root:
        raise Conflict(
            f"the stored {tree} tree no longer leads to its checkpoint's root: run `modelmarket audit verify`"
        )
    consistency = None if since is None else _consistency(repo, since, checkpoint)
    return InclusionProof(tree, leaf.leaf_index, data, leaf.leaf_hash, tuple(path), checkpoint, consistency)


def _consistency(repo: MerkleRepository, since: Checkpoint, latest: Checkpoint) -> Consistency:
    if since.tree != latest.tree:
        raise InvalidInput(f"the older checkpoint is of the {since.tree} tree, the proof of the {latest.tree} tree")
    if since.size > latest.size:
        raise Conflict(
            f"the {latest.tree} tree's latest checkpoint ({latest.describe()}) is smaller than the one given "
            f"({since.describe()}): its tail was cut off, or the checkpoint is not this platform's"
        )
    return Consistency(since, tuple(stored_consistency(repo, latest.tree, since.size, latest.size)))


def leaf_data(repo: MerkleRepository, tree: str, ref: str) -> bytes | None:
    """The leaf ``ref``'s data, made again from its stored row (None: the row is gone)."""
    if tree == USAGE_TREE:
        facts = repo.usage_facts(ref)
        return None if facts is None else usage_leaf(facts)
    stored = repo.audit_record(int(ref))
    return None if stored is None else stored_audit_leaf(stored)


def stored_audit_leaf(stored: StoredAuditRecord) -> bytes:
    """The audit leaf of a stored record; empty (never a leaf's data) when its payload is no longer JSON the chain
    can hash, as after an edit."""
    try:
        return audit_leaf(record_from_stored(stored))
    except (ValueError, TypeError, RecursionError):
        return b""


def _what(tree: str, ref: str) -> str:
    if tree == AUDIT_TREE:
        if not ref.isdigit() or not 0 < len(ref) <= 18 or int(ref) == 0:
            raise InvalidInput(f"audit:SEQ needs a positive record number, got {ref[:40]!r}")
        return f"audit record seq {ref}"
    if not 0 < len(ref) <= 64:
        raise InvalidInput("a usage event id is 1-64 characters")
    return f"usage event {ref}"
