"""Pooled HTTP/1.1 keep-alive connections from the gateway to one runner, over the runner's Unix socket.

A deliberately small client (about ten times cheaper per call than httpx), so it must cover the edge cases a
library would: an answer may carry ``Content-Length``, come ``Transfer-Encoding: chunked``, or carry neither and
end when the peer closes (then the connection cannot be reused). Every answer is bounded by
``max_response_bytes``. Connections are reused (LIFO), bounded by ``max_connections``; a request that finds its
reused connection closed by the peer before any answer byte is retried once on a fresh connection.

A call that times out leaves the runner busy with work nobody waits for; ``on_timeout`` lets the supervisor
recycle that runner so the next call does not queue behind the abandoned one.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from modelmarket.core.errors import NotReady

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
STREAM_LIMIT_BYTES = 1024 * 1024
"""Buffer limit of each connection's reader: also the longest answer head, chunk-size line or trailer accepted."""
TRAILER_LIMIT_BYTES = 64 * 1024
READ_CHUNK_BYTES = 256 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


class RunnerUnavailable(NotReady):
    """The runner cannot be reached, broke off, or answered something this client will not read."""


class RunnerTimeout(RunnerUnavailable):
    """The runner took longer than the request timeout to answer."""


@dataclass(slots=True)
class RunnerResponse:
    status: int
    headers: dict[bytes, bytes]
    """Lower-cased names. ``transfer-encoding`` is dropped: ``body`` is already de-chunked."""
    body: bytes


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class _StaleConnection(Exception):
    pass


class _BadAnswer(Exception):
    """The answer cannot be read (malformed, too large, unsupported framing): the connection is unusable."""


