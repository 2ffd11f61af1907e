"""The ModelRunner: one process that loads one model version through its Runtime and serves it over OIP v2.

Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/{m}[/versions/{v}]``,
``GET .../ready``, ``POST .../infer``. The model is loaded before the server accepts connections, so a runner
that answers ``/v2/health/ready`` is ready.
"""

from __future__ import annotations

import gc
import socket
import sys
from typing import Any

import orjson

from modelmarket import __version__
from modelmarket.core.errors import InvalidInput
from modelmarket.runtime import oip
from modelmarket.runtime.asgi import BodyTooLarge, Receive, Scope, Send, header, read_body, respond
from modelmarket.runtime.base import ModelSpec, Runtime
from modelmarket.runtime.plugins import load_runtime_class

_OK = b"{}"


class RunnerApp:
    def __init__(self, runtime: Runtime, max_request_bytes: int = 64 * 1024 * 1024) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        self.max_request_bytes = max_request_bytes
        self._metadata = orjson.dumps(runtime.metadata())
        base = f"/v2/models/{self.spec.name}"
        self._model_paths = {base, f"{base}/versions/{self.spec.version}"}

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
                await self._infer(scope, receive, send)
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

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, self.max_request_bytes)
            raw_len = header(scope, b"inference-header-content-length")
            request = oip.decode_request(body, int(raw_len) if raw_len is not None else None)
            oip.validate_inputs(request.inputs, self.spec.inputs, self.spec.name)
            outputs = self.runtime.predict(request.inputs, request.parameters)
            payload, header_len = oip.encode_response(self.spec.name, self.spec.version, request, outputs)
        except BodyTooLarge as exc:
            await respond(send, 413, oip.error_body(str(exc)))
            return
        except (InvalidInput, ValueError) as exc:
            await respond(send, 400, oip.error_body(str(exc)))
            return
        except Exception as exc:  # a model failure is the runner's 500, reported with its cause
            await respond(send, 500, oip.error_body(f"model {self.spec.name!r} failed: {exc!r}"))
            return
        if header_len is None:
            await respond(send, 200, payload)
        else:
            await respond(
                send,
                200,
                payload,
                b"application/octet-stream",
                [(b"inference-header-content-length", str(header_len).encode())],
            )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def load_runtime(spec: ModelSpec) -> Runtime:
    runtime = load_runtime_class(spec.runtime)(spec)
    runtime.load()
    return runtime


def serve(
    spec: ModelSpec,
    host: str = "127.0.0.1",
    port: int = 0,
    fd: int | None = None,
    max_request_bytes: int = 64 * 1024 * 1024,
) -> None:
    """Load the model, then serve it until SIGTERM/SIGINT. With ``fd``, serve on an inherited listening socket."""
    import uvicorn

    runtime = load_runtime(spec)
    app = RunnerApp(runtime, max_request_bytes)
    gc.collect()
    gc.freeze()  # the loaded model lives as long as the process: no need to rescan it in every full collection
    kwargs: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "http": "httptools",
        "loop": "uvloop",
        "timeout_keep_alive": 300,
        "proxy_headers": False,
        "server_header": False,
    }
    if fd is not None:
        sock = socket.socket(fileno=fd)
        print(f"runner {spec.name}@{spec.version} ready on {sock.getsockname()}", file=sys.stderr, flush=True)
        server = uvicorn.Server(uvicorn.Config(app, **kwargs))
        server.run(sockets=[sock])
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        print(
            f"runner {spec.name}@{spec.version} listening on http://{host}:{sock.getsockname()[1]}",
            flush=True,
        )
        server = uvicorn.Server(uvicorn.Config(app, **kwargs))
        server.run(sockets=[sock])
