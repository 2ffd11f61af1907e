"""RFC 6962 / RFC 9162 Merkle trees (``audit/merkle.py``): against a naive recursive reading of the RFC written
here, and against the published test vectors of the Certificate Transparency reference implementation."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from modelmarket.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_path,
    inclusion_path,
    leaf_hash,
    node_hash,
    perfect_root,
    root_from_inclusion,
    root_of,
    split_point,
    subtree_root,
    verify_consistency,
    verify_inclusion,
)
from modelmarket.core.errors import InvariantViolated

# The eight leaves of the Certificate Transparency test vectors, and the tree heads of their first n.
VECTOR_LEAVES = [
    bytes.fromhex(x)
    for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
VECTOR_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


# -- the RFC, read naively --------------------------------------------------------------------------------------


def naive_mth(data: Sequence[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 section 2.1 writes it, recursively, on the leaves' data."""
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(data[:k]) + naive_mth(data[k:])).digest()


def naive_path(m: int, data: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 section 2.1.1."""
    n = len(data)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, data[:k]), naive_mth(data[k:])]
    return [*naive_path(m - k, data[k:]), naive_mth(data[:k])]


def naive_subproof(m: int, data: Sequence[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 6962 section 2.1.2."""
    n = len(data)
    if m == n:
        return [] if whole else [naive_mth(data)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, data[:k], whole), naive_mth(data[k:])]
    return [*naive_subproof(m - k, data[k:], False), naive_mth(data[:k])]


def leaves(n: int) -> list[bytes]:
    return [f"leaf {i}".encode() for i in range(n)]


def in_memory(data: Sequence[bytes]):  # type: ignore[no-untyped-def]
    hashes = [leaf_hash(d) for d in data]

    def subtree(lo: int, hi: int) -> bytes:
        return root_of(hashes[lo:hi])

    return hashes, subtree


# -- tests --------------------------------------------------------------------------------------------------------


def test_hashes_are_domain_separated_sha256() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"l" * 32, b"r" * 32) == hashlib.sha256(b"\x01" + b"l" * 32 + b"r" * 32).digest()
    assert EMPTY_ROOT.hex() == VECTOR_ROOTS[0]


@pytest.mark.parametrize("n", range(len(VECTOR_ROOTS)))
def test_the_published_tree_heads(n: int) -> None:
    assert root_of([leaf_hash(d) for d in VECTOR_LEAVES[:n]]).hex() == VECTOR_ROOTS[n]
    assert naive_mth(VECTOR_LEAVES[:n]).hex() == VECTOR_ROOTS[n]  # the naive reading agrees, so it is a fair judge


def test_the_published_proofs() -> None:
    _, subtree = in_memory(VECTOR_LEAVES)
    assert [h.hex()[:8] for h in inclusion_path(0, 8, subtree)] == ["96a296d2", "5f083f0a", "6b47aaf2"]
    assert [h.hex()[:8] for h in consistency_path(6, 8, subtree)] == ["0ebc5d34", "ca854ea1", "d37ee418"]
    assert [h.hex()[:8] for h in consistency_path(2, 5, subtree)] == ["5f083f0a", "bc1a0643"]
    assert [h.hex() for h in consistency_path(1, 8, subtree)] == [h.hex() for h in inclusion_path(0, 8, subtree)]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 9, 1000, 1024, 1025, 2**40 + 3])
def test_split_point_is_the_largest_power_of_two_below(n: int) -> None:
    k = split_point(n)
    assert k < n <= 2 * k and k & (k - 1) == 0


def test_roots_match_the_rfc_for_every_size_up_to_70() -> None:
    data = leaves(70)
    frontier = Frontier()
    for n in range(1, 71):
        frontier.append(leaf_hash(data[n - 1]))
        assert frontier.root() == naive_mth(data[:n]) == root_of([leaf_hash(d) for d in data[:n]]), n


def test_inclusion_paths_match_the_rfc_and_verify() -> None:
    data = leaves(33)
    for n in range(1, 34):
        hashes, subtree = in_memory(data[:n])
        root = naive_mth(data[:n])
        for m in range(n):
            path = inclusion_path(m, n, subtree)
            assert path == naive_path(m, data[:n]), (m, n)
            assert verify_inclusion(m, n, hashes[m], path, root)


