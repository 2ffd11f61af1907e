"""The gateway's HTTP guard on a real uvicorn server (httptools, uvloop) on loopback, probed with raw sockets.

The server runs in a thread with the gateway's uvicorn options (``gateway_http_options``) and a trivial app that
reads the body the way the gateway does (``read_body``) and records what it saw.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import orjson
import uvicorn

from modelmarket.gateway.http_guard import gateway_http_options
from modelmarket.runtime.asgi import BodyIncomplete, Receive, Scope, Send, read_body, respond, uvicorn_config
from modelmarket.settings import Settings

LIMIT = 16_384
SHORT_S = 0.5  # the test's header and body timeouts
CLIENT_TIMEOUT_S = 10.0  # bound on every blocking socket call in this file
START_TIMEOUT_S = 10.0


@dataclass
class RecordingApp:
    """Answers 200 ``{"path", "body_bytes"}`` after reading the whole body; records incomplete bodies. ``/early``
    answers 401 without reading the body; ``/slow`` takes SHORT_S before it answers."""

    bodies: list[int] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == "/early":  # answers without reading the body, as the gateway does for a bad key
            await respond(send, 401, orjson.dumps({"error": "no key"}))
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(SHORT_S)
        try:
            body = await read_body(receive, 1 << 24)
        except BodyIncomplete as exc:
            self.incomplete.append(exc.message)
            await respond(send, 400, orjson.dumps({"error": exc.message}))
            return
        self.bodies.append(len(body))
        await respond(send, 200, orjson.dumps({"path": scope["path"], "body_bytes": len(body)}))


@contextmanager
def guarded_server(timeout_s: float = SHORT_S, keep_alive_s: float = 5.0) -> Iterator[tuple[int, RecordingApp]]:
    settings = Settings(
        max_header_bytes=LIMIT, header_timeout_s=timeout_s, body_timeout_s=timeout_s, keep_alive_s=keep_alive_s
    )
    app = RecordingApp()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    server = uvicorn.Server(uvicorn_config(app, **gateway_http_options(settings)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.01)
        yield listener.getsockname()[1], app
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        listener.close()
    assert not thread.is_alive(), "the test server did not stop"


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        value = orjson.loads(self.body)
        assert isinstance(value, dict)
        return value


class Reader:
    """Reads HTTP/1.1 answers with a Content-Length off a raw socket (enough for this server)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65_536)
        self.buffer += chunk
        return bool(chunk)

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed before an answer; got {self.buffer!r}"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            assert self._fill(), "connection closed inside an answer's body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(int(status_line.split()[1]), headers, body)

    def closed(self) -> bool:
        """True once the server has closed its side (EOF, or a reset after its answer) with nothing more sent."""
        try:
            more = self._fill()
        except ConnectionResetError:
            return self.buffer == b""
        return not more and self.buffer == b""


