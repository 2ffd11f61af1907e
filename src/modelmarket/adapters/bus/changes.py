"""Change feeds: how a process that committed an audited change tells every gateway replica to look at once.

The message carries nothing: the change itself is read from the audit chain (``gateway/invalidation.py``), so a
lost, repeated or reordered message never makes a replica wrong, only slower (its poll of the audit head, every
``MODELMARKET_INVALIDATION_POLL_S``, is the fallback).

- ``LocalChangeFeed`` (no bus configured): tells this process's own subscribers only; other processes see the
  change at their next poll.
- ``NatsChangeFeed`` (``MODELMARKET_BUS_URL=nats://...``): core NATS (not JetStream: nothing needs keeping) on the
  subject ``{bus_namespace}.changes``. One connection per process, on a thread of its own with its own event loop,
  so ``publish`` can be called from any thread (the store's commit hook runs in whatever thread committed) and
  never blocks the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Callback = Callable[[], None]
CONNECT_TIMEOUT_S = 2
"""How long one attempt to reach the NATS server may take."""
FLUSH_TIMEOUT_S = 2.0
"""How long a publish waits for the server's acknowledgement of the flush, and ``close`` for pending publishes."""
RESUBSCRIBE_S = 2.0
"""Wait between attempts to subscribe while the NATS server cannot be reached (the poll covers the gap)."""
ERROR_LOG_INTERVAL_S = 60.0
"""Connection errors are logged at most this often (the client reports every failed reconnect)."""


def changes_subject(namespace: str) -> str:
    return f"{namespace}.changes"


class _Subscribers:
    """The callbacks of one process, called from any thread; one that raises is logged, the others still run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callback] = []

    def add(self, callback: Callback) -> Callback:
        with self._lock:
            self._callbacks.append(callback)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return remove

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._callbacks)

    def call(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a change feed subscriber failed")


class LocalChangeFeed:
    """No bus: a change reaches this process's subscribers at once, other processes at their next poll."""

    def __init__(self) -> None:
        self._subscribers = _Subscribers()

    def publish(self) -> None:
        self._subscribers.call()

    def subscribe(self, callback: Callback) -> Callback:
        return self._subscribers.add(callback)

    def close(self) -> None:
        pass


class NatsChangeFeed:
    """Core NATS: ``publish`` sends an empty message on ``subject``; every subscribed process is called back on
    each message, and again whenever its connection comes back (messages sent meanwhile were lost)."""

    def __init__(self, url: str, subject: str) -> None:
        self.url = url
        self.subject = subject
        self._error_logged_at = -ERROR_LOG_INTERVAL_S
        self._subscribers = _Subscribers()
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Any = None
        self._connect_lock: asyncio.Lock | None = None
        self._subscribing: concurrent.futures.Future[None] | None = None
        self._pending: set[concurrent.futures.Future[None]] = set()

    # -- the caller's side (any thread) --------------------------------------------------------------------

    def publish(self) -> None:
        """Send the message in the background; a failure is logged (other replicas then see the change at their
        next poll)."""
        future = asyncio.run_coroutine_threadsafe(self._publish(), self._started())
        with self._start_lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def subscribe(self, callback: Callback) -> Callback:
        """Call ``callback`` (on the feed's thread) on every message; returns the function that stops it."""
        remove = self._subscribers.add(callback)
        loop = self._started()
        with self._start_lock:
            if self._subscribing is None:
                self._subscribing = asyncio.run_coroutine_threadsafe(self._subscribe_until_done(), loop)
        return remove

    def close(self) -> None:
        """Wait (bounded) for publishes under way, close the connection and end the thread."""
        with self._start_lock:
            loop, thread, pending = self._loop, self._thread, list(self._pending)
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        concurrent.futures.wait(pending, timeout=FLUSH_TIMEOUT_S)
        closing = asyncio.run_coroutine_threadsafe(self._close(), loop)
        with contextlib.suppress(Exception):
            closing.result(timeout=FLUSH_TIMEOUT_S + 1)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=FLUSH_TIMEOUT_S)
        if not thread.is_alive():
            loop.close()
        self._nc = self._connect_lock = self._subscribing = None  # bound to the loop just stopped

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._start_lock:
            self._pending.discard(future)

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="change-feed", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    # -- the feed's thread -----------------------------------------------------------------------------------

    async def _connection(self) -> Any:
        import nats  # only a process configured with a NATS bus loads the client

        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._nc is None or self._nc.is_closed:
                self._nc = await nats.connect(
                    self.url,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    max_reconnect_attempts=-1,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
            return self._nc

    async def _publish(self) -> None:
        try:
            nc = await self._connection()
            await nc.publish(self.subject, b"")
            await nc.flush(timeout=FLUSH_TIMEOUT_S)
        except Exception as exc:
            log.warning("could not announce a change on %s (%s): replicas see it at their next poll", self.url, exc)

    async def _subscribe_until_done(self) -> None:
        while True:
            try:
                nc = await self._connection()
                await nc.subscribe(self.subject, cb=self._message)
                await nc.flush(timeout=FLUSH_TIMEOUT_S)
            except Exception as exc:
                log.warning("cannot subscribe to %s on %s yet (%s); polling meanwhile", self.subject, self.url, exc)
                await asyncio.sleep(RESUBSCRIBE_S)
                continue
            self._subscribers.call()  # anything missed before the subscription: look now
            return

    async def _message(self, _msg: Any) -> None:
        self._subscribers.call()

    async def _reconnected(self) -> None:
        self._subscribers.call()

    async def _error(self, exc: Exception) -> None:
        # the client calls this at every failed reconnect (several a second while the server is away): once a minute
        now = time.monotonic()
        if now - self._error_logged_at >= ERROR_LOG_INTERVAL_S:
            self._error_logged_at = now
            log.warning("change feed connection to %s: %s (retrying; polls carry changes meanwhile)", self.url, exc)

    async def _close(self) -> None:
        if self._subscribing is not None:
            self._subscribing.cancel()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


def make_change_feed(bus_url: str | None, namespace: str) -> LocalChangeFeed | NatsChangeFeed:
    """The feed for ``MODELMARKET_BUS_URL``: NATS for ``nats://``, otherwise this process alone."""
    if bus_url is not None and bus_url.startswith(("nats://", "tls://")):
        return NatsChangeFeed(bus_url, changes_subject(namespace))
    return LocalChangeFeed()
