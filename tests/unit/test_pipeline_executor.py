"""The pipeline executor over a fake StepCaller: dependency order, concurrency of independent steps, renaming,
one commit of every pending usage and the fee, and on any failure an abandon, no commit, and an error naming
the step."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import pytest

from modelmarket.accounts import Account
from modelmarket.core.errors import InvalidInput, QuotaExceeded
from modelmarket.core.tensors import Tensor, bytes_tensor
from modelmarket.demo._pipeline import voice_sentiment_manifest
from modelmarket.gateway.attempts import ModelFailed
from modelmarket.gateway.errors import extra_fields_for, status_for
from modelmarket.gateway.pipeline import PipelineStepFailed, StepOutcome, run_pipeline
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.registry.manifest import parse_manifest

pytestmark = pytest.mark.timeout(30)

ACCOUNT = Account(id="acc_c", name="consumer", role="consumer", created_at="2026-01-01T00:00:00+00:00")
Behaviour = Callable[[dict[str, Tensor]], Awaitable[dict[str, Tensor]]]


class FakeCaller:
    """A StepCaller that runs each model by a behaviour and records every call, commit and abandon."""

    def __init__(self, behaviours: dict[str, Behaviour], fee: object | None = "fee") -> None:
        self.behaviours = behaviours
        self.fee_value = fee
        self.events: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.fee_calls: list[tuple[str, str]] = []
        self.commits: list[list[object]] = []
        self.abandons: list[list[object]] = []

    def new_call_id(self) -> str:
        return "pl_1"

    async def call_step(
        self,
        account: Account,
        key_id: str | None,
        model: str,
        ref: str | None,
        inputs: Sequence[Tensor],
        *,
        pipeline_call_id: str,
    ) -> StepOutcome:
        self.calls.append({"model": model, "ref": ref, "inputs": list(inputs), "call_id": pipeline_call_id})
        self.calls[-1].update(account=account.id, key_id=key_id)
        self.events.append(f"start {model}")
        try:
            outputs = await self.behaviours[model]({t.name: t for t in inputs})
        finally:
            self.events.append(f"end {model}")
        return StepOutcome(outputs=outputs, pending=f"usage:{model}")

    def fee(self, account: Account, key_id: str | None, pipeline: VersionRecord, *, pipeline_call_id: str) -> object:
        self.fee_calls.append((pipeline.ref, pipeline_call_id))
        return self.fee_value

    async def commit(self, pending: Sequence[object]) -> list[str]:
        self.commits.append(list(pending))
        return [str(p) for p in pending]

    def abandon(self, pending: Sequence[object]) -> None:
        self.abandons.append(list(pending))


def version(doc: dict[str, Any]) -> VersionRecord:
    return VersionRecord("ver_p", doc["name"], doc["version"], "d" * 64, parse_manifest(doc), "acc_p", (), "t")


VOICE = version(voice_sentiment_manifest())
AUDIO = bytes_tensor("audio", [b"RIFF...one", b"RIFF...two"])


async def transcribe(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    assert list(inputs) == ["audio"]
    words = [b"good " + bytes(item[-3:]) for item in inputs["audio"].data]
    return {"text": bytes_tensor("text", words)}


async def classify(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    texts = list(inputs["text"].data)
    scores = np.full((len(texts), 4), 0.5, dtype=np.float32)
    return {
        "scores": Tensor("scores", "FP32", [len(texts), 4], scores),
        "label": bytes_tensor("label", [b"positive"] * len(texts)),
    }


def raising(exc: BaseException) -> Behaviour:
    async def behaviour(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        raise exc

    return behaviour


def run(caller: FakeCaller, pipeline: VersionRecord = VOICE, inputs: Sequence[Tensor] = (AUDIO,)) -> Any:
    return asyncio.run(run_pipeline(caller, ACCOUNT, "key_1", pipeline, inputs, {}))


# -- success ---------------------------------------------------------------------------------------------


def test_steps_run_in_order_renamed_and_everything_is_committed_once() -> None:
    caller = FakeCaller({"speech-to-text": transcribe, "sentiment": classify})
    result = run(caller)
    assert caller.events == ["start speech-to-text", "end speech-to-text", "start sentiment", "end sentiment"]
    assert [(c["model"], c["ref"], c["call_id"], c["account"], c["key_id"]) for c in caller.calls] == [
        ("speech-to-text", None, "pl_1", "acc_c", "key_1"),
        ("sentiment", None, "pl_1", "acc_c", "key_1"),
    ]
    classify_input = caller.calls[1]["inputs"][0]
    assert (classify_input.name, classify_input.datatype) == ("text", "BYTES")
    assert list(classify_input.data) == [b"good one", b"good two"]
    assert caller.commits == [["usage:speech-to-text", "usage:sentiment", "fee"]]
    assert result.event_ids == ["usage:speech-to-text", "usage:sentiment", "fee"]  # sent as x-modelmarket-usage-events
    assert caller.abandons == []
    assert caller.fee_calls == [("voice-sentiment@1.0.0", "pl_1")]
    assert result.call_id == "pl_1"
    assert [t.name for t in result.outputs] == ["text", "label", "scores"]
    assert list(result.outputs[0].data) == [b"good one", b"good two"]
    assert result.outputs[2].shape == [2, 4] and result.outputs[2].datatype == "FP32"
    assert result.steps == [("transcribe", "speech-to-text"), ("classify", "sentiment")]


def test_no_fee_commits_the_steps_alone_and_refs_are_passed_as_written() -> None:
    doc = voice_sentiment_manifest()
    doc["steps"][1]["model"] = "sentiment@1.0.0"
    caller = FakeCaller({"speech-to-text": transcribe, "sentiment": classify}, fee=None)
    result = run(caller, version(doc))
    assert caller.commits == [["usage:speech-to-text", "usage:sentiment"]]
    assert caller.calls[1]["ref"] == "1.0.0" and caller.calls[1]["model"] == "sentiment"
    assert result.steps[1] == ("classify", "sentiment@1.0.0")


def test_tensor_parameters_are_not_carried_into_the_next_step() -> None:
    audio = bytes_tensor("audio", [b"RIFF...one"])
    audio.parameters["binary_data_size"] = 14
    caller = FakeCaller({"speech-to-text": transcribe, "sentiment": classify})
    run(caller, inputs=[audio])
    assert caller.calls[0]["inputs"][0].parameters == {}
    assert caller.calls[0]["inputs"][0] is not audio


DIAMOND: dict[str, Any] = {
    **copy.deepcopy(voice_sentiment_manifest()),
    "name": "diamond",
    "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]}],
    "steps": [
        {"id": "root", "model": "m-root", "inputs": {"x": "input.audio"}},
        {"id": "left", "model": "m-left", "inputs": {"x": "root.y"}},
        {"id": "right", "model": "m-right", "inputs": {"x": "root.y"}},
        {"id": "join", "model": "m-join", "inputs": {"a": "left.y", "b": "right.y"}},
    ],
    "outputs_from": {"label": "join.y"},
}


def passing(name: str = "y") -> Behaviour:
    async def behaviour(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        first = next(iter(inputs.values()))
        return {name: Tensor(name, first.datatype, list(first.shape), first.data)}

    return behaviour


def test_independent_steps_run_concurrently_and_a_join_waits_for_both() -> None:
    both_started = asyncio.Event()
    started: list[str] = []

    def branch(name: str) -> Behaviour:
        async def behaviour(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
            started.append(name)
            if len(started) == 2:
                both_started.set()
            await asyncio.wait_for(both_started.wait(), timeout=5)  # times out if the branches ran one by one
            return await passing()(inputs)

        return behaviour

    caller = FakeCaller(
        {"m-root": passing(), "m-left": branch("left"), "m-right": branch("right"), "m-join": passing()}
    )
    result = run(caller, version(copy.deepcopy(DIAMOND)))
    assert caller.events[:3] == ["start m-root", "end m-root", "start m-left"]
    assert caller.events[3] == "start m-right"  # before m-left ended: concurrent
    assert caller.events.index("start m-join") > max(
        caller.events.index("end m-left"), caller.events.index("end m-right")
    )
    assert sorted(t.name for t in caller.calls[-1]["inputs"]) == ["a", "b"]
    assert caller.commits == [["usage:m-root", "usage:m-left", "usage:m-right", "usage:m-join", "fee"]]
    assert [t.name for t in result.outputs] == ["label"]


# -- failures --------------------------------------------------------------------------------------------


def test_a_failing_step_abandons_what_was_collected_and_keeps_its_error_class() -> None:
    caller = FakeCaller({"speech-to-text": transcribe, "sentiment": raising(InvalidInput("input 'text' is empty"))})
    with pytest.raises(InvalidInput) as info:
        run(caller)
    assert type(info.value) is InvalidInput
    assert info.value.message == "pipeline step 'classify' (sentiment): input 'text' is empty"
    assert str(info.value) == info.value.message
    assert status_for(info.value) == 400
    assert caller.abandons == [["usage:speech-to-text"]]
    assert caller.commits == [] and caller.fee_calls == []


def test_a_model_failure_stays_a_502_and_a_limit_keeps_its_fields() -> None:
    caller = FakeCaller({"speech-to-text": raising(ModelFailed("runner said 500")), "sentiment": classify})
    with pytest.raises(ModelFailed) as failed:
        run(caller)
    assert status_for(failed.value) == 502
    assert failed.value.message == "pipeline step 'transcribe' (speech-to-text): runner said 500"
    assert caller.abandons == [[]] and caller.commits == []
    assert [c["model"] for c in caller.calls] == ["speech-to-text"]  # the dependant never started

    quota = QuotaExceeded("daily quota reached", limit="iu_per_day", scope="key", allowed="10", used="10")
    caller = FakeCaller({"speech-to-text": transcribe, "sentiment": raising(quota)})
    with pytest.raises(QuotaExceeded) as limited:
        run(caller)
    assert status_for(limited.value) == 402
    assert extra_fields_for(limited.value) == extra_fields_for(quota)
    assert limited.value.__cause__ is quota


def test_an_unexpected_error_becomes_pipeline_step_failed() -> None:
    boom = RuntimeError("socket closed")
    caller = FakeCaller({"speech-to-text": transcribe, "sentiment": raising(boom)})
    with pytest.raises(PipelineStepFailed) as info:
        run(caller)
    assert info.value.message == "pipeline step 'classify' (sentiment): failed unexpectedly (RuntimeError)"
    assert info.value.step == "classify" and info.value.__cause__ is boom
    assert status_for(info.value) == 502
    assert caller.abandons == [["usage:speech-to-text"]] and caller.commits == []


def test_a_missing_output_fails_the_step_and_releases_its_usage() -> None:
    async def wrong(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"transcript": bytes_tensor("transcript", [b"x"])}

    caller = FakeCaller({"speech-to-text": wrong, "sentiment": classify})
    with pytest.raises(PipelineStepFailed) as info:
        run(caller)
    assert info.value.message == (
        "pipeline step 'transcribe' (speech-to-text): the model answered without output(s) text that the pipeline "
        "needs (it gave: transcript)"
    )
    assert caller.abandons == [["usage:speech-to-text"]] and caller.commits == []
    assert [c["model"] for c in caller.calls] == ["speech-to-text"]


def test_a_failing_branch_waits_for_the_other_and_abandons_everything() -> None:
    async def slow(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        await asyncio.sleep(0.05)
        return await passing()(inputs)

    async def fails_soon(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        await asyncio.sleep(0.01)  # the other branch is in flight by now
        raise ModelFailed("bad")

    caller = FakeCaller({"m-root": passing(), "m-left": fails_soon, "m-right": slow, "m-join": passing()})
    with pytest.raises(ModelFailed, match=r"^pipeline step 'left' \(m-left\): bad$"):
        run(caller, version(copy.deepcopy(DIAMOND)))
    assert caller.abandons == [["usage:m-root", "usage:m-right"]]  # m-right finished after the failure
    assert caller.events.index("end m-right") > caller.events.index("end m-left")
    assert caller.commits == [] and "start m-join" not in caller.events


def test_after_a_failure_no_further_step_starts() -> None:
    caller = FakeCaller(
        {"m-root": passing(), "m-left": raising(ModelFailed("bad")), "m-right": passing(), "m-join": passing()}
    )
    with pytest.raises(ModelFailed):
        run(caller, version(copy.deepcopy(DIAMOND)))
    assert [c["model"] for c in caller.calls] == ["m-root", "m-left"]  # m-right was ready but not started
    assert caller.abandons == [["usage:m-root"]]


def test_the_first_failure_in_step_order_is_reported() -> None:
    async def left_late(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        await asyncio.sleep(0.03)
        raise InvalidInput("left broke")

    caller = FakeCaller(
        {"m-root": passing(), "m-left": left_late, "m-right": raising(ModelFailed("right broke")), "m-join": passing()}
    )
    with pytest.raises(InvalidInput, match="left broke"):  # right failed first, but left comes first
        run(caller, version(copy.deepcopy(DIAMOND)))
    assert caller.events.index("end m-right") < caller.events.index("end m-left")
    assert caller.abandons == [["usage:m-root"]]


def test_a_failing_fee_abandons_the_steps() -> None:
    class NoFee(FakeCaller):
        def fee(
            self, account: Account, key_id: str | None, pipeline: VersionRecord, *, pipeline_call_id: str
        ) -> object:
            raise QuotaExceeded("budget", limit="budget", scope="account", allowed="1", used="1", currency="USD")

    caller = NoFee({"speech-to-text": transcribe, "sentiment": classify})
    with pytest.raises(QuotaExceeded, match=r"^budget$"):
        run(caller)
    assert caller.abandons == [["usage:speech-to-text", "usage:sentiment"]] and caller.commits == []


def test_a_missing_pipeline_input_is_refused_before_any_step() -> None:
    caller = FakeCaller({"speech-to-text": transcribe, "sentiment": classify})
    with pytest.raises(InvalidInput, match="model 'voice-sentiment' needs input"):
        run(caller, inputs=[bytes_tensor("wav", [b"x"])])
    assert caller.calls == [] and caller.abandons == [] and caller.commits == []


def test_a_cancelled_call_abandons_what_finished_and_commits_nothing() -> None:
    entered = asyncio.Event()

    async def hang(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        entered.set()
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    caller = FakeCaller({"speech-to-text": transcribe, "sentiment": hang})

    async def scenario() -> None:
        task = asyncio.create_task(run_pipeline(caller, ACCOUNT, None, VOICE, [AUDIO], None))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert caller.abandons == [["usage:speech-to-text"]] and caller.commits == []