def get(path: str = "/v2/health/live", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n" + extra + b"\r\n"


def head_of_exactly(size: int) -> bytes:
    """A GET whose request line and headers take exactly ``size`` bytes (a padding header makes up the rest)."""
    bare = get(extra=b"x-pad: \r\n")
    return get(extra=b"x-pad: " + b"p" * (size - len(bare)) + b"\r\n")


def eventually(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` holds within CLIENT_TIMEOUT_S (the server thread records what its app saw)."""
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def send_in_background(sock: socket.socket, data: bytes, pause_s: float = 0.0, piece: int = 65_536) -> threading.Thread:
    """Send ``data`` (in pieces, ``pause_s`` apart) from a thread, stopping quietly when the server hangs up."""

    def run() -> None:
        try:
            for start in range(0, len(data), piece):
                sock.sendall(data[start : start + piece])
                time.sleep(pause_s)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_one_megabyte_header_gets_431_and_the_connection_is_closed() -> None:
    with guarded_server() as (port, app), connect(port) as sock:
        sender = send_in_background(sock, get(extra=b"x-big: " + b"a" * (1 << 20) + b"\r\n"))
        answer = Reader(sock).answer()  # 431 comes from the byte count as it happens, never from a timer
        assert answer.status == 431
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["connection"] == "close"
        assert answer.json() == {"error": f"request line and headers are larger than the limit of {LIMIT} bytes"}
        sender.join(CLIENT_TIMEOUT_S)
        assert Reader(sock).closed()
        assert app.bodies == [], "the request never reached the app"


def test_a_head_at_the_limit_is_served_and_one_byte_more_is_refused() -> None:
    with guarded_server() as (port, app):
        with connect(port) as sock:
            sock.sendall(head_of_exactly(LIMIT))
            reader = Reader(sock)
            assert reader.answer().status == 200
            sock.sendall(get("/again"))  # the count starts over for the next request on the connection
            assert reader.answer().json() == {"path": "/again", "body_bytes": 0}
        with connect(port) as sock:
            sock.sendall(head_of_exactly(LIMIT + 1))
            reader = Reader(sock)
            assert reader.answer().status == 431
            assert reader.closed()
        assert app.bodies == [0, 0]


def test_big_bodies_and_pipelined_requests_are_not_mistaken_for_big_heads() -> None:
    body = b"b" * (1 << 20)
    post = b"POST /infer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: %d\r\n\r\n" % len(body)
    pipelined = [get(f"/p{i}") for i in range(1000)]  # 1000 requests in one write: more than LIMIT bytes
    assert len(b"".join(pipelined)) > 2 * LIMIT
    with guarded_server() as (port, _app), connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(post + body)
        assert reader.answer().json() == {"path": "/infer", "body_bytes": len(body)}
        sock.sendall(b"".join(pipelined))
        assert [reader.answer().json()["path"] for _ in pipelined] == [f"/p{i}" for i in range(1000)]


def test_a_half_sent_request_line_is_answered_408_and_closed_after_the_header_timeout() -> None:
    with guarded_server() as (port, app), connect(port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /slow HT")
        reader = Reader(sock)
        answer = reader.answer()
        assert time.monotonic() - started >= SHORT_S * 0.8
        assert answer.status == 408
        assert answer.json() == {"error": f"the request line and headers did not arrive within {SHORT_S:g} s"}
        assert reader.closed()
        assert app.bodies == []


def test_a_head_trickled_byte_by_byte_is_still_cut_off_at_the_header_timeout() -> None:
    head = get(extra=b"x-slow: " + b"s" * 200 + b"\r\n")  # 0.05 s a byte: ~13 s if it were let through
    with guarded_server() as (port, app), connect(port) as sock:
        sender = send_in_background(sock, head, pause_s=0.05, piece=1)
        reader = Reader(sock)
        assert reader.answer().status == 408
        assert reader.closed()
        sock.shutdown(socket.SHUT_RDWR)  # stops the sender at its next byte
        sender.join(CLIENT_TIMEOUT_S)
        assert app.bodies == []


def test_a_silent_connection_is_closed_after_the_header_timeout() -> None:
    with guarded_server() as (port, _app), connect(port) as sock:
        reader = Reader(sock)
        assert reader.answer().status == 408
        assert reader.closed()


def test_a_stalled_body_gets_408_and_the_app_never_acts_on_the_part_that_came() -> None:
    post = b"POST /infer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 1000\r\n\r\n" + b"0123456789"
    with guarded_server() as (port, app), connect(port) as sock:
        started = time.monotonic()
        sock.sendall(post)
        reader = Reader(sock)
        answer = reader.answer()
        assert time.monotonic() - started >= SHORT_S * 0.8
        assert answer.status == 408
        assert answer.json() == {"error": f"the request body did not arrive within {SHORT_S:g} s"}
        assert reader.closed()
        assert eventually(lambda: len(app.incomplete) == 1), "the app's read_body saw the connection end"
        assert app.incomplete == ["the request body ended after 10 bytes: the connection was closed"]
        assert app.bodies == []


def test_a_body_still_owed_after_an_early_answer_is_not_waited_for_past_the_body_timeout() -> None:
    post = b"POST /early HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 1000\r\n\r\n" + b"0123456789"
    with guarded_server() as (port, _app), connect(port) as sock:
        sock.sendall(post)
        reader = Reader(sock)
        assert reader.answer().status == 401
        assert reader.closed(), "closed after the body timeout, with no second answer"


def test_a_big_pipelined_head_does_not_cut_into_the_answer_being_written() -> None:
    with guarded_server() as (port, app), connect(port) as sock:
        sender = send_in_background(sock, get("/slow") + get(extra=b"x-big: " + b"a" * (1 << 20) + b"\r\n"))
        reader = Reader(sock)
        assert reader.answer().json() == {"path": "/slow", "body_bytes": 0}
        assert reader.closed(), "closed once the answer in progress was written; the big head was never parsed"
        sender.join(CLIENT_TIMEOUT_S)
        assert app.bodies == [0]


def test_idle_keep_alive_connections_close_after_the_keep_alive_setting() -> None:
    keep_alive_s = SHORT_S * 4
    with guarded_server(timeout_s=SHORT_S, keep_alive_s=keep_alive_s) as (port, _app), connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(get())
        assert reader.answer().status == 200
        time.sleep(SHORT_S * 1.2)  # idle past the header timeout: an idle connection is keep-alive's business
        sock.sendall(get("/second"))
        assert reader.answer().json() == {"path": "/second", "body_bytes": 0}
        started = time.monotonic()
        assert reader.closed(), "closed without an answer once idle for keep_alive_s"
        assert time.monotonic() - started >= keep_alive_s * 0.8


def test_a_normal_request_is_answered_while_fifty_stalled_bodies_are_open() -> None:
    post = b"POST /infer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 1000\r\n\r\n" + b"0123456789"
    with guarded_server(timeout_s=60.0) as (port, app), ExitStack() as stack:
        stalled = [stack.enter_context(connect(port)) for _ in range(50)]
        for sock in stalled:
            sock.sendall(post)
        with connect(port) as sock:
            sock.sendall(get("/normal"))
            assert Reader(sock).answer().json() == {"path": "/normal", "body_bytes": 0}
        for sock in stalled:  # still open, still waiting: nothing was answered on them
            sock.setblocking(False)
            try:
                data = sock.recv(1)
            except BlockingIOError:
                continue
            raise AssertionError(f"a stalled connection got {data!r}")
        for sock in stalled:
            sock.close()
        assert eventually(lambda: len(app.incomplete) == 50), "every abandoned body was refused, none acted upon"
        assert app.bodies == [0]
