"""Pooled HTTP/1.1 keep-alive connections from the gateway to one runner.

A deliberately small client: the peer is our own runner, which always answers with Content-Length. Connections
are reused (LIFO), bounded by ``max_connections``; a request that finds its reused connection closed by the
peer before any answer byte is retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from modelmarket.core.errors import NotReady


class RunnerUnavailable(NotReady):
    pass


@dataclass(slots=True)
class RunnerResponse:
    status: int
    headers: dict[bytes, bytes]
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


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


class RunnerPool:
    def __init__(self, host: str, port: int, max_connections: int, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False
        self._host_header = f"Host: {host}:{port}\r\n".encode()

    async def _open(self) -> _Conn:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=2**20), self.timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise RunnerUnavailable(f"cannot connect to runner at {self.host}:{self.port}: {exc}") from None
        return _Conn(reader, writer)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> RunnerResponse:
        if self._closed:
            raise RunnerUnavailable("runner pool is closed")
        head = [
            f"{method} {path} HTTP/1.1\r\n".encode(),
            self._host_header,
            b"Content-Length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
        for name, value in headers or ():
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        payload = b"".join(head) + body
        async with self._slots:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._open()
            try:
                response = await self._roundtrip(conn, payload, reused)
            except _StaleConnection:
                conn.close()
                conn = await self._open()
                try:
                    response = await self._roundtrip(conn, payload, False)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                conn.close()
                raise
            if response.headers.get(b"connection", b"").lower() == b"close" or self._closed:
                conn.close()
            else:
                self._idle.append(conn)
            return response

    async def _roundtrip(self, conn: _Conn, payload: bytes, reused: bool) -> RunnerResponse:
        where = f"runner at {self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.timeout_s):
                conn.writer.write(payload)
                try:
                    head = await conn.reader.readuntil(b"\r\n\r\n")
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    if reused:
                        raise _StaleConnection() from exc
                    raise RunnerUnavailable(f"{where} closed the connection") from None
                status, headers = _parse_head(head)
                length = int(headers.get(b"content-length", b"0"))
                try:
                    body = await conn.reader.readexactly(length) if length else b""
                except (ConnectionError, asyncio.IncompleteReadError):
                    raise RunnerUnavailable(f"{where} broke off its answer") from None
        except TimeoutError:
            raise RunnerUnavailable(f"{where} did not answer within {self.timeout_s}s") from None
        return RunnerResponse(status, headers, body)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
