"""The ModelRunner: one process that loads one model version through its Runtime and serves it over OIP v2.

Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/{m}[/versions/{v}]``,
``GET .../ready``, ``POST .../infer``. The model is loaded before the listening socket is even bound, so a
runner that answers ``/v2/health/ready`` is ready.

The supervisor starts it as ``python -m modelmarket.runtime.runner --spec FILE --socket PATH --parent-pid N``:
it listens on a Unix socket in a directory only the platform's user can enter, so the only way to a model is
through the gateway (its keys, its usage events). ``modelmarket runner`` (by hand, for calling a model directly)
may listen on loopback TCP instead.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import sys
from collections.abc import MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from modelmarket import __version__
from modelmarket.core import lifetime
from modelmarket.core.errors import InvalidInput
from modelmarket.observability.runner_spans import SPAN_HEADER, TRACEPARENT, RunnerSpans
from modelmarket.registry.serving import BatchingDecl
from modelmarket.runtime import oip
from modelmarket.runtime.asgi import BodyTooLarge, Receive, Scope, Send, header, read_body, respond, serve_asgi
from modelmarket.runtime.base import Embedder, ModelSpec, Runtime, TextGenerator
from modelmarket.runtime.batching import Batcher, spec_allows_batching
from modelmarket.runtime.openai_runner import PATHS as OPENAI_PATHS
from modelmarket.runtime.openai_runner import OpenAIRoutes
from modelmarket.runtime.plugins import load_runtime_class
from modelmarket.runtime.sandbox import MEMORY_LIMIT

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
LISTEN_BACKLOG = 1024
"""Connections the kernel queues for the runner; the gateway's pool opens at most runner_pool_size of them."""
EXIT_MODEL_LOAD_FAILED = 3
"""Exit status of a runner whose model failed to load: restarting cannot help, an operator must look."""
_PRIVATE_SOCKET_UMASK = 0o177

_OK = b"{}"
IHCL = b"inference-header-content-length"
USAGE_HEADER = b"x-modelmarket-usage"
"""``PROMPT,COMPLETION``: tokens an OIP call processed by the model's own tokenizer (a runtime that counts sets
``last_usage``); the gateway bills these instead of its own estimate."""


