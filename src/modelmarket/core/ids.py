"""Identifiers: sortable-enough random ids for rows and requests, and API key material."""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import time

API_KEY_PREFIX = "mm_"


def new_id(prefix: str = "") -> str:
    """A 26-hex-char id whose first 10 chars are a millisecond timestamp (roughly time-ordered)."""
    return f"{prefix}{int(time.time() * 1000):010x}{os.urandom(8).hex()}"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Keys are 256-bit random tokens, so a plain SHA-256 is a sufficient one-way hash for lookup."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class RequestIds:
    """Unique request ids without a syscall per id: a random per-process prefix plus a counter."""

    def __init__(self, prefix: str = "req_") -> None:
        self._prefix = f"{prefix}{int(time.time()):08x}{os.urandom(6).hex()}"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):010x}"
