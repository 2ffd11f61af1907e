"""Opening the configured event log (``bootstrap.open_log`` and the gateway's writer call these)."""

from __future__ import annotations

import threading
from pathlib import Path

from modelmarket.adapters.bus.jetstream import JetStreamBus, JetStreamEventLog
from modelmarket.adapters.bus.jetstream_writer import JetStreamWriter
from modelmarket.adapters.bus.partitioned import Appender, PartitionedWriter
from modelmarket.adapters.bus.sqlite_log import SqliteEventLog, make_writer, partition_path
from modelmarket.metering.consumer import CONSUMER_NAME
from modelmarket.metering.partitions import consumer_name
from modelmarket.metering.ports import EventLog

METERING_CONSUMER = ""
"""``consumer`` value meaning: the metering consumer of the partition (its durable consumer on JetStream)."""


class LogConfig:
    """Where the log is: ``bus_url`` None (the embedded log at ``first_path``, events-pN.db beside it) or
    ``nats://``; with the partition count, the namespace and the kept answers' time to live."""

    def __init__(
        self,
        bus_url: str | None,
        namespace: str,
        partitions: int,
        first_path: Path,
        synchronous: str,
        answer_ttl_s: float,
    ) -> None:
        if bus_url is not None and not bus_url.startswith("nats://"):
            raise ValueError(
                f"MODELMARKET_BUS_URL must be nats://host:port (or unset for the embedded log), not {bus_url!r}"
            )
        self.bus_url, self.namespace, self.partitions = bus_url, namespace, partitions
        self.first_path, self.synchronous, self.answer_ttl_s = first_path, synchronous, answer_ttl_s
        self._claimed = False
        self._lock = threading.Lock()

    def open_bus(self) -> JetStreamBus:
        assert self.bus_url is not None
        return JetStreamBus(self.bus_url, self.namespace, self.partitions, answer_ttl_s=self.answer_ttl_s)

    def claim_embedded(self) -> None:
        """Record the partition count in events.db (once per process), or refuse a changed one."""
        with self._lock:
            if self._claimed:
                return
            first = SqliteEventLog(self.first_path, self.synchronous, answer_ttl_s=self.answer_ttl_s)
            try:
                first.claim_partitions(self.partitions, self._others_empty())
            finally:
                first.close()
            self._claimed = True

    def _others_empty(self) -> bool:
        """Whether no partition file but the first (``events-p*.db``) holds an event."""
        for path in self.first_path.parent.glob(f"{self.first_path.stem}-p*{self.first_path.suffix}"):
            other = SqliteEventLog(path, self.synchronous)
            try:
                if other.last_offset() > 0:
                    return False
            finally:
                other.close()
        return True

    def open_log(self, partition: int = 0, consumer: str | None = METERING_CONSUMER) -> EventLog:
        """Partition ``partition`` of the log. ``consumer``: "" the partition's metering consumer (JetStream
        reads through its durable consumer), None no durable consumer (reads by direct gets), else that name."""
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} is not one of the {self.partitions} of the event log")
        if self.bus_url is None:
            self.claim_embedded()
            path = partition_path(self.first_path, partition)
            return SqliteEventLog(path, self.synchronous, answer_ttl_s=self.answer_ttl_s)
        durable = consumer_name(CONSUMER_NAME, partition) if consumer == METERING_CONSUMER else consumer
        return JetStreamEventLog(self.open_bus(), partition, durable)

    def writer(self, batch_max: int, queue_max: int) -> Appender:
        """The gateway's appender: group commit per partition (embedded), or publishes per loop iteration."""
        if self.bus_url is not None:
            return JetStreamWriter(self.open_bus, batch_max, queue_max)
        self.claim_embedded()
        if self.partitions == 1:
            return make_writer(self.first_path, self.synchronous, batch_max, queue_max, self.answer_ttl_s)
        return PartitionedWriter(
            [
                make_writer(
                    partition_path(self.first_path, p), self.synchronous, batch_max, queue_max, self.answer_ttl_s
                )
                for p in range(self.partitions)
            ]
        )
