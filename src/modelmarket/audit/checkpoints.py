"""Signed checkpoints of the verifiable trees, and the Ed25519 key that signs them.

A checkpoint says "the tree ``<tree>`` had ``<size>`` leaves and this root at ``<signed_at>``". What is signed is
its body, four lines of UTF-8 text each ended by a newline::

    modelmarket/<tree>
    <size, decimal>
    <root, standard base64 of the 32 bytes>
    <signed_at, ISO 8601 UTC with microseconds>

The signature is Ed25519 (RFC 8032) over those bytes. The key id is the first 16 hex digits of the SHA-256 of the
raw 32-byte public key. The public key is shared as a PEM ``SubjectPublicKeyInfo`` (``modelmarket audit
public-key``); OpenSSL and every Ed25519 library read it.

The private key lives in ``MODELMARKET_HOME/keys/`` (folder 0700, file 0600), created on first use; a second
process creating it at the same moment gets the same key (the file is linked into place atomically). Beside it,
``latest-checkpoint.<tree>.json`` keeps a copy of each tree's latest checkpoint outside the store (written as the
transaction that signed it commits): ``audit verify`` requires the store's latest checkpoint to reach it, so a
tail cut off the store, with an older genuine checkpoint put back, is still seen.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from modelmarket.audit.leaves import TREES
from modelmarket.audit.merkle import HASH_BYTES, MAX_TREE_SIZE
from modelmarket.audit.private_files import private_dir, read_private, write_private
from modelmarket.core.errors import InvalidInput, NotFound

KEY_FILE_NAME = "audit-checkpoints.ed25519.pem"
KEY_FILE_MAX_BYTES = 4096
"""Largest key file read (an Ed25519 PEM is about 120 bytes)."""
KEPT_FILE_FORMAT = "modelmarket-checkpoint/1"
KEPT_FILE_MAX_BYTES = 8192
"""Largest kept checkpoint read (one is about 500 bytes)."""
PUBLIC_KEY_MAX_BYTES = 4096
SIGNATURE_BYTES = 64
KEY_ID_HEX = 16
SIGNED_AT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii")


def load_public_key(pem: bytes, where: str = "the public key") -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM ``SubjectPublicKeyInfo`` (what ``audit public-key`` prints)."""
    if len(pem) > PUBLIC_KEY_MAX_BYTES:
        raise InvalidInput(f"{where} is over {PUBLIC_KEY_MAX_BYTES} bytes: not a PEM public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise InvalidInput(f"{where} is not a PEM public key (print one with `modelmarket audit public-key`)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{where} is not an Ed25519 key")
    return key


def checkpoint_body(tree: str, size: int, root: bytes, signed_at: str) -> bytes:
    """The exact bytes a checkpoint's signature covers."""
    return f"modelmarket/{tree}\n{size}\n{base64.b64encode(root).decode('ascii')}\n{signed_at}\n".encode()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tree: str
    size: int
    root: bytes
    signed_at: str
    key_id: str
    signature: bytes

    def body(self) -> bytes:
        return checkpoint_body(self.tree, self.size, self.root, self.signed_at)

    def signed_by(self, public_key: Ed25519PublicKey) -> bool:
        """True when ``public_key`` (whose id this checkpoint names) signed exactly this body."""
        if key_id_of(public_key) != self.key_id:
            return False
        try:
            public_key.verify(self.signature, self.body())
        except InvalidSignature:
            return False
        return True

    def describe(self) -> str:
        return f"size {self.size}, signed at {self.signed_at}"

    def to_json(self) -> dict[str, Any]:
        return {
            "tree": self.tree,
            "size": self.size,
            "root": self.root.hex(),
            "signed_at": self.signed_at,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "body": self.body().decode("utf-8"),
        }

    @classmethod
    def from_json(cls, doc: Any, where: str = "checkpoint") -> Checkpoint:
        """Read a checkpoint (``to_json``'s shape); InvalidInput names the field at fault."""
        if not isinstance(doc, dict):
            raise InvalidInput(f"{where} must be an object")
        tree = _field(doc, where, "tree", str)
        if tree not in TREES:
            raise InvalidInput(f"{where}.tree must be one of {', '.join(TREES)}, got {tree[:40]!r}")
        size = _field(doc, where, "size", int)
        if not 0 <= size <= MAX_TREE_SIZE:
            raise InvalidInput(f"{where}.size must be between 0 and {MAX_TREE_SIZE}")
        signed_at = _field(doc, where, "signed_at", str)
        if not SIGNED_AT_RE.match(signed_at):
            raise InvalidInput(f"{where}.signed_at must be ISO 8601 UTC with microseconds, got {signed_at[:40]!r}")
        key_id = _field(doc, where, "key_id", str)
        if not re.fullmatch(f"[0-9a-f]{{{KEY_ID_HEX}}}", key_id):
            raise InvalidInput(f"{where}.key_id must be {KEY_ID_HEX} lowercase hex digits")
        checkpoint = cls(
            tree=tree,
            size=size,
            root=hex_hash(_field(doc, where, "root", str), f"{where}.root"),
            signed_at=signed_at,
            key_id=key_id,
            signature=_b64(_field(doc, where, "signature", str), f"{where}.signature", SIGNATURE_BYTES),
        )
        body = doc.get("body")
        if body is not None and body != checkpoint.body().decode("utf-8"):
            raise InvalidInput(f"{where}.body does not match its tree, size, root and signed_at")
        return checkpoint


def _field(doc: dict[str, Any], where: str, name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"{where}.{name} must be a{'n' if kind is int else ''} {kind.__name__}")
    if isinstance(value, str) and len(value) > 1000:
        raise InvalidInput(f"{where}.{name} is over 1000 characters")
    return value


def hex_hash(text: str, where: str) -> bytes:
    if not re.fullmatch(f"[0-9a-fA-F]{{{2 * HASH_BYTES}}}", text):
        raise InvalidInput(f"{where} must be {2 * HASH_BYTES} hex digits (a SHA-256 hash)")
    return bytes.fromhex(text)


def _b64(text: str, where: str, length: int) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where} is not standard base64") from None
    if len(raw) != length:
        raise InvalidInput(f"{where} must be {length} bytes, got {len(raw)}")
    return raw


