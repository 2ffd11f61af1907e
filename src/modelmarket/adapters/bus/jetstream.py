"""The event log on NATS JetStream (``MODELMARKET_BUS_URL=nats://...``), with ``nats-py``.

Streams, per partition i: ``{ns}_usage_p{i}`` (subjects ``{ns}.usage.p{i}.>``, file storage, limits retention:
the log is kept for rebuild and replay; direct gets allowed; messages up to ``EVENT_RECORD_MAX_BYTES``). An
event is published on ``{ns}.usage.p{i}.{event_id}`` with ``Nats-Msg-Id: {event_id}`` and its PubAck awaited:
offsets are the stream sequences. Answers kept for an Idempotency-Key go first to ``{ns}_kept``
(``{ns}.kept.{event_id}``, max age = the answer's time to live), so an event in the log always has its kept
answer.

Duplicates: the server drops a message id it saw within ``DEDUP_WINDOW_S``; beyond it, an event with a kept
answer is looked up by subject before it is published, and the metering consumer's unique event ids guard the
rest (a plain event's id is new per call; it is only published again by this module's bounded retry).

The asyncio client runs on a private event loop in a daemon thread; the methods here are synchronous, as the
port is. A publish is retried with the same message id while the server is away, for at most
``append_timeout_s``; then the append fails with ``EventLogUnavailable`` (the caller answers 503 and serves
nothing). The client reconnects by itself, forever, every ``RECONNECT_WAIT_S``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError

from modelmarket.metering.partitions import check_partition_count
from modelmarket.metering.ports import EventLogUnavailable, KeptAnswer, KeyLookup, LogRecord

T = TypeVar("T")
log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
RECONNECT_WAIT_S = 0.25
APPEND_TIMEOUT_S = 5.0
"""How long an append keeps retrying while the server is away before it fails (far inside the dedup window)."""
REQUEST_TIMEOUT_S = 5.0
FETCH_TIMEOUT_S = 2.0
DEDUP_WINDOW_S = 120.0
ACK_WAIT_S = 300.0
"""A delivered record is redelivered only after this long unacked; the reader's stored offset decides anyway."""
MAX_ACK_PENDING = 100_000
PUBLISH_PENDING_MAX = 20_000
"""Publishes awaiting their acks at once (the client's own bound)."""
EVENT_RECORD_MAX_BYTES = 64 * 1024
"""The largest message a usage stream accepts (the server refuses more). A usage event is a few hundred bytes;
anyone else able to publish on the bus cannot put megabytes in the log the consumer reads and rejects."""
PARTITIONS_KEY = "modelmarket_partitions"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def subject_token(event_id: str) -> str:
    """The subject token of an event id: itself when it is a safe token (every id this platform makes is), else
    a digest of it (a subject token cannot hold '.', '*', '>' or spaces)."""
    return event_id if _TOKEN.match(event_id) else "h" + hashlib.sha256(event_id.encode()).hexdigest()[:48]


