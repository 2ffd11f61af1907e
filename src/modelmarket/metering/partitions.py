"""Which partition of the usage-event log an account's events go to (pure).

The log is partitioned by account so that one account's events keep their order (they all go to one partition)
while partitions are consumed in parallel. The hash is SHA-256, never Python's ``hash`` (salted per process), so
every gateway, the metering consumers and a rebuild agree on it forever.
"""

from __future__ import annotations

import hashlib

from modelmarket.core.errors import ensure

PARTITIONS_MAX = 64
SHARED_LOCK_KEY = "shared"
"""``Lock.METERING``'s key for the rows every partition's consumer writes (the usage tree, the rating share's first
record): taken, with ``uow.lock``, only around those, so the rest of each partition's batch runs in parallel."""


def partition_of(account_id: str, partitions: int) -> int:
    """The partition (0..partitions-1) of ``account_id``'s events: the first 8 bytes of its SHA-256, mod n."""
    ensure(1 <= partitions <= PARTITIONS_MAX, f"bus_partitions must be 1..{PARTITIONS_MAX}, not {partitions}")
    if partitions == 1:
        return 0
    digest = hashlib.sha256(account_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % partitions


def consumer_name(base: str, partition: int) -> str:
    """The metering consumer's name for ``partition``: ``base`` for partition 0 (as before partitions existed),
    ``base.p{i}`` for the others; each keeps its own offset in the store."""
    return base if partition == 0 else f"{base}.p{partition}"


def lock_key(partition: int) -> str:
    """``Lock.METERING``'s key for a partition's consumer (with several partitions; it also holds the unkeyed lock
    shared, so anything under ``write(Lock.METERING)`` waits for every partition, as it did for the one)."""
    return f"p{partition}"


class PartitionCountChanged(Exception):
    """The log was written with another partition count: accounts would move between partitions and lose their
    order, and consumers' offsets would point into other partitions. Refused; the message says what to set."""


def check_partition_count(stored: int | None, configured: int, where: str) -> None:
    """Refuse a partition count that differs from the one the log was created with (``stored``; None: new)."""
    if stored is not None and stored != configured:
        raise PartitionCountChanged(
            f"MODELMARKET_BUS_PARTITIONS is {configured}, but the event log at {where} was created with {stored} "
            f"partition(s); the count is fixed once events exist: set MODELMARKET_BUS_PARTITIONS={stored}"
        )
