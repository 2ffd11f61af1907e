"""The gateway's data plane: live, ready, metadata and infer, with no transport in sight.

Every protocol edge (the OIP routes today; OpenAI routes and the dashboard's playground next) calls these and
only translates. It takes what it works with as parameters: the catalogue snapshot, the runner pools, the event
writer and the clock, so tests run it in-process with a fake runner and a list-backed writer.

The inference path: resolve the version, decode and validate the request against the version's contract (off
the event loop when the body is large), count IU, forward the original bytes to the runner (re-encoded when a
privacy policy replaced text in them, ``gateway/privacy.py``), and on success append the usage event and wait for
its commit before returning the answer. A failed call appends nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol

import orjson

from modelmarket import __version__
from modelmarket.accounts import Account
from modelmarket.core.clock import Clock
from modelmarket.core.errors import Conflict, DomainError, InvalidInput, NotFound
from modelmarket.core.ids import RequestIds
from modelmarket.gateway.attempts import Attempt, ModelFailed, RouterLike, UpstreamBusy, is_route, run_attempts
from modelmarket.gateway.backends import UPSTREAMS, Backends
from modelmarket.gateway.economy import Economy, Priced, call_figures
from modelmarket.gateway.experiments import ExperimentRecorder, Shadows, serve_in_experiment
from modelmarket.gateway.limits import Ticket
from modelmarket.gateway.privacy import PrivacyGuard
from modelmarket.lab.experiments import SHADOW, Experiment
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.ports import AlreadyLogged, KeptAnswer, KeyLookup
from modelmarket.metering.units import UnitKind
from modelmarket.observability import current
from modelmarket.observability.tracing import TRACEPARENT, client_call
from modelmarket.registry.catalogue import Catalogue, VersionRecord
from modelmarket.runtime import oip
from modelmarket.runtime.asgi import BodyTooLarge
from modelmarket.runtime.base import InputLimits
from modelmarket.runtime.plugins import runtime_input_limits
from modelmarket.runtime.runner import USAGE_HEADER
from modelmarket.runtime.supervisor import COLD_START_HEADER

USAGE_EVENTS_HEADER = b"x-modelmarket-usage-events"
"""On a pipeline's answer: the ids of the usage events it was billed with (its steps', then its fee's)."""
OFFLOAD_DECODE_BYTES = 256 * 1024
"""Bodies larger than this are decoded, validated and counted in a worker thread, never on the event loop."""
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
"""W3C Trace Context ``traceparent``, version 00: exactly 55 characters."""
_MS = Decimal("0.001")
_INFER_ROUTE = "/v2/models/{model}/versions/{version}/infer"


IDEMPOTENCY_KEY_MAX_CHARS = 200
IDEMPOTENCY_KEY_RE = re.compile(rb"^[\x21-\x7e]{1,200}$")
"""An Idempotency-Key: 1-200 printable ASCII characters (a UUID is typical)."""


class IdempotencyKeyReused(DomainError):
    """An Idempotency-Key already used for a different request (another model, version or body)."""


class AnswerNotKept(Conflict):
    """The call with this Idempotency-Key was served and billed, but its answer is no longer kept."""


def idempotent_event_id(account_id: str, key: str) -> str:
    """The usage event id of the call with ``key``: the same on every retry, so the log bills it once."""
    return "idem_" + hashlib.sha256(f"{account_id}\0{key}".encode()).hexdigest()[:48]


@dataclass(frozen=True, slots=True)
class InferRequest:
    body: bytes
    content_type: bytes | None = None
    header_length: bytes | None = None
    """The raw ``Inference-Header-Content-Length`` (binary tensor extension), if sent."""
    traceparent: bytes | None = None
    idempotency_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class InferAnswer:
    request_id: str
    body: bytes
    content_type: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    replayed: bool = False


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
    def append(self, event_id: str, payload: bytes, kept: KeptAnswer | None = None) -> Awaitable[None]:
        """Completes once the event (and the answer kept beside it) is durably committed; raises
        ``EventLogFull`` when at its bound."""
        ...

    def append_all(self, events: Sequence[tuple[str, bytes]]) -> Awaitable[None]:
        """Completes once all the events are committed, in one transaction (all or none)."""
        ...

    def lookup(self, event_id: str) -> KeyLookup: ...


