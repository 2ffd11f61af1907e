"""The Batcher: joined calls give each caller what an unbatched call would have, and every fallback keeps that true."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.core.tensors import Tensor, TensorSpec, bytes_tensor
from modelmarket.runtime.batching import Batcher, BatcherClosed, BatcherFull, spec_allows_batching

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def fp32(name: str, data: np.ndarray[Any, Any]) -> Tensor:
    array = np.ascontiguousarray(data, dtype=np.float32)
    return Tensor(name, "FP32", list(array.shape), array)


def rowwise(inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
    """A deterministic row-wise model: each output row depends only on its input row (and the parameters)."""
    x = inputs[0].data
    if np.any(x < 0):
        raise InvalidInput(f"input 'x': negative value {float(x[x < 0][0])} is not allowed")
    y = (x * np.float32(2.0) + np.float32(parameters.get("bias", 0))).astype(np.float32)
    total = x.reshape(x.shape[0], -1).sum(axis=1, dtype=np.float32)
    return [fp32("y", y), fp32("total", total)]


class Model:
    """Wraps a model function: records each call's rows and parameters; can hold calls until released."""

    def __init__(self, fn: Callable[[Sequence[Tensor], Mapping[str, Any]], list[Tensor]] = rowwise) -> None:
        self.fn = fn
        self.calls: list[tuple[int, dict[str, Any], tuple[int, ...]]] = []
        self.seen: list[Sequence[Tensor]] = []
        self.delay_s = 0.0
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        with self._lock:
            self.calls.append((inputs[0].data.shape[0], dict(parameters), inputs[0].data.shape[1:]))
            self.seen.append(inputs)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.fn(inputs, parameters)

    @property
    def rows(self) -> list[int]:
        return [rows for rows, _, _ in self.calls]


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


async def until_started(model: Model) -> None:
    """Wait (off the loop) until the model thread has entered a call."""
    assert await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 10)


def assert_same(got: list[Tensor], want: list[Tensor]) -> None:
    assert [t.name for t in got] == [t.name for t in want]
    for g, w in zip(got, want, strict=True):
        assert g.datatype == w.datatype
        assert g.data.dtype == w.data.dtype
        assert g.shape == list(g.data.shape) == w.shape
        assert np.array_equal(g.data, w.data)
        assert g.data.tobytes() == w.data.tobytes()  # bit-identical, not merely close


def test_concurrent_requests_are_joined_and_each_gets_its_unbatched_answer() -> None:
    rng = np.random.default_rng(7)
    requests = [[fp32("x", rng.random((int(rng.integers(1, 6)), 3, 2)))] for _ in range(60)]
    model = Model()
    model.delay_s = 0.002

    async def scenario() -> list[list[Tensor]]:
        batcher = Batcher(model, max_batch_size=16, max_delay_ms=5)
        results = await asyncio.gather(*(batcher.predict(inputs, {"bias": 0.5}) for inputs in requests))
        stats = batcher.stats
        assert stats.calls == 60
        assert stats.batches < stats.calls
        assert stats.largest_batch > 1
        assert stats.largest_batch_rows <= 16
        assert stats.batchable
        await batcher.close()
        return results

    results = run(scenario)
    assert len(model.calls) < len(requests)
    assert all(rows <= 16 for rows in model.rows)
    for inputs, got in zip(requests, results, strict=True):
        assert_same(got, rowwise(inputs, {"bias": 0.5}))


