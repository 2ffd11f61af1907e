"""The gateway's ASGI edge: it parses HTTP, authenticates, calls the data plane and writes the answer.

No logic lives here beyond translation: routing of the OIP paths (hand-written, the hot path), the marketplace
API (a Starlette router), and one error table (``gateway/errors.py``) that turns every exception into a status.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.routing import Router

from modelmarket.core.errors import DomainError, MeteringHalted
from modelmarket.gateway.auth import authenticate_key
from modelmarket.gateway.dataplane import DataPlane, InferRequest
from modelmarket.gateway.errors import extra_fields_for, headers_for, message_for, status_for
from modelmarket.gateway.openapi import document_json
from modelmarket.gateway.state import GatewayState
from modelmarket.metering.ports import EventLogFull
from modelmarket.observability import Observability, note, note_answer_headers
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.runtime import oip
from modelmarket.runtime.asgi import BodyTooLarge, Receive, Scope, Send, header, read_body, respond

log = logging.getLogger(__name__)
_LIVE = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})
METERING_RESUME_CHECK_S = 2.0
"""How often a gateway whose metering child halted checks whether an operator has resumed metering."""
_EXPECTED = (DomainError, BodyTooLarge, EventLogFull, MeteringHalted)


def _split_model_path(path: str) -> tuple[str, str | None, str]:
    """``/v2/models/{m}[/versions/{v}][/tail]`` -> (m, v, tail). tail is '', 'ready' or 'infer'."""
    parts = path[len("/v2/models/") :].split("/")
    name, rest = parts[0], parts[1:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    return name, version, "/".join(rest)


@dataclass
class GatewayParts:
    dataplane: DataPlane
    state: GatewayState
    api: Router
    writer: Any
    supervisor: Any
    metering: Any
    max_request_bytes: int
    preload: bool = True
    metering_halted: Callable[[], str | None] | None = None
    """The store's halt reason, read to restart a halted metering child once an operator resumed it."""
    openai: Any = None
    """The OpenAI-compatible edge (``gateway/openai_api.py``) answering ``/v1``."""
    backends: Any = None
    publish_queue: Any = None
    """The gate runs of packages uploaded over HTTP (``gateway/api_packages.PublishQueue``)."""
    observability: Observability | None = None
    """Metrics, spans and the request log of every request (``observability/``); None: none of them."""
    metrics: Any = None
    """The ASGI endpoint answering ``GET /metrics`` (``observability/metrics.py``); None: 404."""
    dashboard: Any = None
    """The web dashboard (``dashboard/``), an ASGI app answering every path no other part claims; None: 404."""


