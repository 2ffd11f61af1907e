"""The JSON request log: one line per request in ``MODELMARKET_HOME/logs/requests.log`` (rotated by size), and on
stderr when asked.

A line holds what identifies and measures the call (time, level, trace and span ids, request and account ids,
method, path, protocol, model, version, status, error type, IU, cost, tokens, latency) and nothing a caller sent:
never a key, a header, a query string, an input or an output. It is built only from the request's
:class:`~modelmarket.observability.context.CallInfo`, which holds none of those.

Nothing is written on the event loop: ``finish`` encodes the line and appends it to a bounded queue (a full queue
drops the line and counts it in ``RequestLog.dropped``: a request never waits for the disk, nor for a stderr
nobody reads). A writer thread, started by the first line and ended after ``IDLE_EXIT_S`` without one, writes what
is queued every ``FLUSH_AFTER_S`` (a burst of requests costs one ``write``), sooner when ``WAKE_AT_LINES`` wait.
The gateway's shutdown writes the rest (``close``, called by ``Observability.close``: uvicorn re-raises SIGTERM
after its graceful shutdown, so ``atexit`` alone would not run); a gateway killed with SIGKILL loses at most the
last fraction of a second of lines.

Several gateways may share a home, and an operator (or logrotate) may move or delete the file. Before each write
the file at the path is checked to be the one open (same device and inode), else it is opened again. A rotation
is made under an exclusive lock on the folder, and only when the file at the path is still this writer's; a
writer that finds it rotated by another writes on to the new file. A rotation that fails (the file gone, a
read-only folder) is said in the gateway's log, and the log goes on, to the file at the path.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from modelmarket.observability.context import CallInfo

log = logging.getLogger(__name__)
LOG_NAME = "requests.log"
FLUSH_AFTER_S = 0.2
"""Longest time a line waits in memory before it is written."""
MAX_PENDING_LINES = 10_000
"""Lines queued at most; more are dropped (and counted) until the writer catches up."""
WAKE_AT_LINES = 1_000
"""Queued lines that wake the writer before its timer."""
IDLE_EXIT_S = 5.0
"""The writer thread ends after this long without a line (the next line starts one again)."""
CLOSE_TIMEOUT_S = 5.0
"""How long ``close`` waits, at most, for the writer (a stuck disk or stderr cannot hold the gateway's exit)."""
WARN_EVERY_S = 60.0
"""A failing write or rotation, or dropped lines, are said in the gateway's log at most this often."""
FILE_MODE = 0o600
DIR_MODE = 0o700


def level_of(status: int) -> str:
    if status >= 500 or status == 0:
        return "error"
    if status >= 400:
        return "warning"
    return "info"


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds, formatted once per second and completed per line."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def format(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._text}.{int((now - second) * 1000):03d}Z"


def log_line(info: CallInfo, time_text: str) -> dict[str, Any]:
    """The record of one request (fields that are None are written as null: every line has the same keys)."""
    return {
        "time": time_text,
        "level": level_of(info.status),
        "trace_id": info.trace_id,
        "span_id": info.span_id,
        "request_id": info.request_id,
        "account_id": info.account_id,
        "key_id": info.key_id,
        "method": info.method,
        "path": info.path,
        "protocol": info.protocol,
        "model": info.model,
        "version": info.version,
        "operation": info.operation,
        "status": info.status,
        "error_type": info.error_type,
        "iu": info.iu,
        "cost": info.cost,
        "currency": info.currency,
        "tokens_in": info.tokens_in,
        "tokens_out": info.tokens_out,
        "latency_ms": round(info.duration_s * 1000, 3),
    }


class _Warner:
    """Says a message in the gateway's log at most once every ``WARN_EVERY_S`` (called from the writer thread)."""

    def __init__(self) -> None:
        self._said_at = -WARN_EVERY_S

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self._said_at >= WARN_EVERY_S:
            self._said_at = now
            log.warning("%s", message)


class RotatingFile:
    """``path`` opened for appending (mode 0600 in a 0700 folder), rotated when a write would take it past
    ``max_bytes``: ``path`` -> ``path.1`` -> ... -> ``path.N`` (``backups`` = N; 0 keeps no copy, the file starts
    over). Lines are never split across two files. Shared safely between processes (see the module's docstring);
    used by one thread at a time."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = -1
        self._inode = (0, 0)
        self._warn = _Warner()
        self._open()

    def _open(self) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # a folder made by someone else keeps its mode
            os.chmod(folder, DIR_MODE)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        found = os.fstat(fd)
        self._fd, self._inode = fd, (found.st_dev, found.st_ino)

    def _reopen(self) -> int:
        """Open the file at the path again; its size."""
        self.close()
        self._open()
        return os.fstat(self._fd).st_size

    def _size_at_path(self) -> int:
        """The size of the file at ``path``, opened again first when it is not the one open (moved, deleted or
        rotated by another process) or none is (the last open failed)."""
        if self._fd < 0:
            return self._reopen()
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return self._reopen()
        if (found.st_dev, found.st_ino) != self._inode:
            return self._reopen()
        return found.st_size

    def write_lines(self, lines: list[bytes]) -> None:
        size = self._size_at_path()
        chunk: list[bytes] = []
        for line in lines:
            if size and size + len(line) > self.max_bytes:
                self._write(chunk)
                chunk = []
                size = self._rotate()
            chunk.append(line)
            size += len(line)
        self._write(chunk)

    def _write(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        view = memoryview(b"".join(chunk))
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _rotate(self) -> int:
        """Rotate the file if it is still this writer's (else another process just did); the size of the file
        then at the path, which is open whatever happened."""
        try:
            with self._folder_locked():
                found = os.stat(self.path)
                if (found.st_dev, found.st_ino) == self._inode:
                    self._shift()
        except OSError as exc:  # the file gone, or it cannot be moved: write on to the file at the path
            self._warn(f"the request log {self.path} could not be rotated ({exc}); it goes on unrotated")
        finally:
            size = self._reopen()
        return size

    def _shift(self) -> None:
        if self.backups <= 0:
            os.truncate(self.path, 0)
            return
        for index in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._backup(index), self._backup(index + 1))
        os.replace(self.path, self._backup(1))

    def _backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    @contextlib.contextmanager
    def _folder_locked(self) -> Iterator[None]:
        """An exclusive ``flock`` on the log's folder: one rotation at a time among the processes sharing it."""
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # and with it the lock

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __del__(self) -> None:  # a gateway built and dropped (tests build many) leaves no open descriptor
        self.close()


class RequestLog:
    """The request observer that writes the log (see the module's docstring)."""

    def __init__(
        self, file: RotatingFile | None, stderr: BinaryIO | None = None, max_pending: int = MAX_PENDING_LINES
    ) -> None:
        self.file = file
        self.stderr = stderr
        self.max_pending = max_pending
        self.dropped = 0
        """Lines dropped: the queue was full, a write failed, or the log was already closed."""
        self._pending: deque[bytes] = deque()
        self._clock = _Clock()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._thread_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._dropped_said = 0
        self._warn = _Warner()

    def start(self, info: CallInfo, scope: MutableMapping[str, Any]) -> None:
        return None

    def finish(self, info: CallInfo) -> None:
        """Queue the line of ``info``: on the event loop, so no system call and no lock."""
        pending = self._pending
        if len(pending) >= self.max_pending or self._closed:
            self.dropped += 1
            return
        pending.append(orjson.dumps(log_line(info, self._clock.format(time.time())), option=orjson.OPT_APPEND_NEWLINE))
        if self._thread is None:
            self._start()
        elif len(pending) >= WAKE_AT_LINES:
            self._wake.set()

    def _start(self) -> None:
        with self._thread_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="request log", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            closing = self._closed
            if not closing:
                self._wake.wait(FLUSH_AFTER_S)
                self._wake.clear()
            if self._pending:
                self.flush()
                idle_since = time.monotonic()
            if closing or (time.monotonic() - idle_since >= IDLE_EXIT_S and self._retire()):
                return

    def _retire(self) -> bool:
        """End the idle writer, unless a line came in meanwhile (``finish`` starts a writer when it sees none)."""
        with self._thread_lock:
            self._thread = None
            if self._pending and not self._closed:
                self._thread = threading.current_thread()
                return False
            return True

    def flush(self) -> None:
        """Write the queued lines now, in the calling thread (the writer, ``close``, a benchmark)."""
        with self._write_lock:
            pending = self._pending
            lines = [pending.popleft() for _ in range(len(pending))]
            if lines:
                self._write(lines)
            if self.dropped != self._dropped_said:
                self._warn(f"{self.dropped - self._dropped_said} request log lines were dropped")
                self._dropped_said = self.dropped

    def _write(self, lines: list[bytes]) -> None:
        if self.file is not None:
            try:
                self.file.write_lines(lines)
            except OSError as exc:  # a full disk must not fail requests: say so, drop the lines
                self.dropped += len(lines)
                self._warn(f"the request log could not be written ({exc})")
        if self.stderr is not None:
            try:
                self.stderr.write(b"".join(lines))
                self.stderr.flush()
            except (OSError, ValueError):  # a closed or broken stderr: the file has the lines
                pass

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued and close the file, waiting ``timeout_s`` at most for the writer (the gateway's
        shutdown). Lines that come later are dropped."""
        with self._thread_lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():  # stuck on the disk or on stderr: the process ends without those lines
                log.warning("the request log's writer did not finish within %g s", timeout_s)
                return
        self.flush()
        if self.file is not None:
            self.file.close()


def request_log(logs_dir: Path, max_bytes: int, backups: int, to_stderr: bool = False) -> RequestLog:
    """The gateway's request log under ``logs_dir`` (closed by ``Observability.close``, else at the process's
    exit)."""
    made = RequestLog(RotatingFile(logs_dir / LOG_NAME, max_bytes, backups), sys.stderr.buffer if to_stderr else None)
    ref = weakref.ref(made)

    def at_exit() -> None:
        found = ref()
        if found is not None:
            found.close()

    atexit.register(at_exit)
    return made