def test_bytes_tensors_are_joined_too() -> None:
    def upper(inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        data = inputs[0].data
        out = np.empty(data.shape, dtype=object)
        for index, item in np.ndenumerate(data):
            out[index] = item.upper()
        return [Tensor("upper", "BYTES", list(out.shape), out)]

    requests = [[bytes_tensor("text", [f"r{i}-{j}".encode() for j in range(i % 3 + 1)])] for i in range(12)]
    model = Model(upper)

    async def scenario() -> list[list[Tensor]]:
        batcher = Batcher(model, max_batch_size=32, max_delay_ms=5)
        results = await asyncio.gather(*(batcher.predict(inputs, {}) for inputs in requests))
        await batcher.close()
        return results

    results = run(scenario)
    assert len(model.calls) < len(requests)
    for inputs, got in zip(requests, results, strict=True):
        assert got[0].shape == list(got[0].data.shape) == inputs[0].shape
        assert list(got[0].data) == [item.upper() for item in inputs[0].data]


def test_a_lone_request_is_dispatched_at_once_even_with_a_long_max_delay() -> None:
    model = Model()

    async def scenario() -> list[float]:
        batcher = Batcher(model, max_batch_size=8, max_delay_ms=1000)
        elapsed = []
        for i in range(5):  # concurrency 1: one after another
            start = time.perf_counter()
            await batcher.predict([fp32("x", np.full((2, 3), i))], {})
            elapsed.append(time.perf_counter() - start)
        await batcher.close()
        return elapsed

    elapsed = run(scenario)
    assert max(elapsed) < 0.5  # a behaviour check (no 1 s wait), not a benchmark
    assert model.rows == [2, 2, 2, 2, 2]


def test_after_concurrent_traffic_the_worker_waits_for_the_next_request_and_no_longer() -> None:
    model = Model()

    async def scenario() -> float:
        batcher = Batcher(model, max_batch_size=8, max_delay_ms=1000)
        await asyncio.gather(*(batcher.predict([fp32("x", np.ones((1, 3)))], {}) for _ in range(2)))
        assert model.rows == [2]  # recent traffic showed two concurrent callers
        start = time.perf_counter()
        first = asyncio.create_task(batcher.predict([fp32("x", np.ones((1, 3)))], {}))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.predict([fp32("x", np.ones((2, 3)))], {}))
        await asyncio.gather(first, second)
        elapsed = time.perf_counter() - start
        await batcher.close()
        return elapsed

    elapsed = run(scenario)
    assert model.rows == [2, 3]  # the first waited for the second, then both ran in one call ...
    assert elapsed < 0.5  # ... dispatched when the second arrived, not after max_delay_ms


def test_max_batch_size_bounds_every_joined_call_and_big_requests_run_alone() -> None:
    rng = np.random.default_rng(3)
    sizes = [int(rng.integers(1, 8)) for _ in range(40)] + [8, 10, 8]
    rng.shuffle(sizes)
    requests = [[fp32("x", rng.random((n, 4)))] for n in sizes]
    model = Model()

    async def scenario() -> list[list[Tensor]]:
        batcher = Batcher(model, max_batch_size=8, max_delay_ms=5)
        results = await asyncio.gather(*(batcher.predict(inputs, {}) for inputs in requests))
        await batcher.close()
        return results

    results = run(scenario)
    assert sorted(r for r in model.rows if r > 8) == [10]  # only the oversize request exceeds the bound, alone
    for inputs in requests:
        if inputs[0].data.shape[0] >= 8:  # ran in a call of its own: the model got the caller's own inputs
            assert any(seen is inputs for seen in model.seen)
    assert any(rows > 1 for rows in model.rows)
    for inputs, got in zip(requests, results, strict=True):
        assert_same(got, rowwise(inputs, {}))


def test_requests_with_different_parameters_or_trailing_shapes_are_never_mixed() -> None:
    variants: list[tuple[dict[str, Any], int]] = [
        ({"bias": 1}, 3),
        ({"bias": 2}, 3),
        ({"bias": 1}, 4),
        ({"bias": 1.0}, 3),  # 1.0 is not 1 in the canonical dump: kept apart, conservatively
    ]
    requests = [(variants[i % 4][0], [fp32("x", np.full((1 + i % 3, variants[i % 4][1]), i))]) for i in range(24)]
    model = Model()

    async def scenario() -> list[list[Tensor]]:
        batcher = Batcher(model, max_batch_size=64, max_delay_ms=5)
        results = await asyncio.gather(*(batcher.predict(inputs, params) for params, inputs in requests))
        await batcher.close()
        return results

    results = run(scenario)
    assert len(model.calls) == 4  # one joined call per variant
    seen = {(repr(params["bias"]), trailing) for _, params, trailing in model.calls}
    assert seen == {("1", (3,)), ("2", (3,)), ("1", (4,)), ("1.0", (3,))}
    for (params, inputs), got in zip(requests, results, strict=True):
        assert_same(got, rowwise(inputs, params))


