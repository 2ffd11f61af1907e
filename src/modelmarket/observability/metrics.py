"""Prometheus metrics at ``GET /metrics``: what the gateway serves, bills and refuses, its runners, its metering child.

Three sources, one exposition (every metric is listed in ``docs/metrics.md``):

* the requests, recorded by :class:`MetricsObserver` as each one ends into plain tables of this gateway alone
  (``metrics_requests.py``: a few additions per request), exposed through its own
  :class:`~prometheus_client.CollectorRegistry`: gateways built side by side in one process never see each
  other's figures;
* the runners, read from the supervisor when Prometheus scrapes (``metrics_runners.py``): they run sandboxed,
  without network or a writable shared folder, so they are measured from the gateway's side;
* the metering child, which writes prometheus-client's multiprocess files into :func:`child_metrics_dir`
  (``metrics_metering.py``); the gateway merges them into its answer.

A scrape takes its figures on the event loop (:meth:`GatewayMetrics.refresh`: a copy of the request tables, the
supervisor's snapshot) and renders them on a worker thread.

Label values come from bounded sets only: ``model`` and ``version`` from the catalogue (a name that is not
published is recorded as ``""``, so made-up names in refused calls grow nothing), status codes, the protocols,
and error types, GenAI operations and currencies through a capped set.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import re
import shutil
from collections.abc import Awaitable, Callable, MutableMapping
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest

from modelmarket.core.errors import PermissionDenied
from modelmarket.core.process import pid_alive
from modelmarket.observability.context import CallInfo
from modelmarket.observability.metrics_metering import MULTIPROC_ENV, ChildFilesCollector
from modelmarket.observability.metrics_requests import (
    GENAI_DURATION_BUCKETS_S,
    GENAI_TOKEN_BUCKETS,
    REQUEST_BUCKETS_S,
    Billed,
    Histo,
    RequestCollector,
    RequestTables,
)
from modelmarket.observability.metrics_runners import RunnerCollector
from modelmarket.runtime import oip
from modelmarket.runtime.asgi import Receive, Scope, Send, header, respond

if TYPE_CHECKING:
    from modelmarket.accounts import Account
    from modelmarket.registry.catalogue import Catalogue
    from modelmarket.settings import Settings

__all__ = [
    "GatewayMetrics",
    "MetricsEndpoint",
    "MetricsObserver",
    "child_metrics_dir",
    "gateway_metrics",
    "prepare_child_metrics_dir",
    "set_child_metrics_env",
]

MAX_ERROR_TYPES = 64
MAX_OPERATIONS = 16
MAX_CURRENCIES = 32
MAX_AMOUNT_CHARS = 64
"""Longest IU or cost text read (the gateway writes them; anything longer is not a figure it wrote)."""
MAX_ACCEPT_CHARS = 512
"""Longest ``Accept`` header of a scrape read to choose a format (Prometheus sends about 200 characters)."""
OTHER = "other"
"""The label value of an error type, operation or currency past its cap or not of its form."""
_OPERATION_BY_PATH = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/v1/audio/transcriptions": "transcription",
}
"""The GenAI operation of an OpenAI call whose plane did not note one."""
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}|[1-5][0-9][0-9]")
_CURRENCY = re.compile(r"[A-Z]{3}")


class _Capped:
    """A label's admitted values: of the given form, at most ``cap`` distinct; anything else is :data:`OTHER`."""

    def __init__(self, cap: int, form: re.Pattern[str]) -> None:
        self.cap = cap
        self.form = form
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.cap or not self.form.fullmatch(value):
            return OTHER
        self.seen.add(value)
        return value