def durable_name(consumer: str) -> str:
    """A JetStream consumer name for a metering consumer name (``metering.p2`` -> ``metering_p2``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", consumer)


def encode_kept(k: KeptAnswer) -> bytes:
    head = {
        "request_sha256": k.request_sha256,
        "content_type": base64.b64encode(k.content_type).decode(),
        "header_length": None if k.header_length is None else base64.b64encode(k.header_length).decode(),
        "kept_at_s": k.kept_at_s,
    }
    return orjson.dumps(head) + b"\n" + k.body


def decode_kept(event_id: str, data: bytes) -> KeptAnswer:
    head_raw, _, body = data.partition(b"\n")
    head = orjson.loads(head_raw)
    header_length = None if head["header_length"] is None else base64.b64decode(head["header_length"])
    return KeptAnswer(
        event_id,
        str(head["request_sha256"]),
        base64.b64decode(head["content_type"]),
        header_length,
        body,
        float(head["kept_at_s"]),
    )


@dataclass
class _Reader:
    """A durable pull consumer of one partition, and where this process expects it to deliver next."""

    durable: str
    sub: JetStreamContext.PullSubscription
    next_seq: int
    unacked: list[tuple[int, Msg]] = field(default_factory=list)


class JetStreamBus:
    """One NATS connection (on its own loop thread) and the streams of one namespace."""

    def __init__(
        self,
        url: str,
        namespace: str,
        partitions: int,
        *,
        answer_ttl_s: float = 86_400.0,
        append_timeout_s: float = APPEND_TIMEOUT_S,
    ) -> None:
        self.url, self.namespace, self.partitions = url, namespace, partitions
        self.answer_ttl_s = answer_ttl_s
        self.append_timeout_s = append_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-bus", daemon=True)
        self._thread.start()
        self._nc: Any = None
        self._js: JetStreamContext | None = None
        self._readers: dict[int, _Reader] = {}
        self._closing = False
        try:
            self.run(self._connect(), CONNECT_TIMEOUT_S + 4 * REQUEST_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    # -- names ----------------------------------------------------------------------------------------------
    def stream(self, partition: int) -> str:
        return f"{self.namespace}_usage_p{partition}"

    def subject(self, partition: int, event_id: str) -> str:
        return f"{self.namespace}.usage.p{partition}.{subject_token(event_id)}"

    @property
    def kept_stream(self) -> str:
        return f"{self.namespace}_kept"

    def kept_subject(self, event_id: str) -> str:
        return f"{self.namespace}.kept.{subject_token(event_id)}"

    # -- the private loop -----------------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` on the bus's loop and wait for it, at most ``timeout_s``."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise EventLogUnavailable(f"the event bus at {self.url} did not answer within {timeout_s:g} s") from None

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Start ``coro`` on the bus's loop; a ``concurrent.futures.Future`` of its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _connect(self) -> None:
        try:
            self._nc = await nats.connect(
                self.url,
                connect_timeout=CONNECT_TIMEOUT_S,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                ping_interval=5,
                max_outstanding_pings=2,
                name="modelmarket",
                pending_size=0,  # no buffering while disconnected: a publish then fails, and is retried here
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except Exception as exc:
            raise EventLogUnavailable(f"cannot reach the event bus at {self.url}: {exc!r}") from exc
        self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT_S, publish_async_max_pending=PUBLISH_PENDING_MAX)
        await self._ensure_streams()

    async def _on_error(self, exc: Exception) -> None:
        level = logging.DEBUG if isinstance(exc, OSError) else logging.WARNING  # refused while it restarts
        log.log(level, "event bus %s: %r", self.url, exc)

    async def _on_disconnected(self) -> None:
        """Drop what the client buffered but had not sent: the client would send it after reconnecting, and an
        append that gave up meanwhile (its caller answered 503) would then be billed. Every append still
        waiting publishes again itself, with the same message id. (The client has no public way to do this.)"""
        if not self._closing:
            log.warning("event bus %s: disconnected; reconnecting", self.url)
        self._nc._pending = []
        self._nc._pending_data_size = 0

    async def _on_reconnected(self) -> None:
        log.warning("event bus %s: reconnected", self.url)

    async def _ensure_streams(self) -> None:
        """Create the streams that are missing; refuse a partition count other than the one recorded on p0."""
        js = self._jetstream()
        try:
            info = await js.stream_info(self.stream(0))
        except NotFoundError:
            info = None
        if info is not None:
            meta = dict(info.config.metadata or {})
            stored: int | None = int(meta[PARTITIONS_KEY]) if PARTITIONS_KEY in meta else 1
            if stored != self.partitions and not await self._any_events(max(stored or 1, self.partitions)):
                stored = None  # recorded, but no event was ever appended: the count may still change
                meta[PARTITIONS_KEY] = str(self.partitions)
                info.config.metadata = meta
                await js.update_stream(info.config)
            check_partition_count(stored, self.partitions, f"{self.url} (stream {self.stream(0)})")
        for p in range(self.partitions):
            await self._ensure(
                StreamConfig(
                    name=self.stream(p),
                    subjects=[f"{self.namespace}.usage.p{p}.>"],
                    retention=RetentionPolicy.LIMITS,
                    storage=StorageType.FILE,
                    duplicate_window=DEDUP_WINDOW_S,
                    allow_direct=True,
                    max_msg_size=EVENT_RECORD_MAX_BYTES,
                    metadata={PARTITIONS_KEY: str(self.partitions)} if p == 0 else None,
                )
            )
        await self._ensure(
            StreamConfig(
                name=self.kept_stream,
                subjects=[f"{self.namespace}.kept.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=self.answer_ttl_s,
                duplicate_window=min(DEDUP_WINDOW_S, self.answer_ttl_s),
                allow_direct=True,
            )
        )

    async def _any_events(self, partitions: int) -> bool:
        for p in range(partitions):
            try:
                info = await self._jetstream().stream_info(self.stream(p))
            except NotFoundError:
                continue
            if info.state.last_seq > 0:
                return True
        return False

    async def _ensure(self, config: StreamConfig) -> None:
        js = self._jetstream()
        assert config.name is not None
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            return
        if config.max_msg_size is not None and info.config.max_msg_size != config.max_msg_size:
            info.config.max_msg_size = config.max_msg_size  # a stream made before the bound existed gets it
            await js.update_stream(info.config)

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise EventLogUnavailable(f"the event bus at {self.url} is closed")
        return self._js

    # -- appends ----------------------------------------------------------------------------------------------
    async def append_many(
        self, partition: int, events: Sequence[tuple[str, bytes]], kept: Sequence[KeptAnswer] = ()
    ) -> set[str]:
        """Publish the kept answers, then the events, each batch pipelined (every publish sent, then every ack
        awaited). Returns the ids of kept answers whose event was already in the log: those events are not
        published again and their answers stay the logged ones."""
        duplicates: set[str] = set()
        for k in kept:  # beyond the dedup window, only a lookup by subject knows (only Idempotency-Key calls pay)
            if await self._has_event(partition, k.event_id):
                duplicates.add(k.event_id)
        fresh_kept = [k for k in kept if k.event_id not in duplicates]
        if fresh_kept:
            await self._publish_all([(self.kept_subject(k.event_id), k.event_id, encode_kept(k)) for k in fresh_kept])
        todo = [(self.subject(partition, e), e, p) for e, p in events if e not in duplicates]
        acks = await self._publish_all(todo)
        kept_ids = {k.event_id for k in fresh_kept}
        duplicates |= {
            msg_id for (_, msg_id, _), ack in zip(todo, acks, strict=True) if ack.duplicate and msg_id in kept_ids
        }
        return duplicates

    async def _publish_all(self, items: Sequence[tuple[str, str, bytes]]) -> list[PubAck]:
        """Publish (subject, message id, payload) items and await their acks; what failed for want of a server is
        published again, with the same message id (the server drops a second copy), until ``append_timeout_s``."""
        js = self._jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.append_timeout_s
        acks: list[PubAck | None] = [None] * len(items)
        todo = list(range(len(items)))
        last_error: BaseException | None = None
        while todo:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise EventLogUnavailable(
                    f"the event bus at {self.url} did not acknowledge {len(todo)} event(s) within "
                    f"{self.append_timeout_s:g} s ({last_error!r}); nothing was served"
                )
            if not self._nc.is_connected:
                await asyncio.sleep(min(0.05, remaining))
                continue
            futures: list[asyncio.Future[PubAck]] = []
            try:
                for i in todo:
                    subject, msg_id, payload = items[i]
                    # No wait_stall: its per-publish timeout costs ~1 ms each (measured, nats-py 2.16); the
                    # in-flight bound is the writer's queue, and this whole wait is bounded below.
                    futures.append(await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id}))
            except Exception as exc:  # the connection dropped while sending: send again after reconnecting
                last_error = exc
                for f in futures:
                    f.cancel()
                await asyncio.sleep(min(0.05, max(remaining, 0)))
                continue
            if futures:
                await asyncio.wait(futures, timeout=max(deadline - loop.time(), 0.001))
            retry = []
            for i, f in zip(todo, futures, strict=True):
                if not f.done():
                    f.cancel()  # no ack in time: published again (same message id) if time is left
                    retry.append(i)
                elif f.cancelled() or f.exception() is not None:
                    failure = None if f.cancelled() else f.exception()
                    if isinstance(failure, APIError) and failure.code not in (None, 503):
                        raise failure  # the server refused it (no such stream, too large): not a matter of waiting
                    last_error = failure
                    retry.append(i)
                else:
                    acks[i] = f.result()
            todo = retry
        return [a for a in acks if a is not None]

    async def _has_event(self, partition: int, event_id: str) -> bool:
        try:
            await self._jetstream().get_msg(
                self.stream(partition), subject=self.subject(partition, event_id), direct=True
            )
        except NotFoundError:
            return False
        return True

    # -- reads ------------------------------------------------------------------------------------------------
    async def last_offset(self, partition: int) -> int:
        info = await self._jetstream().stream_info(self.stream(partition))
        return int(info.state.last_seq)

    async def lookup(self, partition: int, event_id: str) -> KeyLookup:
        if not await self._has_event(partition, event_id):
            return KeyLookup(False, None)
        try:
            raw = await self._jetstream().get_msg(self.kept_stream, subject=self.kept_subject(event_id), direct=True)
        except NotFoundError:
            return KeyLookup(True, None)
        kept = decode_kept(event_id, raw.data or b"")
        if kept.kept_at_s < time.time() - self.answer_ttl_s:
            return KeyLookup(True, None)
        return KeyLookup(True, kept)

    async def read_direct(self, partition: int, after_offset: int, limit: int) -> list[LogRecord]:
        """Records by sequence, with direct gets (for a reader without a durable consumer: the lag sampler)."""
        last = await self.last_offset(partition)
        out = []
        for seq in range(after_offset + 1, min(last, after_offset + limit) + 1):
            try:
                raw = await self._jetstream().get_msg(self.stream(partition), seq=seq, direct=True)
            except NotFoundError:
                continue
            out.append(LogRecord(seq, _msg_id(raw.headers, raw.subject or ""), raw.data or b""))
        return out

    async def read_durable(self, partition: int, consumer: str, after_offset: int, limit: int) -> list[LogRecord]:
        """Up to ``limit`` records after ``after_offset`` through the durable pull consumer ``consumer``; the
        consumer is made again from ``after_offset + 1`` whenever its position disagrees with that offset."""
        last = await self.last_offset(partition)
        if last <= after_offset:
            return []
        want = min(limit, last - after_offset)
        reader = self._readers.get(partition)
        if reader is None or reader.next_seq != after_offset + 1 or reader.durable != consumer:
            reader = await self._recreate(partition, consumer, after_offset + 1)
        msgs = await self._fetch(reader, want)
        if not msgs or msgs[0][0] != after_offset + 1:
            # The log has records after the offset, but the consumer is elsewhere (another process read with it,
            # deliveries await their acks, redeliveries): start it over from the offset, once.
            reader = await self._recreate(partition, consumer, after_offset + 1)
            msgs = await self._fetch(reader, want)
        records = []
        previous = after_offset
        for seq, msg in msgs:
            if seq <= previous:
                continue
            previous = seq
            records.append(LogRecord(seq, _msg_id(msg.headers, msg.subject), msg.data))
        reader.unacked.extend(msgs)
        reader.next_seq = previous + 1
        return records

    async def _fetch(self, reader: _Reader, want: int) -> list[tuple[int, Msg]]:
        try:
            msgs = await reader.sub.fetch(want, timeout=FETCH_TIMEOUT_S)
        except TimeoutError:
            return []
        except Exception:
            for p in [p for p, r in self._readers.items() if r is reader]:
                del self._readers[p]  # made again by the next read
            raise
        return [(int(m.metadata.sequence.stream), m) for m in msgs]

    async def _recreate(self, partition: int, consumer: str, start_seq: int) -> _Reader:
        js = self._jetstream()
        old = self._readers.pop(partition, None)
        if old is not None:
            with contextlib.suppress(Exception):  # a subscription of a dropped connection: nothing to undo
                await old.sub.unsubscribe()
        stream = self.stream(partition)
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, consumer)
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=consumer,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start_seq,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
                max_ack_pending=MAX_ACK_PENDING,
            ),
        )
        sub = await js.pull_subscribe_bind(durable=consumer, stream=stream)
        reader = self._readers[partition] = _Reader(consumer, sub, start_seq)
        return reader

    async def ack(self, partition: int, upto_offset: int) -> None:
        reader = self._readers.get(partition)
        if reader is None:
            return
        done = [m for seq, m in reader.unacked if seq <= upto_offset]
        reader.unacked = [(seq, m) for seq, m in reader.unacked if seq > upto_offset]
        for msg in done:
            await msg.ack()
        if done:
            await self._nc.flush(timeout=REQUEST_TIMEOUT_S)

    # -- closing ----------------------------------------------------------------------------------------------
    async def _close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    def close(self) -> None:
        self._closing = True
        if self._thread.is_alive():
            try:
                self.run(self._close(), REQUEST_TIMEOUT_S)
            except Exception as exc:  # closing a connection to a server that is gone: nothing is lost
                log.warning("closing the event bus connection: %r", exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=REQUEST_TIMEOUT_S)
        if not self._loop.is_running():
            self._loop.close()
        self._js = None


def _msg_id(headers: dict[str, str] | None, subject: str) -> str:
    if headers and "Nats-Msg-Id" in headers:
        return headers["Nats-Msg-Id"]
    return subject.rsplit(".", 1)[-1]


class JetStreamEventLog:
    """``metering.ports.EventLog`` over one partition of a ``JetStreamBus``. With ``consumer``, reads go through
    that durable pull consumer; without, by direct gets (a reader that must not move anyone's consumer)."""

    def __init__(self, bus: JetStreamBus, partition: int = 0, consumer: str | None = None, owns_bus: bool = True):
        self.bus, self.partition, self.owns_bus = bus, partition, owns_bus
        self.consumer = durable_name(consumer) if consumer else None

    def append_many(self, events: Sequence[tuple[str, bytes]], kept: Sequence[KeptAnswer] = ()) -> set[str]:
        return self.bus.run(self.bus.append_many(self.partition, events, kept), self.bus.append_timeout_s + 10)

    def read(self, after_offset: int, limit: int) -> list[LogRecord]:
        if self.consumer is None:
            coro = self.bus.read_direct(self.partition, after_offset, limit)
        else:
            coro = self.bus.read_durable(self.partition, self.consumer, after_offset, limit)
        return self.bus.run(coro, REQUEST_TIMEOUT_S * 3 + FETCH_TIMEOUT_S * 2)

    def ack(self, upto_offset: int) -> None:
        self.bus.run(self.bus.ack(self.partition, upto_offset), REQUEST_TIMEOUT_S * 2)

    def lookup(self, event_id: str) -> KeyLookup:
        return self.bus.run(self.bus.lookup(self.partition, event_id), REQUEST_TIMEOUT_S * 2)

    def last_offset(self) -> int:
        return self.bus.run(self.bus.last_offset(self.partition), REQUEST_TIMEOUT_S * 2)

    def close(self) -> None:
        if self.owns_bus:
            self.bus.close()
