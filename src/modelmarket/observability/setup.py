"""Builds the gateway's observability from its settings: the request observers and the ``/metrics`` endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelmarket.observability import Observability, RequestObserver

if TYPE_CHECKING:
    from modelmarket.settings import Settings


def gateway_observability(settings: Settings, supervisor: Any = None) -> tuple[Observability, Any]:
    """(the observers of every request, the ASGI app answering ``GET /metrics`` or None).

    The order of the observers matters: the tracer starts first (its span is current while the request is served)
    and, finishing in reverse order, ends last, so metrics and the log line see the trace id."""
    observers: list[RequestObserver] = []
    metrics_app: Any = None
    # -- tracing (observability/tracing.py) --
    # -- metrics (observability/metrics.py) --
    # -- request log (observability/logs.py) --
    return Observability(tuple(observers)), metrics_app
