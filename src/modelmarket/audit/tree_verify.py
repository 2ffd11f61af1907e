"""``audit verify`` for the verifiable trees: every leaf made again from its row, every root recomputed.

One streamed pass over a tree's leaves, in index order, each joined with the row it was made of:

- a leaf whose row is gone names the record or event that was dropped; a leaf that no longer matches its row
  names the one that was edited; usage events out of log order, or audit leaves out of seq order, were reordered;
- the leaves' hashes are folded into the tree as they come (``merkle.Frontier``): the stored subtree heads
  proofs are read from, and the root at the size of every kept checkpoint, must come out as stored and signed;
- the latest checkpoint must carry this home's signature, and must not cover more leaves than the store has
  (a tail cut off: "covers records the store no longer has");
- the store's latest checkpoint must reach the copy of the latest one kept outside the store (in the home's keys
  folder), and the tree must have that copy's root at its size: a tail cut off with an older genuine checkpoint
  put back, or the checkpoints removed, is seen that way; leaves with no checkpoint at all are named when the
  home has a key;
- rows the tree has no leaf for (added to the table behind the platform's back) are named too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelmarket.audit.checkpoints import Checkpoint, key_id_of
from modelmarket.audit.leaves import AUDIT_TREE, usage_leaf
from modelmarket.audit.merkle import Frontier, leaf_hash
from modelmarket.audit.ports import MerkleRepository, StoredLeaf
from modelmarket.audit.trees import STORED_LEVEL_STRIDE, stored_audit_leaf
from modelmarket.core.errors import ensure
from modelmarket.metering.partitions import partition_of

VERIFY_BATCH_ROWS = 5000
"""Leaves (with their rows) read per round trip; the trees are streamed, never loaded whole."""
MAX_PROBLEMS = 20
"""Most problems listed per tree (the count of the others is given)."""
OUTSIDE_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class TreeReport:
    tree: str
    leaves: int
    checkpoint: Checkpoint | None
    """The latest signed checkpoint (None before the first)."""
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.checkpoint is None:
            signed = "no signed checkpoint yet"
        else:
            signed = f"latest checkpoint {self.checkpoint.describe()}, key {self.checkpoint.key_id}"
        return f"{self.tree} tree: {self.leaves} leaves, {signed}"

    def to_json(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "tree": self.tree,
            "ok": self.ok,
            "leaves": self.leaves,
            "checkpoint": None if cp is None else {k: v for k, v in cp.to_json().items() if k != "body"},
            "problems": list(self.problems),
        }


@dataclass
class _Problems:
    found: list[str] = field(default_factory=list)
    more: int = 0

    def add(self, text: str) -> None:
        if len(self.found) < MAX_PROBLEMS:
            self.found.append(text)
        else:
            self.more += 1

    def all(self) -> tuple[str, ...]:
        return (*self.found, *([f"... and {self.more} more"] if self.more else []))


class _Paged:
    """Reads (key, value) pairs page by page in key order, for comparing against a stream in the same order."""

    def __init__(self, fetch: Callable[[int], list[tuple[int, Any]]]) -> None:
        self._fetch = fetch
        self._page: list[tuple[int, Any]] = []
        self._after = -1
        self._done = False

    def upto(self, key: int) -> list[tuple[int, Any]]:
        """Every pair with a key up to ``key`` not returned before."""
        out: list[tuple[int, Any]] = []
        while True:
            if not self._page and not self._done:
                self._page = self._fetch(self._after)
                self._done = not self._page
                self._page.reverse()
            if not self._page or self._page[-1][0] > key:
                return out
            pair = self._page.pop()
            self._after = pair[0]
            out.append(pair)


def _node_pages(
    repo: MerkleRepository, tree: str, level: int, batch_rows: int
) -> Callable[[int], list[tuple[int, Any]]]:
    def fetch(after: int) -> list[tuple[int, Any]]:
        return list(repo.nodes(tree, level, after, batch_rows))

    return fetch


class _Walk:
    def __init__(
        self,
        repo: MerkleRepository,
        tree: str,
        latest: Checkpoint | None,
        kept: Checkpoint | None,
        batch_rows: int,
        partitions: int = 1,
    ) -> None:
        self.tree = tree
        self.partitions = partitions
        self.noun = "audit record" if tree == AUDIT_TREE else "usage event"
        self.frontier = Frontier()
        self.intact = True
        self.seen = self.present = 0
        self.last_offset: dict[int, int] = {}
        """The last log offset seen per log partition: offsets increase within one, not across them."""
        self.problems = _Problems()

        def checkpoints(after: int) -> list[tuple[int, Any]]:
            return [(cp.size, cp) for cp in repo.checkpoints(tree, after, batch_rows)]

        self.checkpoints = _Paged(checkpoints)
        self.latest = latest
        self.kept = kept
        self.nodes = {
            level: _Paged(_node_pages(repo, tree, level, batch_rows))
            for level in range(STORED_LEVEL_STRIDE, 64, STORED_LEVEL_STRIDE)
        }

    def leaf(self, leaf: StoredLeaf, data: bytes | None, what: str, position: tuple[int, int] | None) -> None:
        self.seen += 1
        if self.intact and leaf.leaf_index != self.frontier.size:
            self.problems.add(
                f"leaf {self.frontier.size} of the {self.tree} tree is missing (the next one stored is leaf "
                f"{leaf.leaf_index}): a {self.noun} was dropped from the tree"
            )
            self.intact = False
        if data is None:
            self.problems.add(f"{what} (leaf {leaf.leaf_index}) is no longer in the store: it was dropped")
        else:
            self.present += 1
            if leaf_hash(data) != leaf.leaf_hash:
                self.problems.add(f"{what} (leaf {leaf.leaf_index}) does not match its leaf: it was edited")
        self._order(leaf, what, position)
        if self.intact:
            for level, index, head in self.frontier.append(leaf.leaf_hash, STORED_LEVEL_STRIDE):
                self._node(level, index, head)
            self._roots()

    def _order(self, leaf: StoredLeaf, what: str, position: tuple[int, int] | None) -> None:
        if self.tree == AUDIT_TREE:
            if leaf.ref != str(leaf.leaf_index + 1):
                self.problems.add(
                    f"leaf {leaf.leaf_index} of the audit tree names seq {leaf.ref}: records were reordered"
                )
            return
        if position is None:
            return
        partition, log_offset = position
        last = self.last_offset.get(partition)
        if last is not None and log_offset <= last:
            where = f" of partition {partition}" if self.partitions > 1 else ""
            self.problems.add(
                f"{what} (leaf {leaf.leaf_index}, log offset {log_offset}) comes after log offset {last}{where}: "
                "usage events were reordered"
            )
        self.last_offset[partition] = log_offset

    def _node(self, level: int, index: int, head: bytes) -> None:
        stored = dict(self.nodes[level].upto(index)).get(index)
        if stored != head:
            first, last = index << level, ((index + 1) << level) - 1
            state = "is missing" if stored is None else "differs from its leaves"
            self.problems.add(f"the stored head of leaves {first}-{last} of the {self.tree} tree {state}")

    def _roots(self) -> None:
        size = self.frontier.size
        due = [("its checkpoint", cp) for _, cp in self.checkpoints.upto(size) if cp.size == size]
        if self.latest is not None and self.latest.size == size:
            due.append(("its checkpoint", self.latest))
        if self.kept is not None and self.kept.size == size:
            due.append(("the checkpoint kept outside the store", self.kept))
        if due:
            root = self.frontier.root()
            for which, cp in due:
                if cp.root != root:
                    self.problems.add(
                        f"the {self.tree} tree's root at {size} leaves is not the one {which} ({cp.describe()}) "
                        f"signed: {self.noun}s up to leaf {size - 1} were edited, dropped or reordered"
                    )
                    return


def verify_tree(
    repo: MerkleRepository,
    tree: str,
    public_key: Ed25519PublicKey | None,
    batch_rows: int = VERIFY_BATCH_ROWS,
    kept: Checkpoint | None = None,
    partitions: int = 1,
) -> TreeReport:
    """Check ``tree`` against its rows and checkpoints; the latest checkpoint's signature against ``public_key``
    (None: the home has no key, so no checkpoint can be trusted); and the store's latest checkpoint against
    ``kept``, the copy of the latest one the home keeps outside the store (None: none kept)."""
    ensure(batch_rows > 0, "batch_rows must be positive")
    head = repo.head(tree)
    candidates = [cp for cp in (None if head is None else head.checkpoint, repo.newest_checkpoint(tree)) if cp]
    latest = max(candidates, key=lambda cp: cp.size, default=None)
    walk = _Walk(repo, tree, latest, kept, batch_rows, partitions)
    _stream(repo, walk, batch_rows)
    _after_walk(repo, walk, head, latest, public_key)
    _against_kept(walk, latest, kept, public_key)
    return TreeReport(tree, walk.seen, latest, walk.problems.all())


def _against_kept(
    walk: _Walk, latest: Checkpoint | None, kept: Checkpoint | None, public_key: Ed25519PublicKey | None
) -> None:
    """The store's latest checkpoint against the copy kept outside it (whose root at its size ``_roots``
    checked), and leaves that no checkpoint covers in a home that signs."""
    tree, problems = walk.tree, walk.problems
    if latest is None and walk.seen and public_key is not None:
        problems.add(
            f"the {tree} tree has {walk.seen} leaves but no signed checkpoint, and this home has a key: "
            "its checkpoints were removed from the store"
        )
    if kept is None:
        return
    if latest is None or latest.size < kept.size:
        store_has = "none" if latest is None else f"{latest.describe()}"
        problems.add(
            f"the store's latest {tree} checkpoint ({store_has}) is older than the one this home signed last and "
            f"keeps outside the store ({kept.describe()}): {walk.noun}s were cut off the tail, or the store was "
            "put back to an older copy"
        )
    elif latest.size == kept.size and latest.root != kept.root:
        problems.add(
            f"the store's latest {tree} checkpoint ({latest.describe()}) has another root than the one kept outside "
            "the store at the same size: the log was rewritten"
        )
    if public_key is not None and not kept.signed_by(public_key):
        problems.add(
            f"the {tree} checkpoint kept outside the store ({kept.describe()}) is not signed by this home's key "
            f"{key_id_of(public_key)} (it names key {kept.key_id})"
        )


def _stream(repo: MerkleRepository, walk: _Walk, batch_rows: int) -> None:
    after = -1
    while True:
        rows: list[tuple[StoredLeaf, bytes | None, tuple[int, int] | None]]
        if walk.tree == AUDIT_TREE:
            rows = [
                (leaf, None if record is None else stored_audit_leaf(record), None)
                for leaf, record in repo.audit_leaves(after, batch_rows)
            ]
        else:
            rows = [
                (leaf, None, None)
                if facts is None
                else (leaf, usage_leaf(facts), (partition_of(facts.account_id, walk.partitions), facts.log_offset))
                for leaf, facts in repo.usage_leaves(after, batch_rows)
            ]
        if not rows:
            return
        for leaf, data, position in rows:
            what = f"audit record seq {leaf.leaf_index + 1}" if walk.tree == AUDIT_TREE else f"usage event {leaf.ref}"
            walk.leaf(leaf, data, what, position)
        after = rows[-1][0].leaf_index


def _after_walk(
    repo: MerkleRepository,
    walk: _Walk,
    head: Any,
    latest: Checkpoint | None,
    public_key: Ed25519PublicKey | None,
) -> None:
    tree, problems = walk.tree, walk.problems
    stored_size = 0 if head is None else head.size
    if walk.intact and stored_size != walk.frontier.size:
        problems.add(f"the {tree} tree's head says {stored_size} leaves, but {walk.frontier.size} are stored")
    elif walk.intact and head is not None and head.frontier != walk.frontier.encode():
        problems.add(f"the {tree} tree's head (its right edge) does not match its leaves")
    if latest is not None:
        if latest.size > walk.seen:
            problems.add(
                f"the latest checkpoint ({latest.describe()}) covers {walk.noun}s the store no longer has: "
                f"{latest.size - walk.seen} of {latest.size}"
            )
        if public_key is None:
            problems.add(f"the latest checkpoint ({latest.describe()}) cannot be checked: this home has no key")
        elif not latest.signed_by(public_key):
            problems.add(
                f"the latest checkpoint ({latest.describe()}) is not signed by this home's key {key_id_of(public_key)} "
                f"(it names key {latest.key_id})"
            )
    rows = repo.source_rows(tree)
    if rows > walk.present:
        examples = repo.outside_tree(tree, OUTSIDE_EXAMPLES)
        if examples:
            problems.add(
                f"{rows - walk.present} {walk.noun}(s) in the store are not in the {tree} tree "
                f"(e.g. {', '.join(examples)}): added behind the platform's back"
            )
