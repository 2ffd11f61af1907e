"""Adapters implement the ports: store (SQL), blobs (files), bus (event log)."""

__all__: list[str] = []