class RunnerApp:
    def __init__(
        self,
        runtime: Runtime,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        batching: BatchingDecl | None = None,
    ) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        self.max_request_bytes = max_request_bytes
        self._metadata = orjson.dumps(runtime.metadata())
        base = f"/v2/models/{self.spec.name}"
        self._model_paths = {base, f"{base}/versions/{self.spec.version}"}
        self.spans = RunnerSpans(self.spec.name, self.spec.version, self.spec.runtime, self.spec.sandbox)
        """This runner's side of a traced call (``observability/runner_spans.py``): its span goes back in a header."""
        self._openai = OpenAIRoutes(runtime, max_request_bytes)
        self._serialized = isinstance(runtime, TextGenerator | Embedder)
        self.batcher = None
        self._own_thread = ThreadPoolExecutor(1, "model") if runtime.provider_code and not self._serialized else None
        if batching is not None and not self._serialized and spec_allows_batching(self.spec.inputs, self.spec.outputs):
            name = f"{self.spec.name}@{self.spec.version}"
            self.batcher = Batcher(runtime.predict, batching.max_batch_size, batching.max_delay_ms, name=name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.endswith("/infer") and method == "POST":
            if path.removesuffix("/infer") in self._model_paths:
                if (traceparent := header(scope, TRACEPARENT)) is not None:
                    send = self._traced(traceparent, method, _route(path), send)
                await self._infer(scope, receive, send)
                return
        elif method == "POST" and path in OPENAI_PATHS:
            if (traceparent := header(scope, TRACEPARENT)) is not None:
                send = self._traced(traceparent, method, path, send)
            await self._openai.handle(OPENAI_PATHS[path], scope, receive, send)
            return
        elif method == "GET":
            if path in ("/v2/health/live", "/v2/health/ready"):
                await respond(send, 200, _OK)
                return
            if path == "/v2":
                body = {
                    "name": "modelmarket-runner",
                    "version": __version__,
                    "extensions": ["binary_tensor_data"],
                }
                await respond(send, 200, orjson.dumps(body))
                return
            if path in self._model_paths:
                await respond(send, 200, self._metadata)
                return
            if path.removesuffix("/ready") in self._model_paths:
                await respond(send, 200, _OK)
                return
        await respond(send, 404, oip.error_body(f"no route {method} {path} on this runner"))

    def _traced(self, traceparent: bytes, method: str, route: str, send: Send) -> Send:
        """``send`` that ends this call's span when the answer's head goes out and adds it as ``SPAN_HEADER`` (a
        stream's span so ends at its head); ``send`` itself when the call gets no span."""
        spans = self.spans
        span = spans.start(traceparent, method, route)
        if span is None:
            return send

        async def traced(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                value = spans.finish(span, message["status"])
                message = {**message, "headers": [*message.get("headers", ()), (SPAN_HEADER, value)]}
            await send(message)

        return traced

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, self.max_request_bytes)
        except BodyTooLarge as exc:
            await respond(send, 413, oip.error_body(str(exc)))
            return
        raw_len = header(scope, b"inference-header-content-length")
        status, headers, payload = await self.answer_infer(body, int(raw_len) if raw_len is not None else None)
        ctype = next((v for n, v in headers if n == b"content-type"), b"application/json")
        await respond(send, status, payload, ctype, [(n, v) for n, v in headers if n != b"content-type"])

    async def answer_infer(
        self, body: bytes, header_len: int | None, decoded: oip.InferRequest | None = None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One OIP infer call: status, extra headers and body. The in-process profile calls this directly, with
        the request the gateway already decoded and validated against this same version (``decoded``)."""
        try:
            if decoded is None:
                request = oip.decode_request(body, header_len)
                oip.validate_inputs(request.inputs, self.spec.inputs, self.spec.name)
            else:
                request = decoded
            if self._serialized:  # a generating or embedding model: one call at a time, off the event loop
                async with self._openai.lock:
                    outputs = await asyncio.to_thread(self.runtime.predict, request.inputs, request.parameters)
                    usage = getattr(self.runtime, "last_usage", None)
            elif self.batcher is not None:
                outputs = await self.batcher.predict(request.inputs, request.parameters)
                usage = None
            elif self._own_thread is not None:  # provider code: off the event loop, so probes still answer
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(
                    self._own_thread, self.runtime.predict, request.inputs, request.parameters
                )
                usage = None
            else:
                outputs = self.runtime.predict(request.inputs, request.parameters)
                usage = getattr(self.runtime, "last_usage", None)
            payload, header_len_out = oip.encode_response(self.spec.name, self.spec.version, request, outputs)
        except InvalidInput as exc:
            return 400, [], oip.error_body(str(exc))
        except ValueError as exc:
            if not self.runtime.provider_code:  # the platform's runtimes raise ValueError for bad content
                return 400, [], oip.error_body(str(exc))
            where = f" in sandbox {self.spec.sandbox}" if self.spec.sandbox not in ("process", "inprocess") else ""
            return 500, [], oip.error_body(f"model {self.spec.name!r} failed{where}: {exc!r}")
        except MemoryError as exc:  # the rlimit refused an allocation before the cgroup had to kill
            return 500, [], oip.error_body(f"{MEMORY_LIMIT}: model {self.spec.name!r} ran out of memory ({exc!r})")
        except Exception as exc:  # a model failure is the runner's 500, reported with its cause
            where = f" in sandbox {self.spec.sandbox}" if self.spec.sandbox not in ("process", "inprocess") else ""
            return 500, [], oip.error_body(f"model {self.spec.name!r} failed{where}: {exc!r}")
        extra = [] if usage is None else [(USAGE_HEADER, f"{int(usage[0])},{int(usage[1])}".encode())]
        if header_len_out is not None:
            extra.append((IHCL, str(header_len_out).encode()))
            extra.append((b"content-type", b"application/octet-stream"))
        return 200, extra, payload


def _route(path: str) -> str:
    return "/v2/models/{model}/versions/{version}/infer" if "/versions/" in path else "/v2/models/{model}/infer"


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class ModelLoadFailed(Exception):
    """The runtime could not load the model (a missing or corrupt artifact, a broken plug-in)."""


def load_runtime(spec: ModelSpec) -> Runtime:
    try:
        runtime = load_runtime_class(spec.runtime)(spec)
        runtime.load()
    except Exception as exc:  # whatever the plug-in raised, the runner cannot serve this model
        raise ModelLoadFailed(f"model {spec.name}@{spec.version} failed to load: {exc!r}") from exc
    return runtime


@dataclass(frozen=True, slots=True)
class Listen:
    """Where a runner listens: a Unix socket path, an inherited listening socket (``fd``), or TCP host/port."""

    socket_path: Path | None = None
    fd: int | None = None
    host: str = "127.0.0.1"
    port: int = 0


def bind_unix(path: Path) -> socket.socket:
    """Listen on a Unix socket at ``path``, replacing a stale socket file a killed runner left behind.

    The file is created with mode 0600 (umask set around the bind, not chmod after it, so there is no moment
    it is open to others); the directory it is in is what keeps other users out in the first place.
    """
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(_PRIVATE_SOCKET_UMASK)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(LISTEN_BACKLOG)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(LISTEN_BACKLOG)
    return sock


def open_listener(listen: Listen) -> tuple[socket.socket, str]:
    """The listening socket and a description of it for people."""
    if listen.socket_path is not None:
        return bind_unix(listen.socket_path), f"unix:{listen.socket_path}"
    if listen.fd is not None:
        sock = socket.socket(fileno=listen.fd)
        return sock, f"inherited socket {sock.getsockname()!r}"
    sock = bind_tcp(listen.host, listen.port)
    return sock, f"http://{listen.host}:{sock.getsockname()[1]}"


def serve(
    spec: ModelSpec,
    listen: Listen,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    batching: BatchingDecl | None = None,
) -> None:
    """Load the model, then listen and serve it until SIGTERM/SIGINT. Raises ``ModelLoadFailed``.

    After its graceful shutdown uvicorn re-raises the signal, so the process ends there: a socket file is
    removed by whoever chose its path (the supervisor), or replaced by the next ``bind_unix`` at that path.
    """
    runtime = load_runtime(spec)
    app = RunnerApp(runtime, max_request_bytes, batching)
    gc.collect()
    gc.freeze()  # the loaded model lives as long as the process: no need to rescan it in every full collection
    sock, where = open_listener(listen)
    print(f"runner {spec.name}@{spec.version} listening on {where}", flush=True)
    serve_asgi(app, [sock])


def read_spec(path: Path) -> ModelSpec:
    return ModelSpec.from_json(json.loads(path.read_text()))


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelmarket.runtime.runner", description="Serve one model version over OIP v2."
    )
    parser.add_argument("--spec", type=Path, required=True, help="runner spec file written by the supervisor")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help="listen on a Unix socket at this path")
    where.add_argument("--fd", type=int, help="serve on this inherited listening socket")
    where.add_argument("--port", type=int, help="listen on loopback TCP at this port (0 = any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="TCP address with --port")
    parser.add_argument("--parent-pid", type=int, help="stop once process PID, our parent, has exited")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--batch-size", type=int, help="join concurrent calls into batches of up to this many rows")
    parser.add_argument("--batch-delay-ms", type=float, default=2.0, help="most time spent filling a batch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The runner process: the exit status is 0 after a graceful stop, ``EXIT_MODEL_LOAD_FAILED`` if the model
    could not load (the supervisor then gives up on it instead of restarting it in a loop)."""
    args = _arguments().parse_args(argv)
    if args.socket is None and args.fd is None and args.port is None:
        _arguments().error("give one of --socket, --fd or --port")
    if args.parent_pid is not None:
        lifetime.exit_with_parent(args.parent_pid)
    listen = Listen(socket_path=args.socket, fd=args.fd, host=args.host, port=args.port or 0)
    try:
        batching = None
        if args.batch_size:
            batching = BatchingDecl(max_batch_size=args.batch_size, max_delay_ms=args.batch_delay_ms)
        serve(read_spec(args.spec), listen, args.max_request_bytes, batching)
    except ModelLoadFailed as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return EXIT_MODEL_LOAD_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
