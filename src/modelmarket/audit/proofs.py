"""Inclusion proofs as JSON documents, and their offline check: the document and a public key, nothing else.

A proof says: this leaf (its exact bytes, ``leaf_data``) is leaf ``leaf_index`` of the tree the signed
``checkpoint`` names. It is checked in three steps, each of which any RFC 6962 implementation can redo
(docs/audit-proofs.md):

1. signature: the checkpoint's body is signed by the key (Ed25519), and the key id is that key's;
2. leaf hash: ``SHA-256(0x00 || UTF-8(leaf_data))`` is ``leaf_hash``;
3. path: the audit path leads from ``leaf_hash`` at ``leaf_index`` to the checkpoint's root at its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelmarket.audit.checkpoints import Checkpoint, hex_hash, key_id_of
from modelmarket.audit.leaves import AUDIT_TREE, TREES
from modelmarket.audit.merkle import MAX_PROOF_HASHES, leaf_hash, root_from_inclusion
from modelmarket.core.errors import InvalidInput

PROOF_FORMAT = "modelmarket-inclusion-proof/1"
PROOF_MAX_BYTES = 1024 * 1024
"""Largest proof document read (a proof is a few kilobytes: the leaf and at most 64 hashes)."""
LEAF_DATA_MAX_CHARS = 256 * 1024
"""Longest leaf accepted in a proof (an audit record's payload is the largest leaf)."""


@dataclass(frozen=True, slots=True)
class InclusionProof:
    tree: str
    leaf_index: int
    leaf_data: bytes
    """The exact bytes hashed into the leaf: canonical JSON (RFC 8785), UTF-8."""
    leaf_hash: bytes
    audit_path: tuple[bytes, ...]
    checkpoint: Checkpoint

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROOF_FORMAT,
            "tree": self.tree,
            "leaf_index": self.leaf_index,
            "leaf_data": self.leaf_data.decode("utf-8"),
            "leaf_hash": self.leaf_hash.hex(),
            "audit_path": [h.hex() for h in self.audit_path],
            "checkpoint": self.checkpoint.to_json(),
        }

    def subject(self) -> str:
        """What the leaf is: ``usage event <id>`` or ``audit record seq <n>`` (read from the leaf's data)."""
        try:
            doc = orjson.loads(self.leaf_data)
        except orjson.JSONDecodeError:
            return f"{self.tree} leaf {self.leaf_index}"
        if not isinstance(doc, dict):
            return f"{self.tree} leaf {self.leaf_index}"
        if self.tree == AUDIT_TREE:
            return f"audit record seq {doc.get('seq')} ({doc.get('action')} {doc.get('subject')})"
        return f"usage event {doc.get('event_id')} ({doc.get('model')}@{doc.get('version')}, {doc.get('occurred_at')})"


@dataclass(frozen=True, slots=True)
class ProofCheck:
    ok: bool
    failed: str | None
    """The step that failed: ``signature``, ``leaf hash`` or ``path``; None when the proof holds."""
    message: str


def parse_proof(raw: bytes) -> InclusionProof:
    """Read a proof document; InvalidInput names the field at fault."""
    if len(raw) > PROOF_MAX_BYTES:
        raise InvalidInput(f"the proof is over {PROOF_MAX_BYTES} bytes: not a proof")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the proof is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the proof must be a JSON object")
    if doc.get("format") != PROOF_FORMAT:
        raise InvalidInput(f"proof.format must be {PROOF_FORMAT!r}, got {str(doc.get('format'))[:60]!r}")
    tree = doc.get("tree")
    if tree not in TREES:
        raise InvalidInput(f"proof.tree must be one of {', '.join(TREES)}, got {str(tree)[:40]!r}")
    index = doc.get("leaf_index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise InvalidInput("proof.leaf_index must be an integer, 0 or more")
    data = doc.get("leaf_data")
    if not isinstance(data, str) or len(data) > LEAF_DATA_MAX_CHARS:
        raise InvalidInput(f"proof.leaf_data must be a string of at most {LEAF_DATA_MAX_CHARS} characters")
    path = doc.get("audit_path")
    if not isinstance(path, list) or len(path) > MAX_PROOF_HASHES or not all(isinstance(p, str) for p in path):
        raise InvalidInput(f"proof.audit_path must be a list of at most {MAX_PROOF_HASHES} hex hashes")
    leaf_text = doc.get("leaf_hash")
    leaf = hex_hash(leaf_text if isinstance(leaf_text, str) else "", "proof.leaf_hash")
    try:
        data_bytes = data.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("proof.leaf_data is not valid Unicode text") from None
    return InclusionProof(
        tree=tree,
        leaf_index=index,
        leaf_data=data_bytes,
        leaf_hash=leaf,
        audit_path=tuple(hex_hash(p, f"proof.audit_path[{i}]") for i, p in enumerate(path)),
        checkpoint=Checkpoint.from_json(doc.get("checkpoint"), "proof.checkpoint"),
    )


def check_proof(proof: InclusionProof, public_key: Ed25519PublicKey) -> ProofCheck:
    """Check ``proof`` against ``public_key`` alone: signature, then leaf hash, then path."""
    cp = proof.checkpoint
    key_id = key_id_of(public_key)
    if cp.key_id != key_id:
        return ProofCheck(
            False, "signature", f"signature: the checkpoint names key {cp.key_id}, but the public key is {key_id}"
        )
    if not cp.signed_by(public_key):
        return ProofCheck(False, "signature", f"signature: the checkpoint ({cp.describe()}) is not signed by {key_id}")
    if cp.tree != proof.tree:
        return ProofCheck(False, "path", f"path: the proof is for the {proof.tree} tree, its checkpoint for {cp.tree}")
    if leaf_hash(proof.leaf_data) != proof.leaf_hash:
        return ProofCheck(
            False,
            "leaf hash",
            f"leaf hash: SHA-256(0x00 || leaf_data) is not {proof.leaf_hash.hex()} (the leaf's data was altered)",
        )
    root = root_from_inclusion(proof.leaf_index, cp.size, proof.leaf_hash, proof.audit_path)
    if root != cp.root:
        why = "does not fit a tree of that size" if root is None else "leads to another root than the checkpoint's"
        return ProofCheck(
            False, "path", f"path: the audit path of leaf {proof.leaf_index} in a tree of {cp.size} leaves {why}"
        )
    return ProofCheck(
        True,
        None,
        f"valid: {proof.subject()} is leaf {proof.leaf_index} of the {cp.tree} tree at its checkpoint "
        f"({cp.describe()}, key {key_id})",
    )
