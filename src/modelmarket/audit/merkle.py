"""Merkle trees as RFC 6962 / RFC 9162 define them: hashes, tree heads, inclusion and consistency proofs. Pure.

For an ordered list of leaves D[0:n] (byte strings):

- the hash of a leaf is ``SHA-256(0x00 || d)`` and of an inner node ``SHA-256(0x01 || left || right)``;
- the tree head of no leaves is ``SHA-256()`` (of the empty string), of one leaf its leaf hash, and of n > 1
  leaves ``node(MTH(D[0:k]), MTH(D[k:n]))`` with k the largest power of two smaller than n.

So any RFC 6962 implementation computes the same roots and checks the same proofs. Storage-backed trees give the
proof builders a ``SubtreeHash``: the head of any range ``[lo, hi)``; the ranges asked for are either perfect
subtrees (a power of two leaves, aligned) or split into perfect ones by ``subtree_root``.

``Frontier`` is the right edge of a growing tree (the heads of its perfect subtrees, one per set bit of its size):
appending a leaf and computing the current head are both O(log n), with nothing else in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from modelmarket.core.errors import ensure

HASH_BYTES = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The head of a tree with no leaves (RFC 9162 section 2.1.1)."""
MAX_TREE_SIZE = 2**62
"""Largest tree handled (a proof then has at most 62 hashes)."""
MAX_PROOF_HASHES = 64
"""Most hashes an inclusion or consistency proof may hold (62 suffice for ``MAX_TREE_SIZE`` leaves)."""

SubtreeHash = Callable[[int, int], bytes]
"""The head of the leaves ``[lo, hi)`` of one tree (``hi > lo``)."""

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``): where RFC 6962 splits a tree of n leaves."""
    ensure(n >= 2, f"a tree of {n} leaves is not split")
    return 1 << ((n - 1).bit_length() - 1)


def is_perfect(lo: int, hi: int) -> bool:
    """True when ``[lo, hi)`` is one perfect subtree: a power of two leaves starting at a multiple of it."""
    n = hi - lo
    return n > 0 and n & (n - 1) == 0 and lo % n == 0


def perfect_root(hashes: Sequence[bytes]) -> bytes:
    """The head of a perfect subtree from its 2^k bottom hashes (leaf hashes, or the heads of equal subtrees)."""
    n = len(hashes)
    ensure(n > 0 and n & (n - 1) == 0, f"{n} hashes are not a perfect subtree")
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The tree head of the leaves whose hashes are ``leaf_hashes`` (in memory; for stored trees see Frontier)."""
    frontier = Frontier()
    for h in leaf_hashes:
        frontier.append(h)
    return frontier.root()


def subtree_root(lo: int, hi: int, perfect: SubtreeHash) -> bytes:
    """The head of ``[lo, hi)`` from ``perfect``, which is only asked for perfect subtrees."""
    ensure(hi > lo >= 0, f"no subtree [{lo}, {hi})")
    if is_perfect(lo, hi):
        return perfect(lo, hi)
    k = split_point(hi - lo)
    ensure(lo % k == 0, f"[{lo}, {hi}) is not a subtree of an RFC 6962 tree")
    return node_hash(perfect(lo, lo + k), subtree_root(lo + k, hi, perfect))


# -- inclusion ---------------------------------------------------------------------------------------------------


def inclusion_path(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` leaves (RFC 9162 2.1.3.1), from the
    leaf's sibling up to the root's child. ``subtree(lo, hi)`` gives the head of any range of that tree."""
    ensure(0 <= index < size <= MAX_TREE_SIZE, f"leaf {index} is not in a tree of {size} leaves")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo = lo + k
    path.reverse()
    return path


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes | None:
    """The root the audit path leads to from ``leaf`` (RFC 9162 2.1.3.2), or None when the path cannot belong to
    leaf ``index`` of a tree of ``size`` leaves (wrong length or shape)."""
    if not 0 <= index < size or len(path) > MAX_PROOF_HASHES:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if len(p) != HASH_BYTES or sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    """True when ``path`` proves that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves with ``root``."""
    return root_from_inclusion(index, size, leaf, path) == root


# -- consistency -------------------------------------------------------------------------------------------------


def consistency_path(old_size: int, new_size: int, subtree: SubtreeHash) -> list[bytes]:
    """The proof that the tree of ``old_size`` leaves is a prefix of the one of ``new_size`` (RFC 9162 2.1.4.1).
    Empty when the sizes are equal or the old tree is empty."""
    ensure(0 <= old_size <= new_size <= MAX_TREE_SIZE, f"no consistency proof from {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    return _subproof(old_size, 0, new_size, True, subtree)


def _subproof(m: int, lo: int, hi: int, whole: bool, subtree: SubtreeHash) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if whole else [subtree(lo, hi)]
    k = split_point(n)
    if m <= k:
        return [*_subproof(m, lo, lo + k, whole, subtree), subtree(lo + k, hi)]
    return [*_subproof(m - k, lo + k, hi, False, subtree), subtree(lo, lo + k)]


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]) -> bool:
    """True when ``path`` proves the tree (``old_size``, ``old_root``) is a prefix of (``new_size``,
    ``new_root``) (RFC 9162 2.1.4.2)."""
    if not 0 <= old_size <= new_size or len(path) > MAX_PROOF_HASHES or any(len(p) != HASH_BYTES for p in path):
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size == 0:
        return not path
    if not path:
        return False
    proof = list(path)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node of the proof
        proof.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


# -- the frontier ------------------------------------------------------------------------------------------------


@dataclass
class Frontier:
    """The heads of the perfect subtrees along the right edge of a tree of ``size`` leaves, largest first: one
    per set bit of ``size``. Enough to append and to compute the tree head, in O(log n) each."""

    size: int = 0
    heads: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        ensure(0 <= self.size <= MAX_TREE_SIZE, f"tree size {self.size} out of range")
        ensure(
            len(self.heads) == self.size.bit_count(),
            f"a frontier of {self.size} leaves has {self.size.bit_count()} heads, not {len(self.heads)}",
        )

    def append(self, leaf: bytes, stride: int = 0) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash. Returns the perfect subtrees it completed whose level (height above the leaves) is a
        positive multiple of ``stride`` (none when ``stride`` is 0), as (level, index at that level, head)."""
        completed: list[tuple[int, int, bytes]] = []
        h, level, size = leaf, 0, self.size
        while size & 1:
            h = node_hash(self.heads.pop(), h)
            level += 1
            size >>= 1
            if stride and level % stride == 0:
                completed.append((level, ((self.size + 1) >> level) - 1, h))
        self.heads.append(h)
        self.size += 1
        return completed

    def extend(self, leaves: Iterable[bytes], stride: int = 0) -> list[tuple[int, int, bytes]]:
        completed: list[tuple[int, int, bytes]] = []
        for leaf in leaves:
            completed += self.append(leaf, stride)
        return completed

    def root(self) -> bytes:
        if not self.heads:
            return EMPTY_ROOT
        r = self.heads[-1]
        for h in reversed(self.heads[:-1]):
            r = node_hash(h, r)
        return r

    def encode(self) -> bytes:
        return b"".join(self.heads)

    @classmethod
    def decode(cls, size: int, data: bytes) -> Frontier:
        ensure(len(data) % HASH_BYTES == 0, f"a stored frontier of {len(data)} bytes is not whole hashes")
        return cls(size, [data[i : i + HASH_BYTES] for i in range(0, len(data), HASH_BYTES)])

    def copy(self) -> Frontier:
        return Frontier(self.size, list(self.heads))