class CatalogueSource(Protocol):
    @property
    def catalogue(self) -> Catalogue: ...

    async def reload_after_miss(self, missed_at: float) -> None: ...


def trace_id(traceparent: bytes | None) -> str | None:
    """The trace id of a valid W3C ``traceparent``; anything else is ignored (never copied into an event). Without
    a valid one, the trace the gateway's tracing started for the request being served, if it started one."""
    if traceparent is None or len(traceparent) != 55:
        return _own_trace_id()
    match = TRACEPARENT_RE.match(traceparent.decode("latin-1"))
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return _own_trace_id()
    return match.group(1)


def _own_trace_id() -> str | None:
    info = current()
    return None if info is None else info.trace_id


@dataclass(frozen=True, slots=True)
class _Prepared:
    units: int
    decoded: oip.InferRequest | None = None
    """The request as decoded and validated here: an in-process model takes it as it is."""


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
        max_kept_answer_bytes: int = 1024 * 1024,
        economy: Economy | None = None,
        backends: Backends | None = None,
        router: Callable[[], RouterLike | None] = lambda: None,
    ) -> None:
        self.economy = economy
        self.backends = backends
        self.router = router
        self.catalogue = catalogue
        self.runners = runners
        self.writer = writer
        self.clock = clock
        self.source = source
        self.max_request_bytes = max_request_bytes
        self.request_ids = request_ids or RequestIds("req_")
        self.health_checks = health_checks
        self.input_limits = input_limits
        self.max_kept_answer_bytes = max_kept_answer_bytes
        self.privacy: PrivacyGuard | None = None
        """Redaction of the calls' text and capture of opted-in accounts' calls (``gateway/privacy.py``)."""
        self.experiments: Callable[[], Mapping[str, Experiment]] | None = None
        """Model -> its running experiment (``gateway/experiments.py``); None: no experiments here."""
        self.experiment_recorder: ExperimentRecorder | None = None
        self.shadows: Shadows | None = None
        """Copies of calls to a shadowed model's candidate version, never billed nor returned."""
        self._in_flight: dict[str, tuple[str, asyncio.Future[InferAnswer]]] = {}

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
        """The version a call of ``name@ref`` goes to. When an alias has just moved, that is still the old
        version until the new one's runner is warm (the supervisor's ``route``: a swap drops no call)."""
        try:
            version = self.catalogue.catalogue.resolve(name, ref)
        except NotFound:
            await self.catalogue.reload_after_miss(time.monotonic())
            version = self.catalogue.catalogue.resolve(name, ref)
        route = getattr(self.runners, "route", None)
        if route is not None and version.needs_runner and (ref is None or ref != version.version):  # an alias
            return route(f"{name}@{ref or 'latest'}", version)  # type: ignore[no-any-return]
        return version

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
    async def infer(
        self, account: Account, name: str, ref: str | None, request: InferRequest, key_id: str | None = None
    ) -> InferAnswer:
        """Serve one call. With an Idempotency-Key, a retry gets the kept answer and is never billed again.

        Limits are checked after the request is validated and before a runner is called: a refused call (429 or
        402) costs no model time and appends no usage event."""
        if request.idempotency_key is None:
            return await self._infer(account, name, ref, request, None, key_id)
        key = _idempotency_key(request.idempotency_key)
        event_id = idempotent_event_id(account.id, key)
        digest = await _request_digest(name, ref, request)
        while (pending := self._in_flight.get(event_id)) is not None:  # the same key is being served right now
            if pending[0] != digest:
                raise IdempotencyKeyReused(_reused(key))
            try:
                return _replayed(await asyncio.shield(pending[1]))
            except Exception:  # the first attempt failed and billed nothing: serve this one
                continue
        found = self.writer.lookup(event_id)
        if found.billed:
            return self._replay(key, digest, found.kept)
        future: asyncio.Future[InferAnswer] = asyncio.get_running_loop().create_future()
        self._in_flight[event_id] = (digest, future)
        try:
            try:
                answer = await self._infer(account, name, ref, request, (event_id, digest), key_id)
            except AlreadyLogged:  # another process served this key first: its logged answer is the one
                answer = self._replay(key, digest, self.writer.lookup(event_id).kept)
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._in_flight[event_id]

    def _replay(self, key: str, digest: str, kept: KeptAnswer | None) -> InferAnswer:
        if kept is None:
            raise AnswerNotKept(
                f"the call with Idempotency-Key {key!r} was served and billed; its answer is no longer kept "
                f"(answers up to {self.max_kept_answer_bytes} bytes are kept for MODELMARKET_IDEMPOTENCY_TTL_S)"
            )
        if kept.request_sha256 != digest:
            raise IdempotencyKeyReused(_reused(key))
        headers = [(b"x-request-id", kept.event_id.encode()), (b"idempotency-replayed", b"true")]
        if kept.header_length is not None:
            headers.append((b"inference-header-content-length", kept.header_length))
        return InferAnswer(kept.event_id, kept.body, kept.content_type, headers, replayed=True)

    async def _infer(
        self,
        account: Account,
        name: str,
        ref: str | None,
        request: InferRequest,
        once: tuple[str, str] | None,
        key_id: str | None = None,
    ) -> InferAnswer:
        if ref is None and self.experiments is not None:
            experiment = self.experiments().get(name)
            if experiment is not None and experiment.metric == SHADOW:  # served as usual; a copy to the candidate
                started = time.perf_counter()
                answer = await self._infer_version(account, await self.resolve(name, None), request, once, key_id)
                if self.shadows is not None:
                    self.shadows.send(experiment, account.id, answer, time.perf_counter() - started, request, key_id)
                return answer
            if experiment is not None:  # the variant the key is assigned, recorded for the lab

                async def serve(version_ref: str) -> InferAnswer:
                    return await self._infer_version(
                        account, await self.resolve(name, version_ref), request, once, key_id
                    )

                assigned: InferAnswer = await serve_in_experiment(
                    experiment, key_id or account.id, account.id, serve, self.experiment_recorder
                )
                return assigned
        router = self.router() if ref is None else None
        if router is not None and is_route(router, name):

            async def resolve(target: str) -> VersionRecord:
                model, _, version_ref = target.partition("@")
                return await self.resolve(model, version_ref or None)

            async def attempt(chosen: Attempt) -> InferAnswer:
                return await self._infer_version(account, chosen.version, request, once, key_id, chosen)

            return await run_attempts(router, name, key_id, resolve, attempt)
        return await self._infer_version(account, await self.resolve(name, ref), request, once, key_id)

    async def _infer_version(
        self,
        account: Account,
        version: VersionRecord,
        request: InferRequest,
        once: tuple[str, str] | None,
        key_id: str | None,
        attempt: Attempt | None = None,
    ) -> InferAnswer:
        """Serve one call of ``version``; ``attempt`` when it is a route's attempt (its label, its deadline for
        the runner's answer, whether it is the call's first)."""
        started = time.perf_counter()
        name = version.model_name
        if len(request.body) > self.max_request_bytes:
            raise BodyTooLarge(f"request body is larger than the limit of {self.max_request_bytes} bytes")
        header_len = _header_length(request.header_length)
        if version.manifest.kind == "pipeline":
            if once is not None:
                raise InvalidInput(
                    f"model {name!r} is a pipeline: Idempotency-Key is not supported for pipeline calls yet"
                )
            return await self._pipeline(account, key_id, version, request, header_len)
        limits = self.input_limits(version.manifest.runtime)
        if len(request.body) > OFFLOAD_DECODE_BYTES:
            prepared = await asyncio.to_thread(_prepare, version, request.body, header_len, limits)
        else:
            prepared = _prepare(version, request.body, header_len, limits)
        if self.privacy is not None:  # counted as sent; the runner gets the redacted request
            request, prepared = await self._redacted(version, key_id, request, prepared)
        economy = self.economy
        if economy is None:
            return await self._serve(account, version, request, prepared, once, started, None, None, attempt)
        at = self.clock()
        priced = economy.price(version, at)
        first = attempt is None or attempt.first
        ticket = economy.admit(account.id, key_id, version, prepared.units, priced, at, first)
        try:
            return await self._serve(
                account,
                version,
                request,
                prepared,
                once,
                started,
                priced,
                lambda units: economy.limiter.settle(ticket, base=units),
                attempt,
            )
        except BaseException:
            if ticket.open:  # not billed: release what it reserved
                economy.limiter.cancel(ticket)
            raise

    async def _pipeline(
        self,
        account: Account,
        key_id: str | None,
        version: VersionRecord,
        request: InferRequest,
        header_len: int | None,
    ) -> InferAnswer:
        """A Resonance Node: its steps run as calls of their models, billed together once all succeeded."""
        from modelmarket.gateway.pipeline import run_pipeline
        from modelmarket.gateway.pipeline_steps import DataPlaneSteps

        decoded = oip.decode_request(request.body, header_len)
        oip.validate_inputs(decoded.inputs, version.inputs, version.model_name)
        oip.validate_requested_outputs(decoded, version.output_names, version.model_name)
        if self.privacy is not None:  # the pipeline's redact: and the key's; each step applies its model's too
            redacted = await self.privacy.redact_oip(version, key_id, decoded)
            decoded = decoded if redacted is None else redacted.decoded
        result = await run_pipeline(DataPlaneSteps(self), account, key_id, version, decoded.inputs, decoded.parameters)
        payload, header_length = oip.encode_response(version.model_name, version.version, decoded, result.outputs)
        if self.privacy is not None:  # kept as one call (the pipeline's input and answer) if the account opted in
            kept_length = None if header_length is None else str(header_length).encode()
            self.privacy.capture_oip(account.id, version, result.call_id, decoded, payload, kept_length)
        headers = [
            (b"x-request-id", result.call_id.encode()),
            (b"x-modelmarket-route", version.ref.encode()),
            (USAGE_EVENTS_HEADER, ",".join(result.event_ids).encode()),  # each has its proof
        ]
        ctype = b"application/json"
        if header_length is not None:
            headers.append((b"inference-header-content-length", str(header_length).encode()))
            ctype = b"application/octet-stream"
        return InferAnswer(result.call_id, payload, ctype, headers)

    async def _serve(
        self,
        account: Account,
        version: VersionRecord,
        request: InferRequest,
        prepared: _Prepared,
        once: tuple[str, str] | None,
        started: float,
        priced: Priced | None,
        on_billed: Callable[[int], None] | None = None,
        attempt: Attempt | None = None,
    ) -> InferAnswer:
        route = None if attempt is None else attempt.route
        if attempt is None:
            answer, units, out = await self.forward(version, request, prepared.units, prepared.decoded)
        else:
            async with attempt.backend_bound():  # a route's timeout bounds the runner's answer, not the commit
                answer, units, out = await self.forward(version, request, prepared.units, prepared.decoded)
        event_id = self.request_ids.next() if once is None else once[0]
        event = self.usage_event(
            event_id, account, version, units, started, trace_id(request.traceparent), priced, quantity_out=out
        )
        ihcl = answer.headers.get(b"inference-header-content-length")
        ctype = answer.headers.get(b"content-type", b"application/json")
        kept = None
        if once is not None and len(answer.body) <= self.max_kept_answer_bytes:
            kept = KeptAnswer(event.id, once[1], ctype, ihcl, answer.body, time.time())
        await self.writer.append(event.id, event.encode(), kept)
        if on_billed is not None:  # committed: the call counts, whatever happens to the answer now
            on_billed(units)
        if self.privacy is not None:
            self.privacy.capture_oip(account.id, version, event.id, prepared.decoded, answer.body, ihcl)
        iu, cost = call_figures(version, units, out, priced)
        out_headers = [
            (b"x-request-id", event.id.encode()),
            (b"x-modelmarket-route", (route or version.ref).encode()),
            (b"x-modelmarket-iu", iu.encode()),
            (b"x-modelmarket-cost", f"{cost} {version.manifest.pricing.currency}".encode()),
        ]
        if ihcl is not None:
            out_headers.append((b"inference-header-content-length", ihcl))
        cold = answer.headers.get(COLD_START_HEADER)
        if cold is not None:  # this call waited for its runner to start (scale from zero, first call)
            out_headers.append((COLD_START_HEADER, cold))
        return InferAnswer(event.id, answer.body, ctype, out_headers)

    def admit(
        self, account: Account, key_id: str | None, version: VersionRecord, units: int, count_rate: bool = True
    ) -> tuple[Ticket | None, Priced | None]:
        """The price in force and the limiter's reservation for a call of ``units`` base units (both None without
        an economy); ``release`` the ticket if the call is not billed, ``settle`` it (the limiter's) if it is."""
        economy = self.economy
        if economy is None:
            return None, None
        at = self.clock()
        priced = economy.price(version, at)
        return economy.admit(account.id, key_id, version, units, priced, at, count_rate), priced

    def release(self, ticket: Ticket | None) -> None:
        """A call that was not billed gives back what it reserved (at most once)."""
        if ticket is not None and ticket.open and self.economy is not None:
            self.economy.limiter.cancel(ticket)

    def settle(self, ticket: Ticket | None, units: int) -> None:
        """A billed call counts at its real size."""
        if ticket is not None and self.economy is not None:
            self.economy.limiter.settle(ticket, base=units)

    async def unbilled(self, version: VersionRecord, request: InferRequest, key_id: str | None) -> RunnerAnswer:
        """``request`` answered by ``version`` with nothing billed, counted or kept (a shadow copy): checked
        against its contract and redacted as a call of it would be."""
        header_len = _header_length(request.header_length)
        prepared = _prepare(version, request.body, header_len, self.input_limits(version.manifest.runtime))
        if self.privacy is not None:
            request, prepared = await self._redacted(version, key_id, request, prepared)
        answer, _, _ = await self.forward(version, request, prepared.units, prepared.decoded)
        return answer

    async def _redacted(
        self, version: VersionRecord, key_id: str | None, request: InferRequest, prepared: _Prepared
    ) -> tuple[InferRequest, _Prepared]:
        """The request (and its decoded form) as the runner gets it: redacted of what the model's ``redact:`` and
        the key's policy name (``gateway/privacy.py``); the caller's own when nothing is to be replaced."""
        assert self.privacy is not None
        redacted = await self.privacy.redact_oip(version, key_id, prepared.decoded)
        if redacted is None:
            return request, prepared
        request = replace(
            request, body=redacted.body, content_type=redacted.content_type, header_length=redacted.header_length
        )
        return request, replace(prepared, decoded=redacted.decoded)

    async def forward(
        self, version: VersionRecord, request: InferRequest, units: int, decoded: oip.InferRequest | None = None
    ) -> tuple[RunnerAnswer, int, int]:
        """Send an OIP request to the version's runner (or its provider's server); the 200 answer with the
        call's size in base units and, of those, the output tokens: the runner's own token counts for a token
        model that reports them (``x-modelmarket-usage``), else ``units`` as counted from the request."""
        headers = [(b"Content-Type", request.content_type or b"application/json")]
        if request.header_length is not None:
            headers.append((b"Inference-Header-Content-Length", request.header_length))
        upstream = self.backends is not None and version.manifest.runtime in UPSTREAMS
        if upstream:
            backend = await self.backends.backend(version)  # type: ignore[union-attr]
            pool, path = backend.pool, f"{backend.prefix}/v2/models/{backend.model}/infer"
            headers.extend(backend.headers)
        else:
            pool = await self.runners.pool_for(version)
            path = f"/v2/models/{version.model_name}/versions/{version.version}/infer"
        call = client_call(version.model_name, version.version, _INFER_ROUTE, backend.upstream if upstream else None)
        if call is not None and call.propagate:  # the runner's span becomes this one's child
            headers.append((TRACEPARENT, call.traceparent))
        try:
            if decoded is not None and getattr(pool, "takes_decoded", False):
                answer = await pool.request("POST", path, request.body, headers, decoded=decoded)
            else:
                answer = await pool.request("POST", path, request.body, headers)
        except BaseException as exc:
            if call is not None:
                call.end(None, error=type(exc).__name__)
            raise
        if call is not None:
            call.end(answer.status, answer.headers)
        if answer.status != 200:  # an upstream may quote the key it was sent: it is never passed on
            raise _runner_error(answer, backend.redact if upstream else None)
        out = 0
        counted = None if upstream else answer.headers.get(USAGE_HEADER)  # only our own runners are believed
        if counted is not None and version.manifest.pricing.unit is UnitKind.TOKENS_1K:
            units, out = _counted_tokens(counted, units)
        return answer, units, out

    def usage_event(
        self,
        event_id: str,
        account: Account,
        version: VersionRecord,
        units: int,
        started: float,
        trace: str | None,
        priced: Priced | None = None,
        *,
        quantity_out: int = 0,
        pipeline_call_id: str | None = None,
    ) -> UsageEvent:
        """The usage event of a served call (``units`` base units, of which ``quantity_out`` were output)."""
        pricing = version.manifest.pricing
        return UsageEvent(
            id=event_id,
            source=self.source,
            account_id=account.id,
            time=self.clock(),
            model=version.model_name,
            version=version.version,
            provider_account_id=version.provider_account_id,
            unit_kind=pricing.unit,
            quantity=units,
            unit_price=pricing.price_per_iu if priced is None else priced.unit_price,
            price_factor=Decimal(1) if priced is None else priced.factor,
            currency=pricing.currency,
            latency_ms=Decimal(int((time.perf_counter() - started) * 1_000_000)) * _MS,
            trace_id=trace,
            quantity_out=quantity_out,
            pipeline_call_id=pipeline_call_id,
        )


