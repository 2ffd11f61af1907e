"""The gateway's data plane: live, ready, metadata and infer, with no transport in sight.

Every protocol edge (the OIP routes today; OpenAI routes and the dashboard's playground next) calls these and
only translates. It takes what it works with as parameters: the catalogue snapshot, the runner pools, the event
writer and the clock, so tests run it in-process with a fake runner and a list-backed writer.

The inference path: resolve the version, decode and validate the request against the version's contract (off
the event loop when the body is large), count IU, forward the original bytes to the runner, and on success
append the usage event and wait for its commit before returning the answer. A failed call appends nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import orjson

from modelmarket import __version__
from modelmarket.accounts import Account
from modelmarket.core.clock import Clock
from modelmarket.core.errors import DomainError, InvalidInput, NotFound
from modelmarket.core.ids import RequestIds
from modelmarket.metering.events import UsageEvent
from modelmarket.registry.catalogue import Catalogue, VersionRecord
from modelmarket.runtime import oip
from modelmarket.runtime.asgi import BodyTooLarge
from modelmarket.runtime.base import InputLimits
from modelmarket.runtime.plugins import runtime_input_limits

OFFLOAD_DECODE_BYTES = 256 * 1024
"""Bodies larger than this are decoded, validated and counted in a worker thread, never on the event loop."""
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
"""W3C Trace Context ``traceparent``, version 00: exactly 55 characters."""
_MS = Decimal("0.001")


class ModelFailed(DomainError):
    """The runner answered that the model itself failed on this input (its 5xx)."""


@dataclass(frozen=True, slots=True)
class InferRequest:
    body: bytes
    content_type: bytes | None = None
    header_length: bytes | None = None
    """The raw ``Inference-Header-Content-Length`` (binary tensor extension), if sent."""
    traceparent: bytes | None = None


@dataclass(frozen=True, slots=True)
class InferAnswer:
    request_id: str
    body: bytes
    content_type: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...] = ()


class RunnerAnswer(Protocol):
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class RunnerConnection(Protocol):
    async def request(
        self, method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> RunnerAnswer: ...


class RunnerPools(Protocol):
    """The runner supervisor as the data plane sees it."""

    async def pool_for(self, version: VersionRecord) -> RunnerConnection: ...

    def is_ready(self, version: VersionRecord) -> bool: ...

    def preloaded_ready(self) -> bool: ...


class EventWriter(Protocol):
    def append(self, event_id: str, payload: bytes) -> Awaitable[None]:
        """Completes once the event is durably committed; raises ``EventLogFull`` when at its bound."""
        ...


class CatalogueSource(Protocol):
    @property
    def catalogue(self) -> Catalogue: ...

    async def reload_after_miss(self, missed_at: float) -> None: ...


def trace_id(traceparent: bytes | None) -> str | None:
    """The trace id of a valid W3C ``traceparent``; anything else is ignored (never copied into an event)."""
    if traceparent is None or len(traceparent) != 55:
        return None
    match = TRACEPARENT_RE.match(traceparent.decode("latin-1"))
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return match.group(1)


@dataclass(frozen=True, slots=True)
class _Prepared:
    units: int


class DataPlane:
    def __init__(
        self,
        catalogue: CatalogueSource,
        runners: RunnerPools,
        writer: EventWriter,
        clock: Clock,
        *,
        source: str,
        max_request_bytes: int,
        request_ids: RequestIds | None = None,
        health_checks: tuple[Callable[[], str | None], ...] = (),
        input_limits: Callable[[str], InputLimits] = runtime_input_limits,
    ) -> None:
        self.catalogue = catalogue
        self.runners = runners
        self.writer = writer
        self.clock = clock
        self.source = source
        self.max_request_bytes = max_request_bytes
        self.request_ids = request_ids or RequestIds("req_")
        self.health_checks = health_checks
        self.input_limits = input_limits

    # -- health and metadata ------------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> Readiness:
        reasons = [reason for check in self.health_checks if (reason := check()) is not None]
        if not self.runners.preloaded_ready():
            describe = getattr(self.runners, "not_ready_reasons", None)
            reasons.extend(describe() if callable(describe) else ["models are starting"])
        return Readiness(not reasons, tuple(reasons))

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "modelmarket", "version": __version__, "extensions": ["binary_tensor_data"]}

    async def resolve(self, name: str, ref: str | None) -> VersionRecord:
        if ref == "":
            raise NotFound(f"model {name!r}: empty version segment")
        try:
            return self.catalogue.catalogue.resolve(name, ref)
        except NotFound:
            await self.catalogue.reload_after_miss(time.monotonic())
            return self.catalogue.catalogue.resolve(name, ref)

    async def metadata(self, name: str, ref: str | None) -> dict[str, Any]:
        version = await self.resolve(name, ref)
        entry = self.catalogue.catalogue.get(name)
        return {
            "name": name,
            "versions": [v.version for v in entry.sorted_versions()] if ref is None else [version.version],
            "platform": version.manifest.runtime,
            "inputs": [t.to_json() for t in version.inputs],
            "outputs": [t.to_json() for t in version.outputs],
        }

    async def model_ready(self, name: str, ref: str | None) -> bool:
        return self.runners.is_ready(await self.resolve(name, ref))

    # -- inference ----------------------------------------------------------------------------------------
    async def infer(self, account: Account, name: str, ref: str | None, request: InferRequest) -> InferAnswer:
        started = time.perf_counter()
        version = await self.resolve(name, ref)
        if len(request.body) > self.max_request_bytes:
            raise BodyTooLarge(f"request body is larger than the limit of {self.max_request_bytes} bytes")
        header_len = _header_length(request.header_length)
        limits = self.input_limits(version.manifest.runtime)
        if len(request.body) > OFFLOAD_DECODE_BYTES:
            prepared = await asyncio.to_thread(_prepare, version, request.body, header_len, limits)
        else:
            prepared = _prepare(version, request.body, header_len, limits)
        pool = await self.runners.pool_for(version)
        headers = [(b"Content-Type", request.content_type or b"application/json")]
        if request.header_length is not None:
            headers.append((b"Inference-Header-Content-Length", request.header_length))
        path = f"/v2/models/{version.model_name}/versions/{version.version}/infer"
        answer = await pool.request("POST", path, request.body, headers)
        if answer.status != 200:
            raise _runner_error(answer)
        event = self._usage_event(account, version, prepared.units, started, trace_id(request.traceparent))
        await self.writer.append(event.id, event.encode())
        out_headers = [(b"x-request-id", event.id.encode())]
        ihcl = answer.headers.get(b"inference-header-content-length")
        if ihcl is not None:
            out_headers.append((b"inference-header-content-length", ihcl))
        ctype = answer.headers.get(b"content-type", b"application/json")
        return InferAnswer(event.id, answer.body, ctype, out_headers)

    def _usage_event(
        self, account: Account, version: VersionRecord, units: int, started: float, trace: str | None
    ) -> UsageEvent:
        pricing = version.manifest.pricing
        return UsageEvent(
            id=self.request_ids.next(),
            source=self.source,
            account_id=account.id,
            time=self.clock(),
            model=version.model_name,
            version=version.version,
            provider_account_id=version.provider_account_id,
            unit_kind=pricing.unit,
            quantity=units,
            unit_price=pricing.price_per_iu,
            currency=pricing.currency,
            latency_ms=Decimal(int((time.perf_counter() - started) * 1_000_000)) * _MS,
            trace_id=trace,
        )


def _header_length(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise InvalidInput("Inference-Header-Content-Length must be a non-negative integer")
    return int(raw)


def _prepare(version: VersionRecord, body: bytes, header_len: int | None, limits: InputLimits) -> _Prepared:
    """Decode, validate against the version's contract and the runtime's bounds, and count base units (pure
    CPU work, bounded): work the runtime would refuse is refused here, before a runner spends time on it."""
    request = oip.decode_request(body, header_len)
    oip.validate_inputs(request.inputs, version.inputs, version.model_name)
    limits.check(request.inputs)
    oip.validate_requested_outputs(request, version.output_names, version.model_name)
    by_name = {t.name: t for t in request.inputs}
    declared = [by_name[spec.name] for spec in version.inputs if spec.name in by_name]
    return _Prepared(units=version.manifest.pricing.unit.measure(declared))


def _runner_error(answer: RunnerAnswer) -> DomainError | BodyTooLarge:
    message = _message(answer.body)
    if answer.status == 413:
        return BodyTooLarge(message)
    if 400 <= answer.status < 500:
        return InvalidInput(message)
    return ModelFailed(message)


def _message(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])[:2000]
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode("utf-8", "replace") or "the model runner failed without a message"
