"""Builds the gateway's observability from its settings: the request observers and the ``/metrics`` endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelmarket.observability import Observability, RequestObserver

if TYPE_CHECKING:
    from modelmarket.settings import Settings


def gateway_observability(settings: Settings, supervisor: Any = None, state: Any = None) -> tuple[Observability, Any]:
    """(the observers of every request, the ASGI app answering ``GET /metrics`` or None).

    The order of the observers matters: the tracer starts first (its span is current while the request is served)
    and, finishing in reverse order, ends last, so metrics and the log line see the trace id."""
    observers: list[RequestObserver] = []
    metrics_app: Any = None
    # -- tracing (observability/tracing.py) --
    from modelmarket.observability.tracing import IncomingTrace, gateway_tracing

    if settings.tracing:  # spans, exported over OTLP/HTTP when an endpoint is set
        observers.append(gateway_tracing(settings.otlp_endpoint, settings.trace_sample_ratio, settings.gateway_id))
    else:  # no span: an incoming traceparent's trace id still names the call in the log and the usage event
        observers.append(IncomingTrace())
    # -- metrics (observability/metrics.py) --
    if settings.metrics_enabled:  # state: the key store /metrics checks an operator's key against, the catalogue
        from modelmarket.observability.metrics import gateway_metrics

        metrics_observer, metrics_app = gateway_metrics(settings, supervisor, state)
        observers.append(metrics_observer)
    # -- request log (observability/logs.py) --
    from modelmarket.observability.logs import request_log

    observers.append(request_log(settings.logs_dir, settings.log_max_bytes, settings.log_backups, settings.log_stderr))
    return Observability(tuple(observers)), metrics_app
