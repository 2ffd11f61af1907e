"""The blob store adapter: content-addressed files (implements ``registry.ports.BlobStore``)."""

from modelmarket.adapters.blobs.fs import FsBlobStore

__all__ = ["FsBlobStore"]
