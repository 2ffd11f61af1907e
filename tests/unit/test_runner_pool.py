"""RunnerPool against a tiny real HTTP/1.1 server on a Unix socket: every way an answer can be framed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from modelmarket.runtime.pool import RunnerPool, RunnerTimeout, RunnerUnavailable, probe_ready

BIG = b"x" * 5000


def _answer(path: str) -> tuple[bytes, bool]:
    """The raw answer for ``path`` and whether the server closes the connection after it."""
    if path == "/cl":
        return b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}', False
    if path == "/chunked":
        body = b"4;ext=1\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: t\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body, False
    if path == "/big-chunked":
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n" + BIG + b"\r\n0\r\n\r\n", False
    if path == "/big-cl":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + BIG, False
    if path == "/eof":
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", True
    if path == "/gzip":
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", False
    if path == "/close":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True  # answers, then drops the keep-alive
    if path == "/v2/health/ready":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False


class TinyServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections = 0
        self.hang = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> TinyServer:
        self._server = await asyncio.start_unix_server(self._handle, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                path = lines[0].split(" ")[1]
                length = next((int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length")), 0)
                await reader.readexactly(length)
                if path == "/slow":
                    await self.hang.wait()
                answer, close = _answer(path)
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


def run(tmp_path: Path, scenario: Callable[[TinyServer, RunnerPool], Awaitable[None]], **pool_args: object) -> None:
    async def main() -> None:
        async with TinyServer(tmp_path / "runner.sock") as server:
            pool = RunnerPool(str(server.path), 4, 2.0, **pool_args)  # type: ignore[arg-type]
            try:
                await scenario(server, pool)
            finally:
                await pool.close()

    asyncio.run(main())


def test_content_length_answers_reuse_one_connection(tmp_path: Path) -> None:
    async def scenario(server: TinyServer, pool: RunnerPool) -> None:
        for _ in range(3):
            r = await pool.request("POST", "/cl", b"{}", [(b"Content-Type", b"application/json")])
            assert (r.status, r.body, r.headers[b"content-type"]) == (200, b'{"a":1}', b"application/json")
        assert server.connections == 1

    run(tmp_path, scenario)


def test_a_chunked_answer_is_read_whole_and_the_connection_stays_usable(tmp_path: Path) -> None:
    async def scenario(server: TinyServer, pool: RunnerPool) -> None:
        r = await pool.request("GET", "/chunked")
        assert r.status == 200 and r.body == b"Wikipedia in \r\n\r\nchunks."
        assert b"transfer-encoding" not in r.headers  # the body handed on is no longer chunked
        r2 = await pool.request("GET", "/cl")  # the same connection, positioned right after the last chunk
        assert r2.body == b'{"a":1}'
        assert server.connections == 1

    run(tmp_path, scenario)


def test_a_length_less_answer_is_read_to_eof_and_its_connection_not_reused(tmp_path: Path) -> None:
    async def scenario(server: TinyServer, pool: RunnerPool) -> None:
        r = await pool.request("GET", "/eof")
        assert r.status == 200 and r.body == b"until the end"
        assert (await pool.request("GET", "/cl")).body == b'{"a":1}'
        assert server.connections == 2

    run(tmp_path, scenario)


@pytest.mark.parametrize("path", ["/big-chunked", "/big-cl"])
def test_an_answer_over_the_limit_is_refused(tmp_path: Path, path: str) -> None:
    async def scenario(server: TinyServer, pool: RunnerPool) -> None:
        with pytest.raises(RunnerUnavailable, match="larger than the limit of 4096 bytes"):
            await pool.request("GET", path)
        assert (await pool.request("GET", "/cl")).status == 200  # on a fresh connection
        assert server.connections == 2

    run(tmp_path, scenario, max_response_bytes=4096)


def test_an_unsupported_transfer_encoding_is_refused_clearly(tmp_path: Path) -> None:
    async def scenario(server: TinyServer, pool: RunnerPool) -> None:
        with pytest.raises(RunnerUnavailable, match="unsupported Transfer-Encoding"):
            await pool.request("GET", "/gzip")

    run(tmp_path, scenario)


def test_a_connection_the_runner_dropped_is_retried_once_on_a_fresh_one(tmp_path: Path) -> None:
    async def scenario(server: TinyServer, pool: RunnerPool) -> None:
        # Said nothing about closing, then closed: the pooled connection is stale by the next call.
        assert (await pool.request("GET", "/close")).body == b"ok"
        await asyncio.sleep(0.05)
        assert (await pool.request("GET", "/cl")).status == 200
        assert server.connections == 2

    run(tmp_path, scenario)


def test_a_timeout_is_its_own_error_and_reported_to_the_owner(tmp_path: Path) -> None:
    timeouts: list[int] = []

    async def scenario(server: TinyServer, pool: RunnerPool) -> None:
        pool.timeout_s = 0.2
        with pytest.raises(RunnerTimeout, match=r"did not answer within 0.2s"):
            await pool.request("POST", "/slow", b"x")
        assert timeouts == [1]
        server.hang.set()
        assert (await pool.request("GET", "/cl")).status == 200  # the timed-out connection was not reused

    run(tmp_path, scenario, on_timeout=lambda: timeouts.append(1))


def test_a_missing_runner_is_unavailable(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = RunnerPool(str(tmp_path / "nobody.sock"), 2, 1.0)
        with pytest.raises(RunnerUnavailable, match="cannot connect to the runner"):
            await pool.request("GET", "/cl")

    asyncio.run(scenario())


def test_probe_ready_is_true_only_for_a_prompt_200(tmp_path: Path) -> None:
    async def scenario(server: TinyServer, pool: RunnerPool) -> None:
        assert await probe_ready(str(server.path), 1.0) is True
        assert await probe_ready(str(tmp_path / "nobody.sock"), 1.0) is False

    run(tmp_path, scenario)

    async def silent() -> None:
        async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        server = await asyncio.start_unix_server(accept_and_say_nothing, str(tmp_path / "mute.sock"))
        try:
            assert await probe_ready(str(tmp_path / "mute.sock"), 0.2) is False
        finally:
            server.close()

    asyncio.run(silent())


def test_a_pool_over_tcp_reads_the_same_answers(tmp_path: Path) -> None:
    """For a runner started by hand and for benchmarks; the supervisor's runners are on Unix sockets only."""

    async def scenario() -> None:
        tiny = TinyServer(tmp_path / "unused")
        server = await asyncio.start_server(tiny._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = RunnerPool.over_tcp("127.0.0.1", port, 2, 2.0)
        try:
            assert (await pool.request("GET", "/chunked")).body == b"Wikipedia in \r\n\r\nchunks."
            assert (await pool.request("GET", "/cl")).body == b'{"a":1}'
            assert tiny.connections == 1
        finally:
            await pool.close()
            server.close()
        with pytest.raises(RunnerUnavailable, match=f"cannot connect to the server at 127.0.0.1:{port}"):
            await RunnerPool.over_tcp("127.0.0.1", port, 2, 2.0).request("GET", "/cl")

    asyncio.run(scenario())
