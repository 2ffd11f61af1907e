"""Adaptive batching for one model version: concurrent requests joined into one model call along the first axis.

Used inside a runner process and inside the gateway (in-process profile). Callers ``await batcher.predict(...)``
as they would call the model; the ``Batcher`` joins requests that can share a call, runs the call off the event
loop, and hands each caller exactly the rows an unbatched call would have returned (bit-identical for a
deterministic row-wise model: the same rows through the same arithmetic, sliced back out).

When requests are joined
    Same input names in the same order, same datatypes and numpy dtypes, same shape after the first dimension,
    equal tensor parameters and equal call ``parameters`` (canonical orjson dumps with sorted keys). Every input of
    a request must share one first dimension (its "rows"). A request whose rows reach ``max_batch_size`` runs alone;
    the rows of a batch never exceed ``max_batch_size``. Anything else (scalars, a parameter value orjson cannot
    dump, ragged first dimensions) runs alone, never mixed.

Order and fairness
    A batch always starts with the oldest waiting request and adds later joinable requests in arrival order,
    skipping ones that do not fit. A request is only ever overtaken by requests that join a batch ahead of it, so it
    waits at most one batch per request that arrived before it.

When the worker waits (the adaptive rule)
    One worker runs one model call at a time. A request that arrives when the worker is idle is dispatched at once,
    unless *recent traffic shows concurrency*: the previous batch joined ``n >= 2`` requests and ended less than
    ``CONCURRENCY_MEMORY_S`` ago. Only then does the worker hold the batch while all of these hold:

    - the batch has fewer than ``n`` requests (the concurrency just observed) and fewer than ``max_batch_size`` rows;
    - less than ``max_delay_ms`` has passed since the oldest request in it arrived;
    - the version has not shown itself non-row-wise.

    Requests that arrive while a batch runs queue up and form the next batch the moment the worker is free; if the
    oldest has already waited ``max_delay_ms`` (a model call longer than that), nothing more is added by waiting.
    So no request is ever held on purpose for more than ``max_delay_ms`` after its arrival, concurrency 1 sees no
    added latency, and under steady concurrency ``c`` batches settle at ``c`` requests with the wait ending as soon
    as the ``c``-th arrives. A wait is woken by each arrival (an ``asyncio.Event``), never by polling.

Fallbacks
    - Not row-wise: if any output of a joined call does not have the batch's total rows as its first dimension,
      each request of that batch is run alone, and the version is remembered as not batchable (logged once): from
      then on every request runs alone.
    - Errors: if a joined call raises, each request of the batch is re-run alone, so only a bad request fails, with
      its own exception, unchanged. A joined batch can exceed a runtime's ``input_limits`` that each request alone
      meets; it then costs one failed call before the singles succeed, so size ``max_batch_size`` under the limit.

Threads
    The model runs in ``executor``; by default a dedicated single-thread ``ThreadPoolExecutor``, so calls into the
    model are serialized on one thread (many runtimes are not thread-safe). The Batcher itself never has two calls
    in flight, whatever the executor.

Bounds
    At most ``max_queued`` requests wait; beyond that ``predict`` refuses with ``BatcherFull`` (a ``NotReady``: the
    gateway answers 503 and the client retries). The gateway bounds concurrency upstream, so this is a backstop.
    Picking a batch scans the queue once, so its cost is bounded by ``max_queued``.

A Batcher belongs to one event loop. ``close()`` refuses new calls, fails queued ones with ``BatcherClosed`` and
lets the batch in flight finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelmarket.core.errors import NotReady
from modelmarket.core.tensors import Tensor, TensorSpec

__all__ = [
    "CONCURRENCY_MEMORY_S",
    "DEFAULT_MAX_QUEUED",
    "BatchStats",
    "Batcher",
    "BatcherClosed",
    "BatcherFull",
    "spec_allows_batching",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED = 1024
"""Requests that may wait for the worker before ``predict`` refuses with ``BatcherFull``."""
CONCURRENCY_MEMORY_S = 1.0
"""How long the size of the previous batch counts as evidence of concurrency once the worker has gone idle."""

PredictFn = Callable[[Sequence[Tensor], Mapping[str, Any]], list[Tensor]]
_Key = tuple[Any, ...]


def spec_allows_batching(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Whether a version's declared shapes let requests be joined: every input and output must have a variable
    (-1) first dimension. A joined call has the batch's total rows there, and a runtime may rely on the declared
    shapes (``Runtime.predict`` receives inputs "already validated against ``spec.inputs``"), so a version that
    fixes its first dimension must get a ``Batcher`` with ``max_batch_size=1`` or none at all."""
    return bool(inputs) and all(len(t.shape) >= 1 and t.shape[0] == -1 for t in (*inputs, *outputs))


