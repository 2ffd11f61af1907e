"""The embedded event log: an append-only SQLite table in its own file, read by offset.

The port is deliberately narrow (append, read from offset; consumers keep their offsets in the store, in the
same transaction as their effects) so that a NATS JetStream or Kafka adapter is one module.

Two hot-path appenders share one interface (``append`` returns a future that completes once the event is
committed): ``LoopGroupCommitWriter`` (the default, for ``synchronous=NORMAL``) commits on the event loop every
append made in one loop iteration; ``GroupCommitWriter`` (for ``synchronous=FULL``) drains a queue in a writer
thread, so fsyncs stay off the loop. Under load many requests share one commit; a lone request pays one small
transaction. ``make_writer`` picks by the setting.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelmarket.metering.partitions import check_partition_count
from modelmarket.metering.ports import AlreadyLogged, EventLogFull, KeptAnswer, KeyLookup, LogRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    log_offset INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    payload    BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS kept_answers (
    event_id       TEXT PRIMARY KEY,
    request_sha256 TEXT NOT NULL,
    content_type   BLOB NOT NULL,
    header_length  BLOB,
    body           BLOB NOT NULL,
    kept_at_s      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_kept_answers_kept_at ON kept_answers (kept_at_s);
CREATE TABLE IF NOT EXISTS log_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# ``log_meta`` of partition 0 (events.db) records the partition count the log was created with.
# An answer kept for an Idempotency-Key is written in the same transaction as its usage event: a committed event
# always has its answer (when it was small enough to keep), so a retry after a crash gets the same bytes.


# The hot-path writer leaves WAL checkpoints (page copies plus an fsync) to the reader (the metering consumer),
# which checkpoints once it has read this many records; the writer's bound on the WAL is only a backstop for when
# no consumer runs.
WRITER_AUTOCHECKPOINT_PAGES = 50_000
READER_CHECKPOINT_RECORDS = 1_000
PURGE_INTERVAL_S = 60.0
"""How often the reader deletes kept answers older than their time to live."""


class SqliteEventLog:
    """Append-only log in a SQLite file (WAL). One instance per thread: sqlite3 connections are not shared."""

    def __init__(
        self,
        path: Path,
        synchronous: str = "normal",
        autocheckpoint_pages: int | None = None,
        answer_ttl_s: float = 86_400.0,
    ) -> None:
        if synchronous.lower() not in {"full", "normal"}:
            raise ValueError(f"event_log_sync must be 'full' or 'normal', not {synchronous!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._conn.execute("PRAGMA busy_timeout=30000")
        if autocheckpoint_pages is not None:
            self._conn.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint_pages)}")
        self._conn.executescript(_SCHEMA)
        self._read_since_checkpoint = 0
        self.answer_ttl_s = answer_ttl_s
        self._purged_at = 0.0

    def _checkpoint(self) -> None:
        """Copy committed WAL pages into the database file without blocking the writer (PASSIVE)."""
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self._read_since_checkpoint = 0
        now = time.time()
        if now - self._purged_at >= PURGE_INTERVAL_S:  # a write: rarely, so it never queues behind the hot path
            self._purged_at = now
            self._conn.execute("DELETE FROM kept_answers WHERE kept_at_s < ?", (now - self.answer_ttl_s,))

    def append_many(self, events: Sequence[tuple[str, bytes]], kept: Sequence[KeptAnswer] = ()) -> set[str]:
        """Durably append events (and the answers kept beside them) in one transaction. An event id already in
        the log is not appended twice. Returns the ids of kept answers whose event was already logged (by
        another process): those calls must replay the logged answer, not serve their own."""
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            duplicates: set[str] = set()
            if kept:
                ids = [k.event_id for k in kept]
                marks = ",".join("?" * len(ids))
                duplicates = {
                    r[0] for r in cur.execute(f"SELECT event_id FROM events WHERE event_id IN ({marks})", ids)
                }
            cur.executemany("INSERT OR IGNORE INTO events (event_id, payload) VALUES (?, ?)", events)
            if kept:
                cur.executemany(
                    "INSERT OR IGNORE INTO kept_answers VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (k.event_id, k.request_sha256, k.content_type, k.header_length, k.body, k.kept_at_s)
                        for k in kept
                        if k.event_id not in duplicates
                    ],
                )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return duplicates

    def read(self, after_offset: int, limit: int) -> list[LogRecord]:
        rows = self._conn.execute(
            "SELECT log_offset, event_id, payload FROM events WHERE log_offset > ? ORDER BY log_offset LIMIT ?",
            (after_offset, limit),
        ).fetchall()
        self._read_since_checkpoint += len(rows)
        if self._read_since_checkpoint >= READER_CHECKPOINT_RECORDS or (not rows and self._read_since_checkpoint):
            self._checkpoint()  # housekeeping on the reader's side, off the request path
        return [LogRecord(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def lookup(self, event_id: str) -> KeyLookup:
        """Whether ``event_id`` was billed, and its kept answer while it is younger than ``answer_ttl_s``."""
        billed = self._conn.execute("SELECT 1 FROM events WHERE event_id = ?", (event_id,)).fetchone() is not None
        if not billed:
            return KeyLookup(False, None)
        row = self._conn.execute(
            "SELECT request_sha256, content_type, header_length, body, kept_at_s FROM kept_answers "
            "WHERE event_id = ? AND kept_at_s >= ?",
            (event_id, time.time() - self.answer_ttl_s),
        ).fetchone()
        if row is None:
            return KeyLookup(True, None)
        header_length = None if row[2] is None else bytes(row[2])
        return KeyLookup(True, KeptAnswer(event_id, str(row[0]), bytes(row[1]), header_length, bytes(row[3]), row[4]))

    def last_offset(self) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(log_offset), 0) FROM events").fetchone()
        return int(row[0])

    def ack(self, upto_offset: int) -> None:
        """Nothing to do: the reader's offset in the store is the only position there is."""

    def stored_partitions(self) -> int | None:
        """The partition count recorded in this log (partition 0); a log written before partitions existed, with
        events in it, was written with one; None: not recorded and empty."""
        row = self._conn.execute("SELECT value FROM log_meta WHERE name = 'partitions'").fetchone()
        return int(row[0]) if row is not None else (1 if self.last_offset() > 0 else None)

    def claim_partitions(self, partitions: int, others_empty: bool) -> None:
        """Record ``partitions``, or refuse it if another count is recorded and events exist (in this log, or
        ``others_empty`` False: in the other partitions' files)."""
        stored = self.stored_partitions()
        if stored is not None and stored != partitions and self.last_offset() == 0 and others_empty:
            stored = None  # recorded, but no event was ever appended: the count may still change
        check_partition_count(stored, partitions, str(self.path))
        self._conn.execute("INSERT OR REPLACE INTO log_meta VALUES ('partitions', ?)", (str(partitions),))

    def close(self) -> None:
        self._conn.close()