class GatewayApp:
    def __init__(self, parts: GatewayParts, on_ready: Callable[[], None] | None = None) -> None:
        self.parts = parts
        self.dataplane = parts.dataplane
        self.state = parts.state
        self.on_ready = on_ready
        self._background: set[asyncio.Task[Any]] = set()

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def startup(self) -> None:
        p = self.parts
        p.writer.start()
        if p.metering is not None:
            p.metering.start()
            if p.metering_halted is not None:
                self._background_task(self._resume_metering_when_cleared(p.metering, p.metering_halted))
        await self.state.reload()
        self.state.start()
        p.supervisor.start_monitor()
        if p.publish_queue is not None:
            p.publish_queue.start()
        if p.preload:
            catalogue = self.state.catalogue
            for name in catalogue.names():
                version = catalogue.resolve(name)
                if not getattr(version, "needs_runner", True):  # a pipeline or an upstream's model
                    continue
                p.supervisor.preloaded.add(version.id)
                self._spawn_start(version)
        # Everything built so far lives as long as the process: keep it out of the cyclic collector's scans.
        gc.collect()
        gc.freeze()
        if self.on_ready is not None:
            self.on_ready()

    async def shutdown(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.state.stop()
        if self.dataplane.shadows is not None:
            await self.dataplane.shadows.close()
        if self.dataplane.experiment_recorder is not None:  # the experiment calls still queued
            await self.dataplane.experiment_recorder.close()
        if self.parts.publish_queue is not None:
            await asyncio.to_thread(self.parts.publish_queue.stop)
        await self.parts.supervisor.stop()
        if self.parts.backends is not None:
            await self.parts.backends.close()
        self.parts.writer.stop()
        if self.parts.metering is not None:
            await self.parts.metering.stop()
        if self.parts.observability is not None:  # the log's last lines and queued spans (bounded wait)
            await asyncio.to_thread(self.parts.observability.close)

    def _background_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resume_metering_when_cleared(self, metering: Any, halted: Callable[[], str | None]) -> None:
        while True:
            await asyncio.sleep(METERING_RESUME_CHECK_S)
            if metering.failure is None:
                continue
            try:
                if metering.restart_if_resumed(await asyncio.to_thread(halted)):
                    log.warning("metering was resumed by an operator; its consumer is running again")
            except Exception:  # keep checking; the readiness endpoint still reports the halt
                log.exception("checking whether metering was resumed failed")

    def _spawn_start(self, version: VersionRecord) -> None:
        # (ensure_started registers the version: an in-process one gets no runner record)

        async def start() -> None:
            try:
                await self.parts.supervisor.ensure_started(version)
            except DomainError as exc:
                log.error("%s", exc.message)

        task = asyncio.create_task(start())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- ASGI ---------------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        obs = self.parts.observability
        if obs is None:
            await self._route(scope, receive, send)
            return
        info, token = obs.begin(scope)

        async def observed(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                note_answer_headers(info, message.get("headers", ()))
            await send(message)

        try:
            await self._route(scope, receive, observed)
        finally:
            obs.finish(info, token)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        try:
            if path.startswith("/v2/models/"):
                await self._model_route(scope, receive, send, path)
            elif path == "/v2" or path.startswith("/v2/"):
                await self._server_route(scope, send, path)
            elif path.startswith("/v1/") and self.parts.openai is not None:
                await self.parts.openai(scope, receive, send)
            elif path.startswith("/api/"):
                scope["app"] = self  # lets the router raise HTTPException for 404/405, answered as JSON below
                await self.parts.api(scope, receive, send)
            elif path == "/openapi.json" and scope["method"] == "GET":  # public: gateway/openapi.py
                await respond(send, 200, document_json())
            elif path == "/metrics" and self.parts.metrics is not None:
                await self.parts.metrics(scope, receive, send)
            elif self.parts.dashboard is not None and not path.startswith(("/v1/", "/v2")):
                await self.parts.dashboard(scope, receive, send)
            else:
                await respond(send, 404, oip.error_body(f"no route {scope['method']} {path}"))
        except _EXPECTED as exc:
            note(error_type=type(exc).__name__)
            body = orjson.dumps({"error": message_for(exc), **extra_fields_for(exc)})
            await respond(send, status_for(exc) or 500, body, extra_headers=headers_for(exc))
        except HTTPException as exc:
            note(error_type="HTTPException")
            await respond(send, exc.status_code, oip.error_body(f"{exc.detail}: {scope['method']} {path}"))
        except Exception as exc:  # a bug: log it with its traceback, answer a JSON 500, never serve half a call
            note(error_type=type(exc).__name__)
            log.exception("unhandled error on %s %s", scope["method"], path)
            await respond(send, 500, oip.error_body(f"internal error ({type(exc).__name__}); see the gateway log"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _server_route(self, scope: Scope, send: Send, path: str) -> None:
        if scope["method"] != "GET":
            await respond(send, 405, oip.error_body(f"{scope['method']} is not allowed on {path}"))
        elif path == "/v2/health/live":
            await respond(send, 200, _LIVE)
        elif path == "/v2/health/ready":
            readiness = self.dataplane.ready()
            if readiness.ready:
                await respond(send, 200, _READY)
            else:  # OIP: 200 means ready, a 4xx means not ready
                body = orjson.dumps({"ready": False, "error": "; ".join(readiness.reasons)})
                await respond(send, 400, body)
        elif path in ("/v2", "/v2/"):
            await respond(send, 200, orjson.dumps(self.dataplane.server_metadata()))
        else:
            await respond(send, 404, oip.error_body(f"no route GET {path}"))

    async def _model_route(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        name, ref, tail = _split_model_path(path)
        method = scope["method"]
        if tail == "infer" and method == "POST":
            account, key_id = await authenticate_key(self.state, scope)
            body = await read_body(receive, self.parts.max_request_bytes)
            request = InferRequest(
                body=body,
                content_type=header(scope, b"content-type"),
                header_length=header(scope, b"inference-header-content-length"),
                traceparent=header(scope, b"traceparent"),
                idempotency_key=header(scope, b"idempotency-key"),
            )
            answer = await self.dataplane.infer(account, name, ref, request, key_id=key_id)
            await respond(send, 200, answer.body, answer.content_type, answer.headers)
            return
        if method != "GET" or tail not in ("", "ready"):
            await respond(send, 404, oip.error_body(f"no route {method} {path}"))
            return
        if tail == "ready":
            if await self.dataplane.model_ready(name, ref):
                await respond(send, 200, _READY)
            else:  # OIP: a 4xx means not ready; a runner starts on the first inference call
                message = f"model {name!r} is not loaded (it starts on its first inference call)"
                await respond(send, 400, orjson.dumps({"ready": False, "error": message}))
            return
        await respond(send, 200, orjson.dumps(await self.dataplane.metadata(name, ref)))