def test_an_inclusion_proof_fails_for_another_leaf_index_size_or_path() -> None:
    data = leaves(13)
    hashes, subtree = in_memory(data)
    root = naive_mth(data)
    path = inclusion_path(6, 13, subtree)
    assert verify_inclusion(6, 13, hashes[6], path, root)
    assert not verify_inclusion(6, 13, hashes[5], path, root)  # another leaf
    assert not verify_inclusion(7, 13, hashes[6], path, root)  # another position
    assert not verify_inclusion(6, 20, hashes[6], path, root)  # a size whose tree has another shape
    assert not verify_inclusion(6, 13, hashes[6], path[:-1], root)  # a hash short
    assert not verify_inclusion(6, 13, hashes[6], [*path, path[-1]], root)  # a hash too many
    flipped = [bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:]]
    assert not verify_inclusion(6, 13, hashes[6], flipped, root)
    assert not verify_inclusion(13, 13, hashes[6], path, root)  # past the end
    assert root_from_inclusion(6, 13, hashes[6], [b"short", *path[1:]]) is None


def test_consistency_proofs_match_the_rfc_and_verify() -> None:
    data = leaves(26)
    for n in range(1, 27):
        _, subtree = in_memory(data[:n])
        new_root = naive_mth(data[:n])
        for m in range(1, n + 1):
            path = consistency_path(m, n, subtree)
            assert path == naive_subproof(m, data[:n], True), (m, n)
            assert verify_consistency(m, n, naive_mth(data[:m]), new_root, path), (m, n)


def test_a_consistency_proof_fails_for_a_rewritten_history() -> None:
    data = leaves(11)
    _, subtree = in_memory(data)
    path = consistency_path(6, 11, subtree)
    old, new = naive_mth(data[:6]), naive_mth(data)
    assert verify_consistency(6, 11, old, new, path)
    rewritten = [*data[:3], b"rewritten", *data[4:6]]
    assert not verify_consistency(6, 11, naive_mth(rewritten), new, path)
    assert not verify_consistency(6, 11, old, naive_mth(data[:10]), path)
    assert not verify_consistency(5, 11, old, new, path)
    assert not verify_consistency(6, 11, old, new, [])
    assert verify_consistency(11, 11, new, new, []) and not verify_consistency(11, 11, old, new, [])


def test_the_frontier_names_each_completed_subtree_at_the_stored_levels() -> None:
    data = leaves(300)
    hashes = [leaf_hash(d) for d in data]
    frontier = Frontier()
    completed = frontier.extend(hashes, stride=4)
    expected = [
        (level, index, root_of(hashes[index << level : (index + 1) << level]))
        for level in (4, 8)
        for index in range(300 >> level)
    ]
    assert sorted(completed) == sorted(expected)
    assert len(completed) == 300 // 16 + 300 // 256


def test_the_frontier_survives_encoding_and_rejects_a_wrong_shape() -> None:
    hashes = [leaf_hash(d) for d in leaves(45)]
    frontier = Frontier()
    frontier.extend(hashes[:37])
    copy = Frontier.decode(37, frontier.encode())
    assert len(copy.heads) == 3  # 37 = 32 + 4 + 1
    for h in hashes[37:]:
        frontier.append(h)
        copy.append(h)
    assert copy.root() == frontier.root() == root_of(hashes)
    with pytest.raises(InvariantViolated, match="has 3 heads, not 2"):
        Frontier.decode(37, frontier.encode()[:64])
    with pytest.raises(InvariantViolated, match="not whole hashes"):
        Frontier.decode(37, b"x" * 33)


def test_subtree_heads_come_from_perfect_subtrees_only() -> None:
    hashes = [leaf_hash(d) for d in leaves(100)]
    asked: list[tuple[int, int]] = []

    def perfect(lo: int, hi: int) -> bytes:
        asked.append((lo, hi))
        return perfect_root(hashes[lo:hi])

    for lo, hi in [(0, 100), (64, 100), (96, 100), (37, 38), (32, 48), (80, 99)]:
        assert subtree_root(lo, hi, perfect) == root_of(hashes[lo:hi])
    assert asked and all((hi - lo) & (hi - lo - 1) == 0 and lo % (hi - lo) == 0 for lo, hi in asked)
    with pytest.raises(InvariantViolated, match="not a subtree"):
        subtree_root(3, 77, perfect)
    with pytest.raises(InvariantViolated, match="not a perfect subtree"):
        perfect_root(hashes[:3])