class GatewayMetrics:
    """One gateway's metrics: its own registry, the request tables and the collectors read at scrape time.

    ``catalogue`` gives the catalogue snapshot the model labels are checked against; ``runners`` is the runner
    supervisor (anything with ``snapshot()``); ``child_dir`` holds the metering child's multiprocess files."""

    def __init__(
        self,
        catalogue: Callable[[], Catalogue | None],
        runners: Any = None,
        child_dir: Path | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.tables = RequestTables()
        self.registry = CollectorRegistry()
        self.requests = RequestCollector(self.tables)
        self.registry.register(self.requests)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.runners = RunnerCollector(runners) if runners is not None else None
        if self.runners is not None:
            self.registry.register(self.runners)
        if child_dir is not None:
            self.registry.register(ChildFilesCollector(child_dir))
        self._error_types = _Capped(MAX_ERROR_TYPES, _IDENTIFIER)
        self._operations = _Capped(MAX_OPERATIONS, _IDENTIFIER)
        self._currencies = _Capped(MAX_CURRENCIES, _CURRENCY)

    # -- the hot path: once per request, on the event loop -------------------------------------------------
    def record(self, info: CallInfo) -> None:
        model, version = self._model_labels(info.model, info.version)
        status = info.status
        error_type = ""
        if info.error_type is not None or status >= 400:
            error_type = self._error_types(info.error_type or str(status))
        key = (info.protocol, model, version, status, error_type)
        histo = self.tables.requests.get(key)
        if histo is None:
            histo = self.tables.requests[key] = Histo(REQUEST_BUCKETS_S)
        duration_s = info.duration_s
        histo.observe(REQUEST_BUCKETS_S, duration_s)
        billed = info.iu is not None and 200 <= status < 300
        if billed:
            self._record_billing(info, model, version)
        if info.protocol == "openai":
            self._record_genai(info, model, error_type, duration_s, billed)

    def _model_labels(self, model: str | None, version: str | None) -> tuple[str, str]:
        """(model, version) when the catalogue publishes them; ``""`` for anything it does not."""
        if model is None:
            return "", ""
        catalogue = self.catalogue()
        entry = catalogue.models.get(model) if catalogue is not None else None
        if entry is None:
            return "", ""
        return model, version if version is not None and version in entry.versions else ""

    def _record_billing(self, info: CallInfo, model: str, version: str) -> None:
        currency = self._currencies(info.currency) if info.currency is not None else ""
        if currency == OTHER:
            currency = ""
        key = (model, version, currency)
        billed = self.tables.billed.get(key)
        if billed is None:
            billed = self.tables.billed[key] = Billed()
        billed.iu += _amount(info.iu)
        if currency:
            billed.revenue += _amount(info.cost)

    def _record_genai(self, info: CallInfo, model: str, error_type: str, duration_s: float, billed: bool) -> None:
        operation = info.operation or _OPERATION_BY_PATH.get(info.path)
        if operation is None:
            return
        operation = self._operations(operation)
        key = (operation, model, error_type)
        histo = self.tables.genai_durations.get(key)
        if histo is None:
            histo = self.tables.genai_durations[key] = Histo(GENAI_DURATION_BUCKETS_S)
        histo.observe(GENAI_DURATION_BUCKETS_S, duration_s)
        if not billed:
            return
        for token_type, tokens in (("input", info.tokens_in), ("output", info.tokens_out)):
            if tokens is None or tokens < 0:
                continue
            key = (operation, model, token_type)
            histo = self.tables.genai_tokens.get(key)
            if histo is None:
                histo = self.tables.genai_tokens[key] = Histo(GENAI_TOKEN_BUCKETS)
            histo.observe(GENAI_TOKEN_BUCKETS, float(tokens))

    # -- a scrape ------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Take what must be read on the event loop: a copy of the request tables, the runners. :meth:`render`
        then renders what the latest refresh took, on any thread."""
        self.requests.refresh()
        if self.runners is not None:
            self.runners.refresh()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for (OpenMetrics or the Prometheus text format); the
        text format 0.0.4 for an ``Accept`` the client library cannot read (or one over ``MAX_ACCEPT_CHARS``)."""
        if accept and len(accept) <= MAX_ACCEPT_CHARS:
            try:
                encoder, content_type = choose_encoder(accept)
                return encoder(self.registry), content_type
            except (TypeError, ValueError):  # a version or escaping it cannot parse: the plain format
                pass
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


def _amount(text: str | None) -> float:
    """A figure the gateway wrote (``0.05`` or ``7/60``) as a float; 0 for anything that is not one."""
    if text is None or len(text) > MAX_AMOUNT_CHARS:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        try:
            value = float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            return 0.0
    return value if 0.0 < value < math.inf else 0.0


class MetricsObserver:
    """The request observer that records a finished request into :class:`GatewayMetrics`."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def start(self, info: CallInfo, scope: MutableMapping[str, Any]) -> None:
        return None

    def finish(self, info: CallInfo) -> None:
        self.metrics.record(info)


Authenticate = Callable[[Scope], Awaitable["Account"]]


class MetricsEndpoint:
    """``GET /metrics``: an operator's API key required (``authenticate`` None: public, as the operator chose)."""

    def __init__(self, metrics: GatewayMetrics, authenticate: Authenticate | None) -> None:
        self.metrics = metrics
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "GET":
            await respond(send, 405, oip.error_body(f"{scope['method']} is not allowed on /metrics; use GET"))
            return
        if self.authenticate is not None:
            account = await self.authenticate(scope)
            if account.role != "operator":
                raise PermissionDenied(
                    f"GET /metrics needs an operator's API key; account {account.name!r} is a {account.role}"
                )
        self.metrics.refresh()
        accept = header(scope, b"accept")
        body, content_type = await asyncio.to_thread(
            self.metrics.render, accept.decode("latin-1") if accept is not None else None
        )
        await respond(send, 200, body, content_type.encode())


# -- the metering child's files ------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_OWNED = re.compile(r".+\.([0-9]{1,10})")
"""A children's folder name: ``<gateway id>.<pid of the gateway that owns it>``."""
MAX_METRICS_FOLDERS = 1024
"""Most folders of ``metrics_dir`` looked at for a gateway that is gone, at a gateway's start."""


def child_metrics_dir(settings: Settings) -> Path:
    """Where this gateway's children write their multiprocess files: ``metrics_dir/<gateway id>.<pid>``, the
    gateway process's own (two gateways on one home never share one, even with the same gateway id)."""
    name = _UNSAFE.sub("_", settings.gateway_id).lstrip(".") or "gateway"
    return settings.metrics_dir / f"{name}.{os.getpid()}"


def prepare_child_metrics_dir(settings: Settings) -> Path:
    """Empty this gateway's children's folder (a gateway starts from zero: files of an earlier run with the same
    pid would add to it), and remove the folders of gateways that are no longer running."""
    directory = child_metrics_dir(settings)
    remove_folders_of_dead_gateways(settings.metrics_dir)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    return directory


def remove_folders_of_dead_gateways(metrics_dir: Path) -> list[Path]:
    """Delete the children's folders whose gateway process is gone (a pid now of another process keeps its
    folder: a few files, never read). Returns what it removed."""
    removed: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(metrics_dir) as entries:
        for entry in itertools.islice(entries, MAX_METRICS_FOLDERS):
            owner = _OWNED.fullmatch(entry.name)
            if owner is None or not entry.is_dir(follow_symlinks=False) or pid_alive(int(owner[1])):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def set_child_metrics_env(env: dict[str, str], settings: Settings) -> None:
    """Point a child at the gateway's multiprocess folder (metrics on), or at none (off)."""
    if settings.metrics_enabled:
        env[MULTIPROC_ENV] = str(child_metrics_dir(settings).resolve())
    else:
        env.pop(MULTIPROC_ENV, None)


def gateway_metrics(settings: Settings, supervisor: Any, state: Any) -> tuple[MetricsObserver, MetricsEndpoint | None]:
    """A gateway's metrics: the request observer and the ``/metrics`` endpoint (None: no key store to check
    an operator's key against, and the operator did not make the metrics public).

    The children's folder is emptied here, before the gateway starts its metering child."""
    metrics = GatewayMetrics(
        lambda: state.catalogue if state is not None else None, supervisor, prepare_child_metrics_dir(settings)
    )
    if settings.metrics_public:
        return MetricsObserver(metrics), MetricsEndpoint(metrics, None)
    if state is None:
        return MetricsObserver(metrics), None
    from modelmarket.gateway.auth import authenticate_key

    async def operator_key(scope: Scope) -> Account:
        return (await authenticate_key(state, scope))[0]

    return MetricsObserver(metrics), MetricsEndpoint(metrics, operator_key)
