"""Observability: Prometheus metrics (``metrics.py``), OpenTelemetry traces (``tracing.py``) and the JSON request
log (``logs.py``), fed by one :class:`~modelmarket.observability.context.CallInfo` per request.

:class:`Observability` is what the gateway's edge holds: ``begin`` when a request arrives, ``finish`` when its
answer is sent. Each part is optional (off by settings) and none of them may raise into a request.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from contextvars import Token
from dataclasses import dataclass
from typing import Any, Protocol

from modelmarket.observability.context import CallInfo, begin, current, end, note, note_answer_headers

__all__ = ["CallInfo", "Observability", "RequestObserver", "current", "note", "note_answer_headers"]
log = logging.getLogger(__name__)


class RequestObserver(Protocol):
    """A part that sees every request: ``start`` before it is served (a span opens), ``finish`` after."""

    def start(self, info: CallInfo, scope: MutableMapping[str, Any]) -> None: ...

    def finish(self, info: CallInfo) -> None: ...


@dataclass
class Observability:
    observers: tuple[RequestObserver, ...] = ()

    def begin(self, scope: MutableMapping[str, Any]) -> tuple[CallInfo, Token[CallInfo | None]]:
        info, token = begin(scope["method"], scope["path"])
        for observer in self.observers:
            try:
                observer.start(info, scope)
            except Exception:  # observability never breaks a request
                log.exception("observer %s failed at the start of a request", type(observer).__name__)
        return info, token

    def finish(self, info: CallInfo, token: Token[CallInfo | None]) -> None:
        import time

        info.ended = time.perf_counter()
        try:
            for observer in reversed(self.observers):
                try:
                    observer.finish(info)
                except Exception:
                    log.exception("observer %s failed at the end of a request", type(observer).__name__)
        finally:
            end(token)
