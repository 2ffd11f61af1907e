"""The gateway ASGI app: OIP v2 inference for every published model and version, and the marketplace API.

The inference hot path: authenticate from the in-memory key snapshot, resolve the version from the catalogue
snapshot, decode and validate the request, count IU, forward the original bytes to the runner over a pooled
connection, then append the usage event through the group-committing writer and only then answer.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from modelmarket import __version__
from modelmarket.accounts import Account
from modelmarket.adapters.bus import make_writer
from modelmarket.bootstrap import Platform
from modelmarket.core.errors import DomainError, InvalidInput, NotFound, Unauthenticated
from modelmarket.core.ids import RequestIds
from modelmarket.gateway import api
from modelmarket.gateway.errors import status_for
from modelmarket.gateway.metering_process import MeteringProcess
from modelmarket.gateway.state import GatewayState
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import count_units, iu_from_units
from modelmarket.registry.service import VersionRecord
from modelmarket.runtime import oip
from modelmarket.runtime.asgi import BodyTooLarge, Receive, Scope, Send, header, read_body, respond
from modelmarket.runtime.base import TensorSpec
from modelmarket.runtime.supervisor import Supervisor
from modelmarket.settings import Settings

log = logging.getLogger(__name__)
_OK = b"{}"
_MS = Decimal("0.001")


def _split_model_path(path: str) -> tuple[str, str | None, str]:
    """``/v2/models/{m}[/versions/{v}][/tail]`` -> (m, v, tail). tail is '', 'ready' or 'infer'."""
    parts = path[len("/v2/models/") :].split("/")
    name, rest = parts[0], parts[1:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    tail = "/".join(rest)
    return name, version, tail


class GatewayApp:
    def __init__(self, platform: Platform, preload: bool = True) -> None:
        s = platform.settings
        self.platform = platform
        self.settings = s
        self.preload = preload
        self.state = GatewayState(platform, s.cache_refresh_s)
        self.writer = make_writer(s.event_log_path, s.event_log_sync, s.event_batch_max, s.event_queue_max)
        self.metering = MeteringProcess(s.home / "metering.log", _child_env(s, _store_url(platform)))
        self.supervisor = Supervisor(
            platform.blobs,
            s.runners_dir,
            s.runner_start_timeout_s,
            s.runner_request_timeout_s,
            s.runner_pool_size,
            s.runner_max_restarts,
            s.max_request_bytes,
        )
        self.source = f"modelmarket/{s.gateway_id}"
        self.request_ids = RequestIds("req_")
        self._background: set[asyncio.Task[Any]] = set()
        self._contracts: dict[str, tuple[tuple[TensorSpec, ...], frozenset[str]]] = {}

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def startup(self) -> None:
        self.writer.start()
        self.metering.start()
        await self.state.reload()
        self.state.start()
        self.supervisor.start_monitor()
        if self.preload:
            for entry in self.state.catalogue.models.values():
                if entry.versions:
                    version = entry.resolve(None)
                    self.supervisor.preloaded.add(version.id)
                    self._spawn_start(version)
        # Everything built so far lives as long as the process: keep it out of the cyclic collector's scans,
        # so a full collection during a request stays short.
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.state.stop()
        await self.supervisor.stop()
        self.writer.stop()
        await self.metering.stop()

    def _spawn_start(self, version: VersionRecord) -> None:
        self.supervisor.register(version)

        async def start() -> None:
            try:
                await self.supervisor.ensure_started(version)
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
        path: str = scope["path"]
        try:
            if path.startswith("/v2/models/"):
                await self._model_route(scope, receive, send, path)
            elif path.startswith("/v2"):
                await self._server_route(scope, send, path)
            elif path.startswith("/api/"):
                account = await self._authenticate(scope) if api.needs_auth(path) else None
                status, body = await api.handle(self, scope, path, account)
                await respond(send, status, body)
            else:
                await respond(send, 404, oip.error_body(f"no route {scope['method']} {path}"))
        except (DomainError, BodyTooLarge) as exc:
            status = status_for(exc) or 500
            message = exc.message if isinstance(exc, DomainError) else str(exc)
            await respond(send, status, oip.error_body(message))
        except Exception as exc:  # a bug: log it with its traceback, answer a JSON 500, never serve half a call
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
            await respond(send, 200, b"")
        elif path == "/v2/health/ready":
            # Ready once the runners preloaded at startup are up (models not preloaded start on first call).
            ready = self.supervisor.preloaded_ready()
            await respond(send, 200 if ready else 400, b"" if ready else oip.error_body("models are starting"))
        elif path in ("/v2", "/v2/"):
            body = {"name": "modelmarket", "version": __version__, "extensions": ["binary_tensor_data"]}
            await respond(send, 200, orjson.dumps(body))
        else:
            await respond(send, 404, oip.error_body(f"no route GET {path}"))

    async def _authenticate(self, scope: Scope) -> Account:
        raw = header(scope, b"authorization")
        if raw is None:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = raw.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
        account = self.state.keys.authenticate(token.strip())
        if account is None:
            await self.state.reload_after_miss(time.monotonic())
            account = self.state.keys.authenticate(token.strip())
        if account is None:
            raise Unauthenticated("invalid API key")
        return account

    async def _resolve(self, name: str, ref: str | None) -> VersionRecord:
        try:
            return self.state.catalogue.resolve(name, ref)
        except NotFound:
            await self.state.reload_after_miss(time.monotonic())
            return self.state.catalogue.resolve(name, ref)

    async def _model_route(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        name, ref, tail = _split_model_path(path)
        method = scope["method"]
        if tail == "infer" and method == "POST":
            await self._infer(scope, receive, send, name, ref)
            return
        if method != "GET" or tail not in ("", "ready"):
            await respond(send, 404, oip.error_body(f"no route {method} {path}"))
            return
        version = await self._resolve(name, ref)
        if tail == "ready":
            if self.supervisor.is_ready(version):
                await respond(send, 200, b"")
            else:  # OIP: 200 means ready, a 4xx means not ready; a runner starts on the first inference call
                await respond(send, 400, oip.error_body(f"model {name!r} version {version.version} is not loaded"))
            return
        m = version.manifest
        entry = self.state.catalogue.get(name)
        body = {
            "name": name,
            "versions": [v.version for v in entry.sorted_versions()] if ref is None else [version.version],
            "platform": m.runtime,
            "inputs": [t.model_dump() for t in m.inputs],
            "outputs": [t.model_dump() for t in m.outputs],
        }
        await respond(send, 200, orjson.dumps(body))

    async def _infer(self, scope: Scope, receive: Receive, send: Send, name: str, ref: str | None) -> None:
        started = time.perf_counter()
        account = await self._authenticate(scope)
        version = await self._resolve(name, ref)
        body = await read_body(receive, self.settings.max_request_bytes)
        raw_len = header(scope, b"inference-header-content-length")
        try:
            header_len = int(raw_len) if raw_len is not None else None
        except ValueError:
            raise InvalidInput("Inference-Header-Content-Length must be an integer") from None
        request = oip.decode_request(body, header_len)
        inputs_spec, output_names = self._contract(version)
        oip.validate_inputs(request.inputs, inputs_spec, name)
        oip.validate_requested_outputs(request, output_names, name)
        units = count_units(version.manifest.pricing.unit, request.inputs)
        pool = await self.supervisor.pool_for(version)
        fwd_headers = [(b"Content-Type", header(scope, b"content-type") or b"application/json")]
        if raw_len is not None:
            fwd_headers.append((b"Inference-Header-Content-Length", raw_len))
        runner_path = f"/v2/models/{name}/versions/{version.version}/infer"
        answer = await pool.request("POST", runner_path, body, fwd_headers)
        if answer.status != 200:
            await respond(send, answer.status, answer.body)  # the runner's {"error": ...}; no usage event
            return
        event = self._usage_event(scope, account, version, units, started)
        await self.writer.append(event.id, event.encode())
        headers = [(b"x-request-id", event.id.encode())]
        ihcl = answer.headers.get(b"inference-header-content-length")
        if ihcl is not None:
            headers.append((b"inference-header-content-length", ihcl))
        ctype = answer.headers.get(b"content-type", b"application/json")
        await respond(send, 200, answer.body, ctype, headers)

    def _usage_event(
        self, scope: Scope, account: Account, version: VersionRecord, units: int, started: float
    ) -> UsageEvent:
        pricing = version.manifest.pricing
        return UsageEvent(
            id=self.request_ids.next(),
            source=self.source,
            account_id=account.id,
            time=datetime.now(UTC),
            model=version.model_name,
            version=version.version,
            provider_account_id=version.provider_account_id,
            unit_kind=pricing.unit,
            quantity=units,
            quantity_iu=iu_from_units(pricing.unit, units),
            unit_price=pricing.price_per_iu,
            currency=pricing.currency,
            latency_ms=Decimal(int((time.perf_counter() - started) * 1_000_000)) * _MS,
            trace_id=_trace_id(scope),
        )

    def _contract(self, version: VersionRecord) -> tuple[tuple[TensorSpec, ...], frozenset[str]]:
        """The version's declared inputs and output names, built once per version."""
        contract = self._contracts.get(version.id)
        if contract is None:
            m = version.manifest
            inputs = tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in m.inputs)
            contract = self._contracts[version.id] = (inputs, frozenset(t.name for t in m.outputs))
        return contract


def _store_url(platform: Platform) -> str:
    """The URL of the store this gateway actually uses (which may have been passed to bootstrap)."""
    return platform.store.engine.url.render_as_string(hide_password=False)


def _child_env(settings: Settings, store_url: str | None = None) -> dict[str, str]:
    """The environment of the metering child: this gateway's settings, whatever the parent's environment says."""
    env = dict(os.environ)
    env["MODELMARKET_HOME"] = str(settings.home.resolve())
    env["MODELMARKET_DATABASE_URL"] = store_url or settings.resolved_database_url
    env["MODELMARKET_EVENT_LOG_SYNC"] = settings.event_log_sync
    env["MODELMARKET_METERING_POLL_S"] = str(settings.metering_poll_s)
    return env


def _trace_id(scope: Scope) -> str | None:
    raw = header(scope, b"traceparent")
    if raw is None:
        return None
    parts = raw.decode("latin-1").split("-")
    return parts[1] if len(parts) >= 3 else None
