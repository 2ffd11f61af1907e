"""Inclusion proofs as JSON documents, and their offline check: the document and a public key, nothing else.

A proof says: this leaf (its exact bytes, ``leaf_data``) is leaf ``leaf_index`` of the tree the signed
``checkpoint`` names. It is checked in three steps, each of which any RFC 6962 implementation can redo
(docs/audit-proofs.md):

1. signature: the checkpoint's body is signed by the key (Ed25519), and the key id is that key's;
2. leaf hash: ``SHA-256(0x00 || UTF-8(leaf_data))`` is ``leaf_hash``;
3. path: the audit path leads from ``leaf_hash`` at ``leaf_index`` to the checkpoint's root at its size.

A proof asked for ``--since`` an older checkpoint also carries ``consistency``: that older checkpoint and the
RFC 9162 consistency proof that the tree it signed is a prefix of the tree the proof's checkpoint signed. Checked
against the older checkpoint its holder kept, it shows the log was only appended to in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelmarket.audit.checkpoints import Checkpoint, hex_hash, key_id_of
from modelmarket.audit.leaves import AUDIT_TREE, TREES
from modelmarket.audit.merkle import MAX_PROOF_HASHES, leaf_hash, root_from_inclusion, verify_consistency
from modelmarket.core.errors import InvalidInput

PROOF_FORMAT = "modelmarket-inclusion-proof/1"
PROOF_MAX_BYTES = 1024 * 1024
"""Largest proof document read (a proof is a few kilobytes: the leaf and at most 64 hashes)."""
LEAF_DATA_MAX_CHARS = 256 * 1024
"""Longest leaf accepted in a proof (an audit record's payload is the largest leaf)."""


@dataclass(frozen=True, slots=True)
class Consistency:
    """The proof that the tree ``old`` signed is a prefix of the tree of the proof's checkpoint."""

    old: Checkpoint
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"old_checkpoint": self.old.to_json(), "path": [h.hex() for h in self.path]}


@dataclass(frozen=True, slots=True)
class InclusionProof:
    tree: str
    leaf_index: int
    leaf_data: bytes
    """The exact bytes hashed into the leaf: canonical JSON (RFC 8785), UTF-8."""
    leaf_hash: bytes
    audit_path: tuple[bytes, ...]
    checkpoint: Checkpoint
    consistency: Consistency | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {
            "format": PROOF_FORMAT,
            "tree": self.tree,
            "leaf_index": self.leaf_index,
            "leaf_data": self.leaf_data.decode("utf-8"),
            "leaf_hash": self.leaf_hash.hex(),
            "audit_path": [h.hex() for h in self.audit_path],
            "checkpoint": self.checkpoint.to_json(),
        }
        if self.consistency is not None:
            doc["consistency"] = self.consistency.to_json()
        return doc

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
    """The step that failed: ``signature``, ``leaf hash``, ``path`` or ``consistency``; None when it holds."""
    message: str


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > PROOF_MAX_BYTES:
        raise InvalidInput(f"{what} is over {PROOF_MAX_BYTES} bytes: not a proof")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return doc


def parse_checkpoint(raw: bytes) -> Checkpoint:
    """A checkpoint someone kept: a proof document (its checkpoint) or a checkpoint object (what a proof's
    ``checkpoint`` holds). InvalidInput names the field at fault."""
    doc = _json_object(raw, "the checkpoint")
    if doc.get("format") == PROOF_FORMAT:
        return parse_proof(raw).checkpoint
    return Checkpoint.from_json(doc, "checkpoint")


def _hashes(value: Any, where: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOF_HASHES or not all(isinstance(p, str) for p in value):
        raise InvalidInput(f"{where} must be a list of at most {MAX_PROOF_HASHES} hex hashes")
    return tuple(hex_hash(p, f"{where}[{i}]") for i, p in enumerate(value))


def _consistency(value: Any) -> Consistency | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput("proof.consistency must be an object")
    old = Checkpoint.from_json(value.get("old_checkpoint"), "proof.consistency.old_checkpoint")
    return Consistency(old, _hashes(value.get("path"), "proof.consistency.path"))


def parse_proof(raw: bytes) -> InclusionProof:
    """Read a proof document; InvalidInput names the field at fault."""
    doc = _json_object(raw, "the proof")
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
    path = _hashes(doc.get("audit_path"), "proof.audit_path")
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
        audit_path=path,
        checkpoint=Checkpoint.from_json(doc.get("checkpoint"), "proof.checkpoint"),
        consistency=_consistency(doc.get("consistency")),
    )


def check_proof(proof: InclusionProof, public_key: Ed25519PublicKey, since: Checkpoint | None = None) -> ProofCheck:
    """Check ``proof`` against ``public_key`` alone: signature, then leaf hash, then path; then, with ``since`` (a
    checkpoint kept from before) or when the proof carries one, that its checkpoint extends the older one."""
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
    extends = ""
    old = since if since is not None or proof.consistency is None else proof.consistency.old
    if old is not None:
        failed = _check_consistency(proof, public_key, old)
        if failed is not None:
            return ProofCheck(False, "consistency", f"consistency: {failed}")
        extends = f"; it extends the checkpoint {old.describe()}"
    return ProofCheck(
        True,
        None,
        f"valid: {proof.subject()} is leaf {proof.leaf_index} of the {cp.tree} tree at its checkpoint "
        f"({cp.describe()}, key {key_id}){extends}",
    )


def _check_consistency(proof: InclusionProof, public_key: Ed25519PublicKey, old: Checkpoint) -> str | None:
    """What is wrong with the claim that the proof's checkpoint extends ``old`` (a checkpoint kept from before,
    or the older one the proof carries), or None."""
    cp, carried = proof.checkpoint, proof.consistency
    if not old.signed_by(public_key):
        return f"the older checkpoint ({old.describe()}) is not signed by {key_id_of(public_key)}"
    if old.tree != cp.tree:
        return f"the older checkpoint is of the {old.tree} tree, the proof's of the {cp.tree} tree"
    if old.size > cp.size:
        return f"the tree shrank from {old.size} to {cp.size} leaves since the older checkpoint: the log was cut"
    if old.size == cp.size:
        return None if old.root == cp.root else f"two roots for the same {cp.size} leaves: the log was rewritten"
    if carried is None or (carried.old.size, carried.old.root) != (old.size, old.root):
        return (
            f"the proof carries no consistency proof from the checkpoint of size {old.size} (ask for one with "
            "`modelmarket audit prove REF --since FILE`)"
        )
    if not verify_consistency(old.size, cp.size, old.root, cp.root, carried.path):
        return (
            f"the tree at the proof's checkpoint ({cp.describe()}) does not extend the one at the older "
            f"checkpoint ({old.describe()}): the log was rewritten"
        )
    return None