def parse_head(head: bytes) -> tuple[int, bytes, dict[bytes, bytes]]:
    """(status, HTTP version, lower-cased headers) of an answer head ending in CRLF CRLF."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise _BadAnswer(f"malformed status line {lines[0][:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[0], headers


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    """A ``Transfer-Encoding: chunked`` body (RFC 9112 section 7.1), at most ``limit`` bytes once de-chunked."""
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size_text = size_line[:-2].split(b";", 1)[0].strip()  # chunk extensions are ignored
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BadAnswer(f"malformed chunk size {size_text[:20]!r}") from None
        if size < 0:
            raise _BadAnswer(f"malformed chunk size {size_text[:20]!r}")
        if size == 0:
            break
        total += size
        if total > limit:
            raise _BadAnswer(f"answer is larger than the limit of {limit} bytes")
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise _BadAnswer("a chunk is not followed by CRLF")
    trailer_bytes = 0
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers: read and dropped, bounded
        trailer_bytes += len(line)
        if trailer_bytes > TRAILER_LIMIT_BYTES:
            raise _BadAnswer("answer trailers are too large")
    return b"".join(chunks)


async def _read_to_eof(reader: asyncio.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while chunk := await reader.read(READ_CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise _BadAnswer(f"answer is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(
    reader: asyncio.StreamReader, status: int, headers: dict[bytes, bytes], limit: int
) -> tuple[bytes, bool]:
    """The answer body and whether the connection may be reused after it."""
    if status in _NO_BODY_STATUSES or 100 <= status < 200:
        return b"", True
    coding = headers.pop(b"transfer-encoding", None)
    if coding is not None:
        if coding.lower() != b"chunked":
            raise _BadAnswer(f"unsupported Transfer-Encoding {coding[:40]!r} (only chunked)")
        return await _read_chunked(reader, limit), True
    raw_length = headers.get(b"content-length")
    if raw_length is None:
        return await _read_to_eof(reader, limit), False  # the end of the body is the end of the connection
    if not raw_length.isdigit():
        raise _BadAnswer(f"malformed Content-Length {raw_length[:40]!r}")
    length = int(raw_length)
    if length > limit:
        raise _BadAnswer(f"answer of {length} bytes is larger than the limit of {limit} bytes")
    return (await reader.readexactly(length) if length else b""), True


async def open_unix_nofollow(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the Unix socket at ``path`` itself, never through a symlink: a sandboxed runner can write in
    its socket folder, and a link planted there must not send the gateway's calls to another socket on the
    host. The path is opened without following links, checked to be a socket, and connected through the fd."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ConnectionRefusedError(f"{path} is not a socket")
        return await asyncio.open_unix_connection(f"/proc/self/fd/{fd}", limit=STREAM_LIMIT_BYTES)
    finally:
        os.close(fd)


class RunnerPool:
    def __init__(
        self,
        socket_path: str,
        max_connections: int,
        timeout_s: float,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.on_timeout = on_timeout
        self._tcp: tuple[str, int] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._host = b"runner"
        self._where = f"the runner at {socket_path}"
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    @classmethod
    def over_tcp(cls, host: str, port: int, max_connections: int, timeout_s: float, **options: Any) -> RunnerPool:
        """A pool to an HTTP server on TCP: a runner started by hand, or the gateway itself (benchmarks).
        The supervisor's runners listen on Unix sockets only."""
        pool = cls("", max_connections, timeout_s, **options)
        pool._tcp = (host, port)
        pool._where = f"the server at {host}:{port}"
        return pool

    @classmethod
    def for_url(cls, base_url: str, max_connections: int, timeout_s: float, **options: Any) -> tuple[RunnerPool, str]:
        """A pool to the server of ``base_url`` (http or https) and the URL's path prefix (``/v1``)."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url!r} is not an http(s) URL with a host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        pool = cls.over_tcp(parts.hostname, port, max_connections, timeout_s, **options)
        if parts.scheme == "https":
            pool._ssl = ssl.create_default_context()
        default_port = port == (443 if parts.scheme == "https" else 80)
        pool._host = (parts.hostname if default_port else f"{parts.hostname}:{port}").encode("idna")
        pool._where = f"the server at {parts.scheme}://{parts.hostname}:{port}"
        return pool, parts.path.rstrip("/")

    async def _open(self) -> _Conn:
        if self._tcp is not None:
            connecting = asyncio.open_connection(*self._tcp, limit=STREAM_LIMIT_BYTES, ssl=self._ssl)
        else:
            connecting = open_unix_nofollow(self.socket_path)
        try:
            reader, writer = await asyncio.wait_for(connecting, self.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise RunnerUnavailable(f"cannot connect to {self._where}: {exc}") from None
        return _Conn(reader, writer)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> RunnerResponse:
        if self._closed:
            raise RunnerUnavailable("runner pool is closed")
        payload = self._payload(method, path, body, headers)
        async with self._slots:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._open()
            try:
                response, reusable = await self._roundtrip(conn, payload, reused)
            except _StaleConnection:
                conn.close()
                conn = await self._open()
                try:
                    response, reusable = await self._roundtrip(conn, payload, False)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                conn.close()
                raise
            if reusable and not self._closed:
                self._idle.append(conn)
            else:
                conn.close()
            return response

    def _payload(self, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]] | None) -> bytes:
        head = [
            f"{method} {path} HTTP/1.1\r\nHost: ".encode(),
            self._host,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
        for name, value in headers or ():
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        return b"".join(head) + body

    async def stream(
        self, method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> StreamedAnswer:
        """Send a request and return once the answer's head has arrived; its body is read as it comes
        (``StreamedAnswer.chunks``). The caller must ``close()`` it (a connection read to its end goes back to
        the pool; one abandoned midway is closed, which tells a runner to stop). ``timeout_s`` bounds the wait
        for the head and for each piece of the body, not the whole stream."""
        if self._closed:
            raise RunnerUnavailable("runner pool is closed")
        payload = self._payload(method, path, body, headers)
        await self._slots.acquire()
        conn: _Conn | None = None
        try:
            conn = await self._open()
            async with asyncio.timeout(self.timeout_s):
                conn.writer.write(payload)
                head = await conn.reader.readuntil(b"\r\n\r\n")
            status, _, answer_headers = parse_head(head)
        except TimeoutError:
            self._release(conn, False)
            raise RunnerTimeout(f"{self._where} did not answer within {self.timeout_s:g}s") from None
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            self._release(conn, False)
            raise RunnerUnavailable(f"{self._where} closed the connection") from None
        except (_BadAnswer, asyncio.LimitOverrunError) as exc:
            self._release(conn, False)
            raise RunnerUnavailable(f"{self._where} answered something unreadable: {exc}") from None
        except BaseException:
            self._release(conn, False)
            raise
        return StreamedAnswer(self, conn, status, answer_headers)

    def _release(self, conn: _Conn | None, reusable: bool) -> None:
        if conn is not None:
            if reusable and not self._closed:
                self._idle.append(conn)
            else:
                conn.close()
        self._slots.release()

    async def _roundtrip(self, conn: _Conn, payload: bytes, reused: bool) -> tuple[RunnerResponse, bool]:
        where = self._where
        try:
            async with asyncio.timeout(self.timeout_s):
                conn.writer.write(payload)
                try:
                    head = await conn.reader.readuntil(b"\r\n\r\n")
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    if reused:
                        raise _StaleConnection() from exc
                    raise RunnerUnavailable(f"{where} closed the connection") from None
                status, version, headers = parse_head(head)
                body, reusable = await read_body(conn.reader, status, headers, self.max_response_bytes)
        except TimeoutError:
            if self.on_timeout is not None:
                self.on_timeout()
            raise RunnerTimeout(f"{where} did not answer within {self.timeout_s:g}s") from None
        except (ConnectionError, asyncio.IncompleteReadError):
            raise RunnerUnavailable(f"{where} broke off its answer") from None
        except (_BadAnswer, asyncio.LimitOverrunError) as exc:
            raise RunnerUnavailable(f"{where} answered something unreadable: {exc}") from None
        connection = headers.get(b"connection", b"").lower()
        if connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive"):
            reusable = False
        return RunnerResponse(status, headers, body), reusable

    def drop_idle(self) -> None:
        """Close the idle connections (their runner was replaced); calls in flight keep theirs."""
        while self._idle:
            self._idle.pop().close()

    async def close(self) -> None:
        self._closed = True
        self.drop_idle()


class StreamedAnswer:
    """An answer whose body is read piece by piece (see ``RunnerPool.stream``)."""

    on_close: Callable[[], None] | None = None
    """Called once when the stream is closed (the supervisor counts a replica busy until then)."""

    def __init__(self, pool: RunnerPool, conn: _Conn, status: int, headers: dict[bytes, bytes]) -> None:
        self.pool = pool
        self.status = status
        self.headers = headers
        self._conn: _Conn | None = conn
        self._done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (de-chunked), at most the pool's ``max_response_bytes`` in all."""
        conn = self._conn
        if conn is None:
            return
        reader, limit, timeout = conn.reader, self.pool.max_response_bytes, self.pool.timeout_s
        coding = self.headers.pop(b"transfer-encoding", None)
        length = self.headers.get(b"content-length")
        total = 0
        try:
            if self.status in _NO_BODY_STATUSES or 100 <= self.status < 200:
                self._done = True
                return
            if coding is not None:
                if coding.lower() != b"chunked":
                    raise _BadAnswer(f"unsupported Transfer-Encoding {coding[:40]!r} (only chunked)")
                while True:
                    async with asyncio.timeout(timeout):
                        size_line = await reader.readuntil(b"\r\n")
                        size = int(size_line[:-2].split(b";", 1)[0].strip() or b"x", 16)
                        if size == 0:
                            while await reader.readuntil(b"\r\n") != b"\r\n":
                                pass
                            self._done = True
                            return
                        total += size
                        if total > limit:
                            raise _BadAnswer(f"answer is larger than the limit of {limit} bytes")
                        data = await reader.readexactly(size)
                        if await reader.readexactly(2) != b"\r\n":
                            raise _BadAnswer("a chunk is not followed by CRLF")
                    yield data
            elif length is not None:
                if not length.isdigit() or int(length) > limit:
                    raise _BadAnswer(f"unusable Content-Length {length[:40]!r}")
                remaining = int(length)
                while remaining:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(min(remaining, READ_CHUNK_BYTES))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    remaining -= len(data)
                    yield data
                self._done = True
            else:
                while True:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(READ_CHUNK_BYTES)
                    if not data:
                        return  # ends with the connection: not reusable
                    total += len(data)
                    if total > limit:
                        raise _BadAnswer(f"answer is larger than the limit of {limit} bytes")
                    yield data
        except TimeoutError:
            raise RunnerTimeout(f"{self.pool._where} stopped sending for {timeout:g}s") from None
        except (ConnectionError, asyncio.IncompleteReadError):
            raise RunnerUnavailable(f"{self.pool._where} broke off its answer") from None
        except (_BadAnswer, asyncio.LimitOverrunError, ValueError) as exc:
            raise RunnerUnavailable(f"{self.pool._where} answered something unreadable: {exc}") from None

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    def close(self) -> None:
        """Close the connection and free its pool slot (closing it midway tells a runner to stop)."""
        conn, self._conn = self._conn, None
        if conn is not None:  # never back to the idle list: streams open their own connections (see ``stream``)
            self.pool._release(conn, False)
            if self.on_close is not None:
                self.on_close()


async def probe_ready(socket_path: str, timeout_s: float) -> bool:
    """Whether the runner at ``socket_path`` answers ``GET /v2/health/ready`` with 200 within ``timeout_s``.

    A fresh connection, outside the pool: a probe must not wait for a pool slot, nor leave a connection that
    answered late in the pool.
    """
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await open_unix_nofollow(socket_path)
            try:
                writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: runner\r\nConnection: close\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                status, _, _ = parse_head(head)
                return status == 200
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, _BadAnswer):
        return False
