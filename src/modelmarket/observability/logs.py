"""The JSON request log: one line per request in ``MODELMARKET_HOME/logs/requests.log`` (rotated by size), and on
stderr when asked.

A line holds what identifies and measures the call (time, level, trace and span ids, request and account ids,
method, path, protocol, model, version, status, error type, IU, cost, tokens, latency) and nothing a caller sent:
never a key, a header, a query string, an input or an output. It is built only from the request's
:class:`~modelmarket.observability.context.CallInfo`, which holds none of those.

Writing never waits on the disk in the request's path: ``finish`` appends the encoded line to a bounded buffer
and, on an event loop, schedules one flush ``FLUSH_AFTER_S`` later (so a burst of requests costs one ``write``);
outside an event loop it writes at once. A gateway killed with SIGKILL loses at most that last fraction of a
second of lines; a normal exit writes them (``atexit``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import sys
import threading
import time
import weakref
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from modelmarket.observability.context import CallInfo

LOG_NAME = "requests.log"
FLUSH_AFTER_S = 0.2
"""Longest time a line waits in memory before it is written."""
MAX_PENDING_LINES = 10_000
"""Lines buffered at most; a full buffer is written at once, in the request's path (disk slower than traffic)."""
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


class RotatingFile:
    """``path`` opened for appending (mode 0600 in a 0700 folder), rotated when a write would take it past
    ``max_bytes``: ``path`` -> ``path.1`` -> ... -> ``path.N`` (``backups`` = N; 0 keeps no copy, the file starts
    over). Lines are never split across two files."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # a folder made by someone else keeps its mode
            os.chmod(path.parent, DIR_MODE)
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        self._size = os.fstat(self._fd).st_size

    def write_lines(self, lines: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = self._size
        for line in lines:
            if size and size + len(line) > self.max_bytes:
                self._write(chunk)
                chunk = []
                self._rotate()
                size = 0
            chunk.append(line)
            size += len(line)
        self._write(chunk)

    def _write(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        data = b"".join(chunk)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        if self.backups > 0:
            for index in range(self.backups - 1, 0, -1):
                source = self.path.with_name(f"{self.path.name}.{index}")
                if source.exists():
                    os.replace(source, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.truncate(self.path, 0)
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # a gateway built and dropped (tests build many) leaves no open descriptor
        self.close()


class RequestLog:
    """The request observer that writes the log (see the module's docstring)."""

    def __init__(self, file: RotatingFile | None, stderr: BinaryIO | None = None) -> None:
        self.file = file
        self.stderr = stderr
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._scheduled = False
        self._clock = _Clock()
        self._closed = False

    def start(self, info: CallInfo, scope: MutableMapping[str, Any]) -> None:
        return None

    def finish(self, info: CallInfo) -> None:
        line = orjson.dumps(log_line(info, self._clock.format(time.time())), option=orjson.OPT_APPEND_NEWLINE)
        self._pending.append(line)
        if len(self._pending) >= MAX_PENDING_LINES:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a test, a CLI): write now
                self.flush()
                return
            self._scheduled = True
            loop.call_later(FLUSH_AFTER_S, self.flush)

    def flush(self) -> None:
        """Write the buffered lines (the event loop's timer, a full buffer, or the process's exit)."""
        with self._lock:
            self._scheduled = False
            lines, self._pending = self._pending, []
            if not lines or self._closed:
                return
            try:
                if self.file is not None:
                    self.file.write_lines(lines)
                if self.stderr is not None:
                    self.stderr.write(b"".join(lines))
                    self.stderr.flush()
            except OSError as exc:  # a full disk must not fail requests: say so once per flush, drop the lines
                print(f"modelmarket: the request log could not be written ({exc})", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closed = True
            if self.file is not None:
                self.file.close()


def request_log(logs_dir: Path, max_bytes: int, backups: int, to_stderr: bool = False) -> RequestLog:
    """The gateway's request log under ``logs_dir`` (written out at the process's exit)."""
    log = RequestLog(RotatingFile(logs_dir / LOG_NAME, max_bytes, backups), sys.stderr.buffer if to_stderr else None)
    ref = weakref.ref(log)

    def at_exit() -> None:
        found = ref()
        if found is not None:
            found.close()

    atexit.register(at_exit)
    return log
