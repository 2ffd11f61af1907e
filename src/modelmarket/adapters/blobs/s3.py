"""Content-addressed blobs in an S3 bucket (implements ``registry.ports.BlobStore``), read through a local cache.

Objects are ``{prefix}/sha256/{ab}/{digest}``, written once: the key is the hash of the bytes, so a second upload
of a digest is skipped after a HEAD, and every copy of a digest anywhere is interchangeable. Runners and the gate
read artifacts from the local disk, so ``path(digest)`` answers a file in a read-only cache by digest
(``HOME/cache/blobs/sha256/ab/<digest>``, always valid for the same reason), downloaded on a miss and checked
against its digest before it is renamed into place: a wrong or truncated object is refused and never cached.
Tested against SeaweedFS; path-style addressing, so it also works with MinIO and AWS.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from modelmarket.adapters.blobs.fs import copy_hashing
from modelmarket.core.errors import Conflict, InvalidInput, NotFound, NotReady

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
"""How long one S3 call may wait for a connection, and then between two reads of its answer."""
MAX_ATTEMPTS = 4
"""Attempts per S3 call (botocore's "standard" retries: connection errors, 5xx, throttling; with backoff)."""
SINGLE_PUT_MAX_BYTES = 5 * 1024**3
"""S3's limit for one PUT; a larger artifact is uploaded in parts of ``PART_BYTES``."""
PART_BYTES = 64 * 1024 * 1024
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_REFUSED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_MISSING = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


class BlobStoreUnavailable(NotReady):
    """The S3 store cannot be used now: unreachable, no credentials, or credentials refused (the message says)."""


class BlobCorrupted(NotReady):
    """The object stored under a digest does not hash to it (damaged or truncated): refused, never cached."""


def s3_client(endpoint_url: str | None, region: str) -> Any:
    """A boto3 S3 client: credentials from the standard AWS variables, bounded timeouts and retries, path-style
    addressing (SeaweedFS serves buckets as paths, not as host names)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


class S3BlobStore:
    """Blobs in ``bucket`` under ``prefix``, cached by digest under ``cache_dir`` (``HOME/cache/blobs``)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        cache_dir: Path,
        *,
        region: str = "us-east-1",
        single_put_max_bytes: int = SINGLE_PUT_MAX_BYTES,
    ) -> None:
        self.client, self.bucket, self.region = client, bucket, region
        self.prefix = prefix.strip("/")
        self.cache_dir = cache_dir
        self.single_put_max_bytes = single_put_max_bytes
        self._bucket_checked = False

    def key(self, digest: str) -> str:
        tail = f"sha256/{digest[:2]}/{digest}"
        return f"{self.prefix}/{tail}" if self.prefix else tail

    def _cached(self, digest: str) -> Path:
        return self.cache_dir / "sha256" / digest[:2] / digest

    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.client.meta.endpoint_url}"

    # -- writing ----------------------------------------------------------------------------------------
    def put_file(self, src: Path, expected_sha256: str | None = None) -> tuple[str, int]:
        """Upload ``src`` unless its digest is stored already; returns (sha256, size). The bytes are hashed while
        copied to a private temp file, and that copy is what is uploaded (and then cached): with
        ``expected_sha256``, bytes that hash otherwise (the file changed after it was checked) are refused."""
        tmp = self._temp_file()
        try:
            with open(tmp, "r+b") as out, os.fdopen(os.open(src, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
                digest, size = copy_hashing(fh, out)
            if expected_sha256 is not None and digest != expected_sha256:
                raise Conflict(f"{src} changed while it was being published; publish again")
            self._ensure_bucket()
            if not self._stored(digest, size):
                self._upload(tmp, digest, size)
            self._install(tmp, digest)
            return digest, size
        finally:
            tmp.unlink(missing_ok=True)

    def _stored(self, digest: str, size: int) -> bool:
        """Whether the object is there whole: a HEAD, its size and the sha256 it was stored with. An object of
        another size or hash (damaged, or written by someone else) is overwritten with the right bytes."""
        try:
            with self._errors(digest):
                head = self.client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except NotFound:
            return False
        return bool(head["ContentLength"] == size and head.get("Metadata", {}).get("sha256") == digest)

    def _upload(self, tmp: Path, digest: str, size: int) -> None:
        """One PUT carrying the sha256 as metadata and as the S3 checksum (the server refuses bytes that do not
        match it); above S3's single-PUT limit, a multipart upload with a SHA-256 checksum per part."""
        key = self.key(digest)
        metadata = {"sha256": digest}
        with open(tmp, "rb") as body, self._errors(digest):
            if size <= self.single_put_max_bytes:
                checksum = base64.b64encode(bytes.fromhex(digest)).decode()
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentLength=size,
                    Metadata=metadata,
                    ChecksumSHA256=checksum,
                )
            else:
                from boto3.s3.transfer import TransferConfig

                parts = TransferConfig(multipart_threshold=self.single_put_max_bytes, multipart_chunksize=PART_BYTES)
                extra = {"Metadata": metadata, "ChecksumAlgorithm": "SHA256"}
                self.client.upload_fileobj(body, self.bucket, key, ExtraArgs=extra, Config=parts)

    def _ensure_bucket(self) -> None:
        """Create the bucket on the first write if it is missing (once per store; a concurrent create is fine)."""
        if self._bucket_checked:
            return
        try:
            with self._errors():
                self.client.head_bucket(Bucket=self.bucket)
        except NotFound:
            self._create_bucket()
        self._bucket_checked = True

    def _create_bucket(self) -> None:
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":  # S3 wants the region named, except its first one
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            with self._errors(missing_ok=False):
                self.client.create_bucket(**args)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise InvalidInput(f"MODELMARKET_BLOB_URL: cannot create bucket {self.bucket!r}: {exc}") from exc

    # -- reading ----------------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        """The blob as a local file (read-only), downloaded into the cache on a miss. Several processes missing
        one digest at once take turns on a lock per digest; each rename is atomic, so the cache never holds a
        partial file. A missing object is ``NotFound``; one that does not hash to its digest is
        ``BlobCorrupted``."""
        cached = self._cached(_checked(digest))
        if cached.exists():
            return cached
        with self._download_lock(digest):
            if not cached.exists():
                self._download(digest)
        return cached

    def exists(self, digest: str) -> bool:
        if self._cached(_checked(digest)).exists():
            return True
        try:
            with self._errors(digest):
                self.client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except NotFound:
            return False
        return True

    def _download(self, digest: str) -> None:
        tmp = self._temp_file()
        try:
            with self._errors(digest):
                answer = self.client.get_object(Bucket=self.bucket, Key=self.key(digest))
                with closing(answer["Body"]) as body, open(tmp, "r+b") as out:
                    got, size = copy_hashing(body, out)
            if got != digest or size != answer["ContentLength"]:
                raise BlobCorrupted(
                    f"blob sha256:{digest} in {self._where()} is damaged ({size} bytes hashing to sha256:{got}); "
                    "publish the version again to store its bytes"
                )
            self._install(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)

    # -- the cache --------------------------------------------------------------------------------------
    def _temp_file(self) -> Path:
        tmp_dir = self.cache_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir)
        os.close(fd)
        return Path(name)

    def _install(self, tmp: Path, digest: str) -> None:
        """Rename a verified temp file into the cache (read-only); a file already there has the same bytes."""
        dest = self._cached(digest)
        if dest.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)

    @contextmanager
    def _download_lock(self, digest: str) -> Iterator[None]:
        """An exclusive lock per digest across processes (released by the kernel if the holder dies)."""
        locks = self.cache_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / digest, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- errors -----------------------------------------------------------------------------------------
    @contextmanager
    def _errors(self, digest: str | None = None, missing_ok: bool = True) -> Iterator[None]:
        """S3's failures as the platform's: a missing object or bucket is ``NotFound``; no credentials, refused
        ones, an unreachable endpoint and a broken transfer are ``BlobStoreUnavailable`` saying what to set."""
        what = f"blob sha256:{digest} in {self._where()}" if digest else self._where()
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except NoCredentialsError as exc:
            raise BlobStoreUnavailable(
                f"no S3 credentials for {what}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from exc
        except ClientError as exc:
            code = _code(exc)
            if missing_ok and code in _MISSING:
                raise NotFound(f"{what} is not in the blob store ({code})") from exc
            if code in _REFUSED:
                raise BlobStoreUnavailable(
                    f"S3 refused the credentials for {what} ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ) from exc
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
                raise BlobStoreUnavailable(f"S3 failed on {what} ({code}) after {MAX_ATTEMPTS} attempts") from exc
            raise
        except BotoCoreError as exc:
            raise BlobStoreUnavailable(f"S3 failed on {what}: {exc}") from exc


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _checked(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise InvalidInput(f"not a sha256 digest: {digest!r}")
    return digest
