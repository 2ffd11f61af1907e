"""Content-addressed blobs on the local filesystem: ``ROOT/sha256/ab/<full hex digest>``, read-only."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from modelmarket.core.errors import Conflict, NotFound

_CHUNK = 1024 * 1024


def copy_hashing(src: IO[bytes] | Any, out: IO[bytes]) -> tuple[str, int]:
    """Copy ``src`` to ``out`` in bounded chunks, hashing; fsync, so a renamed file is whole after a crash.
    Returns (sha256 hex, size)."""
    h = hashlib.sha256()
    size = 0
    while chunk := src.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
        out.write(chunk)
    out.flush()
    os.fsync(out.fileno())
    return h.hexdigest(), size


class FsBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _location(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    def put_file(self, src: Path, expected_sha256: str | None = None) -> tuple[str, int]:
        """Copy ``src`` in, hashing while copying. Returns (sha256, size). Idempotent for equal content.

        With ``expected_sha256``, bytes that hash otherwise (the file changed after it was checked) are refused.
        """
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out, os.fdopen(os.open(src, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
                digest, size = copy_hashing(fh, out)
            if expected_sha256 is not None and digest != expected_sha256:
                raise Conflict(f"{src} changed while it was being published; publish again")
            dest = self._location(digest)
            if dest.exists():
                os.unlink(tmp_name)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o444)
                os.replace(tmp_name, dest)
            return digest, size
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise

    def path(self, digest: str) -> Path:
        location = self._location(digest)
        if not location.exists():
            raise NotFound(f"blob sha256:{digest} is not in the blob store")
        return location

    def exists(self, digest: str) -> bool:
        return self._location(digest).exists()