class BatcherClosed(NotReady):
    """The batcher was closed (its version is being unloaded) before this request ran."""


class BatcherFull(NotReady):
    """Too many requests are already waiting for this version's batcher; nothing was run."""


@dataclass(frozen=True, slots=True)
class BatchStats:
    """Counters since the batcher was built, for benchmarks and tests."""

    calls: int
    """``predict`` calls accepted."""
    batches: int
    """Batches dispatched (a request that ran alone is a batch of one)."""
    model_calls: int
    """Calls into the model function, including the single re-runs of the fallbacks."""
    largest_batch: int
    """Most requests joined into one model call."""
    largest_batch_rows: int
    """Most rows (first-dimension total) in one model call."""
    batchable: bool
    """False once the version has returned outputs that are not row-wise."""


@dataclass(eq=False, slots=True)
class _Entry:
    inputs: Sequence[Tensor]
    parameters: Mapping[str, Any]
    key: _Key | None
    """None: never joined with another request."""
    rows: int
    future: asyncio.Future[list[Tensor]]
    arrived_s: float


class Batcher:
    """Joins concurrent ``predict`` calls for one model version into batched calls of ``predict`` (see module doc)."""

    def __init__(
        self,
        predict: PredictFn,
        max_batch_size: int,
        max_delay_ms: float,
        *,
        executor: concurrent.futures.Executor | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        name: str = "model",
    ) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a whole number of at least 1, not {max_batch_size!r}")
        if not math.isfinite(max_delay_ms) or max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be a finite number of at least 0, not {max_delay_ms!r}")
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, not {max_queued!r}")
        self._predict = predict
        self._max_rows = max_batch_size
        self._max_delay_s = max_delay_ms / 1000.0
        self._max_queued = max_queued
        self._name = name
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"batcher-{name}")
        self._queue: deque[_Entry] = deque()
        self._arrival = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._batchable = True
        self._last_batch_requests = 0
        self._last_batch_end_s = -math.inf
        self._calls = self._batches = self._model_calls = self._largest = self._largest_rows = 0

    @property
    def stats(self) -> BatchStats:
        return BatchStats(
            self._calls, self._batches, self._model_calls, self._largest, self._largest_rows, self._batchable
        )

    async def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        """What ``predict(inputs, parameters)`` returns (or raises), possibly computed in a joined call."""
        if self._closed:
            raise BatcherClosed(f"{self._name}: this version is shutting down; retry the request")
        if len(self._queue) >= self._max_queued:
            raise BatcherFull(
                f"{self._name}: {len(self._queue):,} requests are already waiting for this version; retry shortly"
            )
        loop = asyncio.get_running_loop()
        rows = _rows(inputs)
        key = _join_key(inputs, parameters) if rows is not None and rows < self._max_rows else None
        entry = _Entry(inputs, parameters, key, rows or 0, loop.create_future(), loop.time())
        self._queue.append(entry)
        self._calls += 1
        self._arrival.set()
        if self._worker is None:
            self._worker = loop.create_task(self._drain(), name=f"batcher-{self._name}")
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._forget(entry)
            raise

    async def close(self) -> None:
        """Refuse new calls, fail the queued ones with ``BatcherClosed``, and wait for the batch in flight."""
        self._closed = True
        queued, self._queue = self._queue, deque()
        for entry in queued:
            if not entry.future.done():
                entry.future.set_exception(
                    BatcherClosed(f"{self._name}: this version shut down before the request ran; retry the request")
                )
        self._arrival.set()  # a worker holding a batch open looks again and finds nothing
        if self._worker is not None:
            await asyncio.wait({self._worker})  # not cancelled if close() is: the batch in flight completes
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    def _forget(self, entry: _Entry) -> None:
        """Drop a cancelled caller's entry if it is still queued (its work is then never done)."""
        try:
            self._queue.remove(entry)
        except ValueError:
            return  # already taken into a batch (or failed by close): its result is simply not delivered
        self._arrival.set()

    # -- the worker: one task while there is work, none while idle ---------------------------------------------

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = await self._next_batch()
                if batch:
                    await self._run(batch)
        except asyncio.CancelledError:  # loop shutdown: nobody will serve the queue, so answer it
            queued, self._queue = self._queue, deque()
            for entry in queued:
                if not entry.future.done():
                    entry.future.set_exception(BatcherClosed(f"{self._name}: the batch worker stopped; retry"))
            raise
        finally:
            self._worker = None

    async def _next_batch(self) -> list[_Entry]:
        """Pick the next batch (module doc, "When the worker waits"), take it off the queue and return it."""
        loop = asyncio.get_running_loop()
        while True:
            while self._queue and self._queue[0].future.done():
                self._queue.popleft()
            if not self._queue:
                return []
            batch, rows = self._select(self._queue[0])
            wait_s = self._wait_s(batch, rows, loop.time())
            if wait_s <= 0:
                break
            self._arrival.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._arrival.wait()
            except TimeoutError:
                pass
        taken = {id(entry) for entry in batch}
        self._queue = deque(entry for entry in self._queue if id(entry) not in taken)
        return batch

    def _select(self, head: _Entry) -> tuple[list[_Entry], int]:
        """The oldest request and the later ones that join it, in arrival order, within ``max_batch_size`` rows."""
        if head.key is None or not self._batchable:
            return [head], head.rows
        batch, rows = [head], head.rows
        for entry in self._queue:
            if rows >= self._max_rows:
                break
            if entry is head or entry.future.done() or entry.key != head.key or rows + entry.rows > self._max_rows:
                continue
            batch.append(entry)
            rows += entry.rows
        return batch, rows

    def _wait_s(self, batch: list[_Entry], rows: int, now_s: float) -> float:
        """Seconds to hold ``batch`` open for more requests; 0 or less to dispatch now."""
        if batch[0].key is None or not self._batchable or rows >= self._max_rows:
            return 0.0
        if now_s - self._last_batch_end_s > CONCURRENCY_MEMORY_S or len(batch) >= self._last_batch_requests:
            return 0.0
        return batch[0].arrived_s + self._max_delay_s - now_s

    async def _run(self, batch: list[_Entry]) -> None:
        """Run one batch and settle every live future in it; never leaves a caller waiting forever."""
        live = [entry for entry in batch if not entry.future.done()]
        if not live:
            return
        self._batches += 1
        try:
            if len(live) == 1:
                await self._run_alone(live[0])
            else:
                await self._run_joined(live)
        except BaseException as exc:  # the worker was cancelled (loop shutdown) or a bug: answer, then re-raise
            for entry in live:
                if not entry.future.done():
                    entry.future.set_exception(
                        BatcherClosed(f"{self._name}: the batch worker stopped; retry the request")
                        if isinstance(exc, asyncio.CancelledError)
                        else exc
                    )
            raise
        finally:
            self._last_batch_requests = len(live)
            self._last_batch_end_s = asyncio.get_running_loop().time()

    async def _run_joined(self, live: list[_Entry]) -> None:
        rows = [entry.rows for entry in live]
        self._largest = max(self._largest, len(live))
        self._largest_rows = max(self._largest_rows, sum(rows))
        try:
            outputs = await self._call(_concat([entry.inputs for entry in live]), live[0].parameters)
        except Exception as exc:
            log.debug("%s: joined call of %d requests failed (%r); running each alone", self._name, len(live), exc)
            await self._run_each(live)
            return
        parts = _split(outputs, rows)
        if parts is None:
            self._not_batchable(outputs, sum(rows))
            await self._run_each(live)
            return
        for entry, part in zip(live, parts, strict=True):
            if not entry.future.done():
                entry.future.set_result(part)

    async def _run_each(self, live: list[_Entry]) -> None:
        for entry in live:
            if not entry.future.done():  # a caller cancelled meanwhile is not run
                await self._run_alone(entry)

    async def _run_alone(self, entry: _Entry) -> None:
        self._largest = max(self._largest, 1)
        self._largest_rows = max(self._largest_rows, entry.rows)
        try:
            outputs = await self._call(entry.inputs, entry.parameters)
        except Exception as exc:
            if not entry.future.done():
                entry.future.set_exception(exc)
            return
        if not entry.future.done():
            entry.future.set_result(outputs)

    async def _call(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        self._model_calls += 1
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _invoke, self._predict, inputs, parameters
        )

    def _not_batchable(self, outputs: Sequence[Tensor], rows: int) -> None:
        if self._batchable:
            shapes = ", ".join(f"{t.name!r} {list(np.shape(t.data))}" for t in outputs)
            log.warning(
                "%s: outputs of a joined call of %d rows are not row-wise (%s); every request runs alone from now on",
                self._name,
                rows,
                shapes,
            )
        self._batchable = False


