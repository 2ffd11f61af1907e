"""Blob store port and its filesystem adapter (content-addressed by sha256, immutable)."""

from modelmarket.adapters.blobs.fs import BlobStore, FsBlobStore

__all__ = ["BlobStore", "FsBlobStore"]
