"""Observability: Prometheus metrics (``metrics.py``), OpenTelemetry traces (``tracing.py``) and the JSON request
log (``logs.py``), fed by one :class:`~modelmarket.observability.context.CallInfo` per request.

:class:`Observability` is what the gateway's edge holds: ``begin`` when a request arrives, ``finish`` when its
answer is sent, ``close`` at the end of the gateway's shutdown (the request log's last lines and the spans still
queued are written out there: uvicorn re-raises SIGTERM once it has shut down, so ``atexit`` would not run). Each
part is optional (off by settings) and none of them may raise into a request.
"""

from __future__ import annotations

import logging
import time
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


CLOSE_TIMEOUT_S = 5.0
"""How long ``Observability.close`` waits, at most, for all its observers together."""


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
        info.ended = time.perf_counter()
        try:
            for observer in reversed(self.observers):
                try:
                    observer.finish(info)
                except Exception:
                    log.exception("observer %s failed at the end of a request", type(observer).__name__)
        finally:
            end(token)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write out what the observers hold, calling ``close(timeout_s)`` on those that have one (the request
        log's queued lines, then the spans not yet exported), all within ``timeout_s``. Blocks: call it off the
        event loop."""
        deadline = time.monotonic() + timeout_s
        for observer in reversed(self.observers):
            close = getattr(observer, "close", None)
            if close is None:
                continue
            try:
                close(max(deadline - time.monotonic(), 0.1))
            except Exception:
                log.exception("observer %s failed to close", type(observer).__name__)