# -- pure helpers: joining and splitting ------------------------------------------------------------------------


def _invoke(predict: PredictFn, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
    """Call the model in the executor thread. A ``StopIteration`` cannot cross an asyncio future (the awaiting
    caller would hang), so it alone is wrapped."""
    try:
        return predict(inputs, parameters)
    except StopIteration as exc:
        raise RuntimeError(f"the model raised StopIteration: {exc!r}") from exc


def _rows(inputs: Sequence[Tensor]) -> int | None:
    """The first dimension every input shares, or None (no inputs, a scalar, ragged, or ``shape`` != data)."""
    rows: int | None = None
    for tensor in inputs:
        shape = tensor.data.shape
        if not shape or list(shape) != list(tensor.shape) or (rows is not None and shape[0] != rows):
            return None
        rows = shape[0]
    return rows


def _dump(value: Mapping[str, Any]) -> bytes | None:
    try:
        return orjson.dumps(dict(value), option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError: a value JSON cannot carry, or a non-str key
        return None


def _join_key(inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> _Key | None:
    """Equal keys mean two requests can share a call; None means the request never joins another."""
    call = _dump(parameters)
    if call is None:
        return None
    key: list[Any] = [call]
    for tensor in inputs:
        tensor_parameters = _dump(tensor.parameters)
        if tensor_parameters is None:
            return None
        key.append((tensor.name, tensor.datatype, tensor.data.dtype.str, tensor.data.shape[1:], tensor_parameters))
    return tuple(key)


def _concat(requests: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """The requests' inputs joined along the first dimension (object arrays of ``BYTES`` too)."""
    joined = []
    for column in zip(*requests, strict=True):
        first = column[0]
        data = np.concatenate([tensor.data for tensor in column], axis=0)
        joined.append(Tensor(first.name, first.datatype, list(data.shape), data, dict(first.parameters)))
    return joined


def _split(outputs: Sequence[Tensor], rows: Sequence[int]) -> list[list[Tensor]] | None:
    """Each request's slice of every output, or None when an output's first dimension is not the total rows."""
    total = sum(rows)
    if any(np.ndim(t.data) == 0 or t.data.shape[0] != total for t in outputs):
        return None
    parts: list[list[Tensor]] = []
    start = 0
    for count in rows:
        part = []
        for tensor in outputs:
            data = tensor.data[start : start + count]
            part.append(Tensor(tensor.name, tensor.datatype, list(data.shape), data, dict(tensor.parameters)))
        parts.append(part)
        start += count
    return parts
