"""The generated Envoy bootstrap: Envoy accepts it, and it behaves as docs/scale-out.md says in front of small
stand-in upstreams (plain HTTP servers in threads; the real gateways are in tests/e2e/test_cluster.py): a call
reaches a live replica after another died, a request that reached a replica is never sent again, SSE passes
unbuffered."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from modelmarket.cluster.engine import EngineUnavailable, free_port
from modelmarket.cluster.envoy import EnvoyPorts, envoy_binary, envoy_proxy, write_bootstrap


@pytest.fixture(scope="module")
def envoy_bin() -> Path:
    try:
        return envoy_binary()
    except EngineUnavailable as exc:
        pytest.skip(str(exc))


class Upstream:
    """A stand-in gateway: ready on /v2/health/ready; ``mode`` says what it does with any other request."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/v2/health/ready":
                    self._answer(b"{}")
                    return
                upstream.serve(self)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                upstream.serve(self)

            def _answer(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.calls += 1
        if self.mode == "reset":  # got the request, then died before answering: a reset after the request
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()
            handler.close_connection = True
            return
        if self.mode == "sse":
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            _chunk(handler, b"data: first\n\n")
            self.release.wait(10)  # the second event only after the client saw the first: no buffering
            _chunk(handler, b"data: second\n\n")
            _chunk(handler, b"")
            return
        body = b'{"ok": true}'
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


@pytest.fixture()
def front(tmp_path: Path, envoy_bin: Path) -> Iterator[object]:
    started: list[object] = []

    def start(replica_ports: list[int]) -> str:
        ports = EnvoyPorts(free_port(), free_port())
        config = write_bootstrap(tmp_path / f"envoy-{ports.listen}.json", ports, replica_ports)
        proxy = envoy_proxy(config, tmp_path / f"envoy-{ports.listen}.log", ports.admin).start()
        started.append(proxy)
        return f"http://127.0.0.1:{ports.listen}"

    yield start
    for proxy in started:
        proxy.stop()  # type: ignore[attr-defined]


def test_envoy_accepts_the_generated_bootstrap(tmp_path: Path, envoy_bin: Path) -> None:
    config = write_bootstrap(tmp_path / "envoy.json", EnvoyPorts(free_port(), free_port()), [free_port(), free_port()])
    proc = subprocess.run(
        [str(envoy_bin), "--mode", "validate", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout + proc.stderr


def test_calls_reach_the_live_replica_after_one_died(front) -> None:  # type: ignore[no-untyped-def]
    live, doomed = Upstream("ok"), Upstream("ok")
    url = front([doomed.port, live.port])
    doomed.close()  # gone without a word: connections to it are refused
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            statuses = [http.post("/v2/models/m/infer", json={}).status_code for _ in range(20)]
    finally:
        live.close()
    assert statuses == [200] * 20
    assert live.calls == 20


def test_a_request_that_reached_a_replica_is_never_sent_again(front) -> None:  # type: ignore[no-untyped-def]
    """The replica read the request and reset the connection: it may have run the model, so Envoy must answer
    the error rather than send the call to a replica again (it would run, and be billed, twice)."""
    resetter = Upstream("reset")
    url = front([resetter.port])
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            r = http.post("/v2/models/m/infer", json={"x": 1})
    finally:
        resetter.close()
    assert r.status_code == 503
    assert resetter.calls == 1


def test_server_sent_events_pass_unbuffered(front) -> None:  # type: ignore[no-untyped-def]
    streamer = Upstream("sse")
    url = front([streamer.port])
    seen: list[str] = []
    try:
        with httpx.Client(base_url=url, timeout=15) as http, http.stream("GET", "/v1/chat/completions") as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    seen.append(line)
                    streamer.release.set()  # the first event arrived while the upstream still held the second
    finally:
        streamer.release.set()
        streamer.close()
    assert seen == ["data: first", "data: second"]
