"""The gateway's side of the lab's experiments (``lab.experiments``): a call of a model in a running experiment goes
to the variant its API key is assigned, and the call is recorded off the hot path.

``ExperimentRecorder`` keeps the calls in a bounded in-memory queue that one task writes to the store in batches
(every ``FLUSH_S`` or ``BATCH_MAX`` calls), in a worker thread. A full queue drops the newest calls and counts them
(an experiment's statistics are a sample; serving is never held up for them). Stopping writes what is queued.

A call is counted a failure of its variant only when the failure is the variant's (``gateway.attempts.RETRIABLE``:
the model failed, its runner was unreachable, busy or late); a caller's error (a bad request, a refused limit) is
not part of the experiment and is not recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from modelmarket.core.ids import RequestIds
from modelmarket.gateway.attempts import RETRIABLE
from modelmarket.lab.experiments import Experiment
from modelmarket.lab.ports import ExperimentCall

log = logging.getLogger(__name__)
QUEUE_MAX = 10_000
BATCH_MAX = 1_000
FLUSH_S = 0.5
PREDICTION_MAX_CHARS = 200
_ids = RequestIds("xc_")


def prediction_of(body: bytes, content_type: bytes) -> str | None:
    """The first value of the answer's first output, as text (what ``accuracy`` compares a label with); None for a
    binary answer or one without outputs."""
    if not content_type.startswith(b"application/json"):
        return None
    try:
        doc = orjson.loads(body)
        value = doc["outputs"][0]["data"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    if isinstance(value, list):  # a nested row: its first element
        value = value[0] if value else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return None if value is None else str(value)[:PREDICTION_MAX_CHARS]


class ExperimentRecorder:
    def __init__(self, write: Callable[[Sequence[ExperimentCall]], None], clock: Callable[[], datetime]) -> None:
        self.write = write
        self.clock = clock
        self.queue: asyncio.Queue[ExperimentCall] = asyncio.Queue(QUEUE_MAX)
        self.dropped = 0
        self.written = 0
        self._task: asyncio.Task[None] | None = None

    def record(
        self,
        experiment: Experiment,
        variant: str,
        version: str,
        account_id: str,
        ok: bool,
        latency_s: float,
        prediction: str | None,
        event_id: str | None,
    ) -> None:
        call = ExperimentCall(
            _ids.next(),
            experiment.name,
            variant,
            version,
            account_id,
            ok,
            int(latency_s * 1_000_000),
            prediction,
            event_id,
            self.clock().astimezone(UTC).isoformat(),
        )
        try:
            self.queue.put_nowait(call)
        except asyncio.QueueFull:
            self.dropped += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="experiment-recorder")

    async def _run(self) -> None:
        while True:
            first = await self.queue.get()
            try:
                await asyncio.sleep(FLUSH_S)  # let a batch gather
            except asyncio.CancelledError:
                self.queue.put_nowait(first)  # (room for it: it was just taken) ``close`` writes it
                raise
            await self._flush([first])
            while not self.queue.empty():  # a busy gateway: write on, batch after batch
                await self._flush([])

    async def _flush(self, batch: list[ExperimentCall]) -> None:
        while not self.queue.empty() and len(batch) < BATCH_MAX:
            batch.append(self.queue.get_nowait())
        try:
            await asyncio.to_thread(self.write, batch)
            self.written += len(batch)
        except Exception:  # statistics are a sample: a failed write loses these calls, never a served answer
            log.exception("recording %d experiment calls failed; they are left out of the experiment", len(batch))

    async def close(self) -> None:
        """Stop the writer and write what is queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self.queue.empty():
            await self._flush([])


async def serve_in_experiment(
    experiment: Experiment,
    key: str,
    account_id: str,
    call: Callable[[str], Awaitable[Any]],
    recorder: ExperimentRecorder | None,
) -> Any:
    """Serve a call through its assigned variant (``call(version)`` returns the answer) and record it."""
    variant = experiment.assign(key)
    started = time.perf_counter()
    try:
        answer = await call(variant.version)
    except RETRIABLE:
        if recorder is not None:
            recorder.record(
                experiment, variant.name, variant.version, account_id, False, time.perf_counter() - started, None, None
            )
        raise
    if recorder is not None:
        recorder.record(
            experiment,
            variant.name,
            variant.version,
            account_id,
            True,
            time.perf_counter() - started,
            prediction_of(answer.body, answer.content_type),
            answer.request_id,
        )
    return answer


SHADOWS_IN_FLIGHT_MAX = 16
"""Shadow copies under way at once; a call past it is not copied (and counted): shadows never queue up."""


class Shadows:
    """Copies of a shadowed model's calls to its candidate version (``lab shadow``), sent after the caller's
    answer is made, in the background: never billed, never returned, never holding the call up. Each copy is
    recorded with the call it copies (the same usage event id), so a report pairs them: output agreement, latency,
    the candidate's failures."""

    def __init__(
        self,
        answer: Callable[[Any, Any, str | None], Awaitable[Any]],
        resolve: Callable[[str, str], Awaitable[Any]],
        recorder: ExperimentRecorder,
    ) -> None:
        """``answer(version, request, key_id)``: the data plane's unbilled call; ``resolve(model, version)``."""
        self.answer = answer
        self.resolve = resolve
        self.recorder = recorder
        self.in_flight: set[asyncio.Task[None]] = set()
        self.skipped = 0

    def send(
        self, experiment: Experiment, account_id: str, primary: Any, primary_s: float, request: Any, key_id: str | None
    ) -> None:
        candidate = experiment.variants[0]
        if int.from_bytes(primary.request_id.encode()[-4:], "big") % 100 >= candidate.weight:
            return  # not in the copied share of calls
        if len(self.in_flight) >= SHADOWS_IN_FLIGHT_MAX:
            self.skipped += 1
            return
        route = dict(primary.headers).get(b"x-modelmarket-route", b"").decode()
        primary_version = route.rpartition("@")[2] or "?"
        self.recorder.record(
            experiment, "primary", primary_version, account_id, True, primary_s,
            prediction_of(primary.body, primary.content_type), primary.request_id,
        )  # fmt: skip
        task = asyncio.get_running_loop().create_task(
            self._copy(experiment, candidate.version, account_id, primary.request_id, request, key_id)
        )
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _copy(
        self, experiment: Experiment, version: str, account_id: str, request_id: str, request: Any, key_id: str | None
    ) -> None:
        started = time.perf_counter()
        ok, prediction = False, None
        try:
            answer = await self.answer(await self.resolve(experiment.model, version), request, key_id)
            ok = True
            prediction = prediction_of(answer.body, answer.headers.get(b"content-type", b"application/json"))
        except Exception as exc:  # the candidate's failure is a finding, not the caller's problem
            log.debug("shadow copy of %s to %s@%s failed: %s", request_id, experiment.model, version, exc)
        self.recorder.record(
            experiment, "shadow", version, account_id, ok, time.perf_counter() - started, prediction, request_id
        )

    async def close(self) -> None:
        for task in list(self.in_flight):
            task.cancel()
        await asyncio.gather(*self.in_flight, return_exceptions=True)