# -- the key --------------------------------------------------------------------------------------------------


class CheckpointKey:
    """The home's Ed25519 checkpoint key (``<keys_dir>/audit-checkpoints.ed25519.pem``), created on first use.

    Implements ``audit.ports.CheckpointSigner``: it signs, and keeps each tree's latest checkpoint in
    ``<keys_dir>/latest-checkpoint.<tree>.json`` (``keep``, ``kept``). Reading the public key of a home that has
    no key yet (``public_key(create=False)``) raises NotFound instead of creating one."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self.path = keys_dir / KEY_FILE_NAME
        self._private: Ed25519PrivateKey | None = None

    @property
    def key_id(self) -> str:
        return key_id_of(self._key(create=True).public_key())

    def sign(self, message: bytes) -> bytes:
        return self._key(create=True).sign(message)

    def public_key(self, create: bool = True) -> Ed25519PublicKey:
        return self._key(create).public_key()

    def exists(self) -> bool:
        """True when this home has a key (it signed a checkpoint once)."""
        return os.path.lexists(self.path)

    def kept_path(self, tree: str) -> Path:
        return self.keys_dir / f"latest-checkpoint.{tree}.json"

    def keep(self, checkpoint: Checkpoint) -> None:
        """Replace the copy of ``checkpoint.tree``'s latest checkpoint kept outside the store (0600, atomically,
        never through a symbolic link)."""
        doc = {"format": KEPT_FILE_FORMAT, **checkpoint.to_json()}
        data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
        write_private(self.keys_dir, self.kept_path(checkpoint.tree).name, data)

    def kept(self, tree: str) -> Checkpoint | None:
        """The copy of ``tree``'s latest checkpoint kept outside the store (None: none kept yet). InvalidInput
        names the file when it is not one this home wrote (a link, another owner, open to others, not a
        checkpoint of ``tree``)."""
        path = self.kept_path(tree)
        raw = read_private(path, KEPT_FILE_MAX_BYTES)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise InvalidInput(f"{path} is not JSON: not a kept checkpoint") from None
        if not isinstance(doc, dict) or doc.get("format") != KEPT_FILE_FORMAT:
            raise InvalidInput(f"{path}: format must be {KEPT_FILE_FORMAT!r}")
        checkpoint = Checkpoint.from_json(doc, str(path))
        if checkpoint.tree != tree:
            raise InvalidInput(f"{path} holds a checkpoint of the {checkpoint.tree} tree, not of the {tree} tree")
        return checkpoint

    def _key(self, create: bool) -> Ed25519PrivateKey:
        if self._private is None:
            if not self.exists():
                if not create:
                    raise NotFound(
                        f"no checkpoint key at {self.path}: this home never signed a checkpoint "
                        "(pass --public-key FILE, a key printed by `modelmarket audit public-key`)"
                    )
                self._create()
            self._private = self._load()
        return self._private

    def _create(self) -> None:
        os.close(private_dir(self.keys_dir))  # made 0700, and refused when it is a symbolic link
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = self.keys_dir / f".{KEY_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.path)  # atomic: when another process got there first, its key is the one
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    def _load(self) -> Ed25519PrivateKey:
        """Opened once without following links; owner, mode and size checked on that descriptor, then read."""
        pem = read_private(self.path, KEY_FILE_MAX_BYTES)
        if pem is None:
            raise NotFound(f"no checkpoint key at {self.path}")
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise InvalidInput(f"{self.path} is not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidInput(f"{self.path} is not an Ed25519 key")
        return key