def partition_path(first: Path, partition: int) -> Path:
    """Partition 0 is ``events.db`` itself (nothing changes at one partition); partition i is ``events-p{i}.db``
    beside it."""
    return first if partition == 0 else first.with_name(f"{first.stem}-p{partition}{first.suffix}")


_STOP = object()


class GroupCommitWriter:
    """Group-committing appender for asyncio request handlers."""

    def __init__(
        self, log_path: Path, synchronous: str, batch_max: int, queue_max: int, answer_ttl_s: float = 86_400.0
    ) -> None:
        self._log_path = log_path
        self._synchronous = synchronous
        self._batch_max = batch_max
        self._answer_ttl_s = answer_ttl_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_max)
        self._thread: threading.Thread | None = None
        self._reader: SqliteEventLog | None = None
        self.commits = 0
        self.appended = 0

    def start(self) -> None:
        # Open here so a bad path or setting fails at startup, not on the first request. This connection also
        # answers Idempotency-Key lookups (reads; the writer thread has its own).
        self._reader = SqliteEventLog(self._log_path, self._synchronous, answer_ttl_s=self._answer_ttl_s)
        self._thread = threading.Thread(target=self._run, name="event-log-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def lookup(self, event_id: str) -> KeyLookup:
        if self._reader is None:
            raise RuntimeError("GroupCommitWriter.lookup() before start()")
        return self._reader.lookup(event_id)

    def append(self, event_id: str, payload: bytes, kept: KeptAnswer | None = None) -> asyncio.Future[None]:
        """Queue one event; the returned future completes once it is committed (or fails with the error)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        try:
            self._queue.put_nowait((event_id, payload, loop, fut, kept))
        except queue.Full:
            raise EventLogFull("usage event log is at its queue bound; try again shortly") from None
        return fut

    def append_all(self, events: Sequence[tuple[str, bytes]]) -> asyncio.Future[None]:
        """Queue several events committed together, in one transaction (a pipeline call's steps): all or none."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        try:
            self._queue.put_nowait((None, list(events), loop, fut, None))
        except queue.Full:
            raise EventLogFull("usage event log is at its queue bound; try again shortly") from None
        return fut

    def _run(self) -> None:
        log = SqliteEventLog(self._log_path, self._synchronous, WRITER_AUTOCHECKPOINT_PAGES)
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                stop = False
                while len(batch) < self._batch_max:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                self._commit(log, batch)
                if stop:
                    return
        finally:
            log.close()

    def _commit(self, log: SqliteEventLog, batch: list[object]) -> None:
        items = [b for b in batch if isinstance(b, tuple)]
        error: BaseException | None = None
        duplicates: set[str] = set()
        events = [e for i in items for e in _events_of(i[0], i[1])]
        try:
            duplicates = log.append_many(events, [i[4] for i in items if i[4] is not None])
            self.commits += 1
            self.appended += len(events)
        except Exception as exc:  # reported to every waiting request; none of them is served
            error = exc
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], BaseException | None]]] = {}
        for item in items:
            logged = [e for e, _ in _events_of(item[0], item[1]) if e in duplicates]
            outcome = _duplicate(logged[0]) if logged else error
            by_loop.setdefault(item[2], []).append((item[3], outcome))
        for loop, futures in by_loop.items():
            loop.call_soon_threadsafe(_settle, futures)