def test_equal_parameters_in_another_key_order_do_join() -> None:
    model = Model()

    async def scenario() -> None:
        batcher = Batcher(model, max_batch_size=8, max_delay_ms=5)
        await asyncio.gather(
            batcher.predict([fp32("x", np.ones((1, 2)))], {"bias": 1, "mode": "a"}),
            batcher.predict([fp32("x", np.ones((1, 2)))], {"mode": "a", "bias": 1}),
        )
        await batcher.close()

    run(scenario)
    assert model.rows == [2]


def test_the_oldest_request_leads_and_later_joinable_ones_join_it() -> None:
    model = Model()
    model.gate = threading.Event()

    async def scenario() -> None:
        batcher = Batcher(model, max_batch_size=8, max_delay_ms=0)
        blocker = asyncio.create_task(batcher.predict([fp32("x", np.zeros((1, 2)))], {}))
        await until_started(model)
        a = asyncio.create_task(batcher.predict([fp32("x", np.full((1, 2), 1))], {"bias": 1}))
        b = asyncio.create_task(batcher.predict([fp32("x", np.full((1, 2), 2))], {"bias": 2}))
        c = asyncio.create_task(batcher.predict([fp32("x", np.full((1, 2), 3))], {"bias": 1}))
        await asyncio.sleep(0.01)
        assert model.gate is not None
        model.gate.set()
        await asyncio.gather(blocker, a, b, c)
        await batcher.close()

    run(scenario)
    firsts = [[float(v) for v in seen[0].data[:, 0]] for seen in model.seen]
    assert firsts == [[0.0], [1.0, 3.0], [2.0]]


