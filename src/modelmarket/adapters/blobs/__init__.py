"""The blob store adapters (implement ``registry.ports.BlobStore``): content-addressed files under the home, or an
S3 bucket read through a local cache. ``open_blobs`` picks one from ``MODELMARKET_BLOB_URL``."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from modelmarket.adapters.blobs.fs import FsBlobStore
from modelmarket.adapters.blobs.s3 import S3BlobStore, s3_client
from modelmarket.core.errors import InvalidInput
from modelmarket.registry.ports import BlobStore
from modelmarket.settings import Settings

__all__ = ["FsBlobStore", "S3BlobStore", "open_blobs"]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def open_blobs(settings: Settings) -> BlobStore:
    """The blob store ``settings.blob_url`` names: unset, files under ``HOME/blobs``; ``s3://bucket[/prefix]``, that
    bucket (created on the first write if missing) with a cache under ``HOME/cache/blobs``."""
    if settings.blob_url is None:
        return FsBlobStore(settings.blobs_dir)
    url = urlsplit(settings.blob_url)
    if url.scheme != "s3" or not url.netloc or url.query or url.fragment:
        raise InvalidInput(
            f"MODELMARKET_BLOB_URL: {settings.blob_url!r} is not s3://bucket[/prefix] (unset it for files under HOME)"
        )
    if not _BUCKET.match(url.netloc):
        raise InvalidInput(
            f"MODELMARKET_BLOB_URL: {url.netloc!r} is not an S3 bucket name (3 to 63 lowercase letters, digits, "
            "dots and hyphens, starting and ending with a letter or digit)"
        )
    return S3BlobStore(
        s3_client(settings.s3_endpoint, settings.s3_region),
        url.netloc,
        url.path,
        settings.home / "cache" / "blobs",
        region=settings.s3_region,
    )