def _events_of(event_id: str | None, payload: Any) -> list[tuple[str, bytes]]:
    """The events of one queued item: one event, or (``event_id`` None) a group committed together."""
    return list(payload) if event_id is None else [(event_id, payload)]


def _duplicate(event_id: str) -> AlreadyLogged:
    return AlreadyLogged(f"event {event_id} was already in the log")


def _settle(outcomes: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for fut, error in outcomes:
        _resolve([fut], error)


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futures:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


class LoopGroupCommitWriter:
    """Group commit on the event loop itself, for ``synchronous=NORMAL`` where a commit costs tens of µs.

    An append adds the event to the pending batch and, if none is scheduled, schedules one flush with
    ``call_soon``: every append made by the requests that run in the same loop iteration joins that flush. The
    flush commits the batch in one transaction and completes the futures; no thread hand-off on the hot path.
    With ``synchronous=FULL`` (an fsync per commit) use ``GroupCommitWriter``, which keeps the fsync off the loop.
    """

    def __init__(
        self, log_path: Path, synchronous: str, batch_max: int, queue_max: int, answer_ttl_s: float = 86_400.0
    ) -> None:
        self._log_path = log_path
        self._synchronous = synchronous
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._answer_ttl_s = answer_ttl_s
        self._pending: list[tuple[str, bytes, asyncio.Future[None], KeptAnswer | None]] = []
        self._scheduled = False
        self._log: SqliteEventLog | None = None
        self.commits = 0
        self.appended = 0

    def start(self) -> None:
        self._log = SqliteEventLog(
            self._log_path, self._synchronous, WRITER_AUTOCHECKPOINT_PAGES, answer_ttl_s=self._answer_ttl_s
        )

    def lookup(self, event_id: str) -> KeyLookup:
        """An indexed read on the loop's own connection (tens of µs); only calls with an Idempotency-Key pay it."""
        if self._log is None:
            raise RuntimeError("LoopGroupCommitWriter.lookup() before start()")
        return self._log.lookup(event_id)

    def stop(self) -> None:
        if self._pending:
            self._flush()
        if self._log is not None:
            self._log.close()
            self._log = None

    def append(self, event_id: str, payload: bytes, kept: KeptAnswer | None = None) -> asyncio.Future[None]:
        if self._log is None:
            raise RuntimeError("LoopGroupCommitWriter.append() before start()")
        if len(self._pending) >= self._queue_max:
            raise EventLogFull("usage event log is at its queue bound; try again shortly")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((event_id, payload, fut, kept))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def append_all(self, events: Sequence[tuple[str, bytes]]) -> asyncio.Future[None]:
        """Several events committed together, in one transaction (a pipeline call's steps): all or none."""
        if self._log is None:
            raise RuntimeError("LoopGroupCommitWriter.append_all() before start()")
        if len(self._pending) >= self._queue_max:
            raise EventLogFull("usage event log is at its queue bound; try again shortly")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((None, list(events), fut, None))  # type: ignore[arg-type]
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = self._pending[: self._batch_max], self._pending[self._batch_max :]
            error: BaseException | None = None
            duplicates: set[str] = set()
            try:
                assert self._log is not None
                events = [e for item in batch for e in _events_of(item[0], item[1])]
                duplicates = self._log.append_many(events, [k for _, _, _, k in batch if k is not None])
                self.commits += 1
                self.appended += len(events)
            except Exception as exc:  # every waiting request fails; none of them is served
                error = exc
            outcomes = []
            for e, p, fut, _ in batch:
                logged = [i for i, _ in _events_of(e, p) if i in duplicates]
                outcomes.append((fut, _duplicate(logged[0]) if logged else error))
            _settle(outcomes)


def make_writer(
    log_path: Path, synchronous: str, batch_max: int, queue_max: int, answer_ttl_s: float = 86_400.0
) -> GroupCommitWriter | LoopGroupCommitWriter:
    """The appender that fits the durability setting: on-loop for NORMAL, a writer thread for FULL."""
    if synchronous.lower() == "full":
        return GroupCommitWriter(log_path, synchronous, batch_max, queue_max, answer_ttl_s)
    return LoopGroupCommitWriter(log_path, synchronous, batch_max, queue_max, answer_ttl_s)