async def _request_digest(name: str, ref: str | None, request: InferRequest) -> str:
    """What identifies the request behind an Idempotency-Key: the model reference, the framing headers and the
    body (hashed off the event loop when it is large)."""
    head = b"\0".join([name.encode(), (ref or "").encode(), request.content_type or b"", request.header_length or b""])
    if len(request.body) > OFFLOAD_DECODE_BYTES:
        return await asyncio.to_thread(_sha256, head, request.body)
    return _sha256(head, request.body)


def _sha256(head: bytes, body: bytes) -> str:
    h = hashlib.sha256(head)
    h.update(b"\0")
    h.update(body)
    return h.hexdigest()


def _replayed(answer: InferAnswer) -> InferAnswer:
    return replace(answer, headers=[*answer.headers, (b"idempotency-replayed", b"true")], replayed=True)


def _idempotency_key(raw: bytes) -> str:
    if not IDEMPOTENCY_KEY_RE.match(raw):
        raise InvalidInput(
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_CHARS} printable ASCII characters without spaces"
        )
    return raw.decode("ascii")


def _reused(key: str) -> str:
    return (
        f"Idempotency-Key {key!r} was already used for a different request (model, version or body); "
        "use a new key for a new request"
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
    return _Prepared(units=version.manifest.pricing.unit.measure(declared), decoded=request)


def _counted_tokens(raw: bytes, estimate: int) -> tuple[int, int]:
    """(tokens, output tokens) from a runner's ``x-modelmarket-usage: PROMPT,COMPLETION``; the gateway's own
    estimate if the header is malformed."""
    prompt, _, completion = raw.partition(b",")
    if not (prompt.isdigit() and completion.isdigit() and len(prompt) < 12 and len(completion) < 12):
        return estimate, 0
    total = int(prompt) + int(completion)
    return (total, int(completion)) if total > 0 else (estimate, 0)


def _runner_error(answer: RunnerAnswer, redact: Callable[[str], str] | None = None) -> DomainError | BodyTooLarge:
    message = _message(answer.body) if redact is None else redact(_message(answer.body))
    if answer.status == 413:
        return BodyTooLarge(message)
    if answer.status == 429:  # a provider's server is busy: another target may take the call
        retry = answer.headers.get(b"retry-after")
        return UpstreamBusy(f"the model's server is busy (429): {message}", retry.decode("latin-1") if retry else None)
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