def test_a_model_that_is_not_row_wise_falls_back_to_single_calls_and_is_remembered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def pooled(inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        x = inputs[0].data
        return [fp32("mean", x.mean(axis=0, keepdims=True)), fp32("rows", np.array([x.shape[0]]))]

    requests = [[fp32("x", np.full((n, 2), n))] for n in (2, 3, 4)]
    model = Model(pooled)

    async def scenario() -> list[list[Tensor]]:
        batcher = Batcher(model, max_batch_size=16, max_delay_ms=5, name="demo/pooled:1")
        first = await asyncio.gather(*(batcher.predict(inputs, {}) for inputs in requests))
        assert not batcher.stats.batchable
        calls_before = len(model.calls)
        again = await asyncio.gather(*(batcher.predict(inputs, {}) for inputs in requests))
        assert len(model.calls) - calls_before == 3  # no joining any more
        await batcher.close()
        return first + again

    with caplog.at_level(logging.WARNING, logger="modelmarket.runtime.batching"):
        results = run(scenario)
    assert model.rows[:4] == [9, 2, 3, 4]  # one joined try, then each request alone
    for inputs, got in zip(requests * 2, results, strict=True):
        assert_same(got, pooled(inputs, {}))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "demo/pooled:1" in warnings[0].getMessage()


def test_an_invalid_request_fails_alone_and_its_neighbours_succeed() -> None:
    requests = [[fp32("x", np.full((2, 3), -1.0 if i == 2 else float(i)))] for i in range(5)]
    model = Model()

    async def scenario() -> list[list[Tensor] | BaseException]:
        batcher = Batcher(model, max_batch_size=32, max_delay_ms=5)
        results = await asyncio.gather(*(batcher.predict(inputs, {}) for inputs in requests), return_exceptions=True)
        await batcher.close()
        return results

    results = run(scenario)
    assert model.rows == [10, 2, 2, 2, 2, 2]  # the joined call failed; each request re-ran alone
    for i, (inputs, got) in enumerate(zip(requests, results, strict=True)):
        if i == 2:
            assert type(got) is InvalidInput
            assert str(got) == "input 'x': negative value -1.0 is not allowed"
        else:
            assert not isinstance(got, BaseException)
            assert_same(got, rowwise(inputs, {}))


def test_a_caller_cancelled_while_queued_is_removed_and_its_work_never_done() -> None:
    model = Model()
    model.gate = threading.Event()

    async def scenario() -> None:
        batcher = Batcher(model, max_batch_size=8, max_delay_ms=0, max_queued=1)
        running = asyncio.create_task(batcher.predict([fp32("x", np.zeros((1, 2)))], {}))
        await until_started(model)
        queued = asyncio.create_task(batcher.predict([fp32("x", np.full((1, 2), 7))], {}))
        await asyncio.sleep(0.01)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        # its queue slot is free again at once (max_queued=1), before the worker looks at the queue
        replacement = asyncio.create_task(batcher.predict([fp32("x", np.full((1, 2), 6))], {}))
        await asyncio.sleep(0.01)
        assert model.gate is not None
        model.gate.set()
        assert_same(await running, rowwise([fp32("x", np.zeros((1, 2)))], {}))
        assert_same(await replacement, rowwise([fp32("x", np.full((1, 2), 6))], {}))
        after = await batcher.predict([fp32("x", np.full((1, 2), 5))], {})
        assert_same(after, rowwise([fp32("x", np.full((1, 2), 5))], {}))
        await batcher.close()

    run(scenario)
    assert [float(seen[0].data[0, 0]) for seen in model.seen] == [0.0, 6.0, 5.0]  # 7 never reached the model


def test_a_caller_cancelled_while_its_batch_runs_gets_nothing_and_others_are_unaffected() -> None:
    model = Model()
    model.gate = threading.Event()

    async def scenario() -> None:
        batcher = Batcher(model, max_batch_size=8, max_delay_ms=0)
        running = asyncio.create_task(batcher.predict([fp32("x", np.zeros((1, 2)))], {}))
        await until_started(model)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        nxt = asyncio.create_task(batcher.predict([fp32("x", np.ones((1, 2)))], {}))
        await asyncio.sleep(0.01)
        assert model.gate is not None
        model.gate.set()
        assert_same(await nxt, rowwise([fp32("x", np.ones((1, 2)))], {}))
        await batcher.close()

    run(scenario)
    assert model.rows == [1, 1]


def test_close_fails_queued_calls_lets_the_running_batch_finish_and_refuses_new_ones() -> None:
    model = Model()
    model.gate = threading.Event()

    async def scenario() -> None:
        batcher = Batcher(model, max_batch_size=8, max_delay_ms=0)
        running = asyncio.create_task(batcher.predict([fp32("x", np.zeros((1, 2)))], {}))
        await until_started(model)
        queued = [asyncio.create_task(batcher.predict([fp32("x", np.ones((1, 2)))], {})) for _ in range(2)]
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(batcher.close())
        for task in queued:
            with pytest.raises(BatcherClosed, match="shut down before the request ran"):
                await task
        assert not closing.done()  # waits for the batch in flight
        assert model.gate is not None
        model.gate.set()
        assert_same(await running, rowwise([fp32("x", np.zeros((1, 2)))], {}))
        await closing
        with pytest.raises(BatcherClosed):
            await batcher.predict([fp32("x", np.ones((1, 2)))], {})

    run(scenario)
    assert model.rows == [1]


def test_the_queue_is_bounded() -> None:
    model = Model()
    model.gate = threading.Event()

    async def scenario() -> None:
        batcher = Batcher(model, max_batch_size=8, max_delay_ms=0, max_queued=2)
        running = asyncio.create_task(batcher.predict([fp32("x", np.zeros((1, 2)))], {}))
        await until_started(model)
        queued = [asyncio.create_task(batcher.predict([fp32("x", np.ones((1, 2)))], {})) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherFull):
            await batcher.predict([fp32("x", np.ones((1, 2)))], {})
        assert model.gate is not None
        model.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close()

    run(scenario)
    assert model.rows == [1, 2]


@pytest.mark.parametrize(("size", "delay"), [(0, 1.0), (True, 1.0), (4, -1.0), (4, float("nan"))])
def test_bad_settings_are_refused(size: Any, delay: float) -> None:
    with pytest.raises(ValueError):
        Batcher(rowwise, max_batch_size=size, max_delay_ms=delay)


def test_only_versions_with_a_variable_first_dimension_allow_batching() -> None:
    rows = TensorSpec("x", "FP32", (-1, 3))
    fixed = TensorSpec("x", "FP32", (1, 3))
    assert spec_allows_batching([rows], [TensorSpec("y", "FP32", (-1,))])
    assert not spec_allows_batching([fixed], [TensorSpec("y", "FP32", (-1,))])
    assert not spec_allows_batching([rows], [TensorSpec("y", "FP32", (1, 2))])
    assert not spec_allows_batching([TensorSpec("s", "FP32", ())], [])
    assert not spec_allows_batching([], [])
