"""Pieces of the inference hot path: strict JSON tensor data, the on-loop group commit, request ids."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import numpy as np
import orjson
import pytest

from modelmarket.adapters.bus import EventLogFull, LoopGroupCommitWriter, SqliteEventLog, make_writer
from modelmarket.adapters.bus.sqlite_log import GroupCommitWriter
from modelmarket.core.errors import InvalidInput
from modelmarket.core.ids import RequestIds
from modelmarket.core.tensors import Tensor
from modelmarket.metering.units import count_iu
from modelmarket.runtime.oip import decode_request


def _one(datatype: str, data: list[object]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [len(data)], "data": data}]})


@pytest.mark.parametrize(
    ("datatype", "data", "words"),
    [
        ("INT32", [1.7], "found decimals"),
        ("FP32", [None], "null"),
        ("FP32", ["2.5"], "found strings"),
        ("UINT8", [300], "outside the range of uint8"),
        ("INT8", [-129], "outside the range of int8"),
        ("BOOL", [1], "found integers"),
    ],
)
def test_json_tensor_data_is_not_coerced(datatype: str, data: list[object], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        decode_request(_one(datatype, data), None)


def test_json_integers_are_accepted_for_floats_and_keep_their_values() -> None:
    request = decode_request(_one("FP64", [1, 2.5, -3]), None)
    assert request.inputs[0].data.dtype == np.float64
    assert request.inputs[0].data.tolist() == [1.0, 2.5, -3.0]


def test_image_iu_counts_encoded_images_in_a_bytes_vector() -> None:
    images = np.array([b"\x89PNG...", b"\x89PNG...", b"\x89PNG..."], dtype=object)
    assert count_iu("image", [Tensor("img", "BYTES", [3], images)]) == Fraction(3)
    assert count_iu("image", [Tensor("px", "FP32", [64], np.zeros(64, dtype=np.float32))]) == Fraction(1)


def test_loop_writer_commits_concurrent_appends_together(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    writer = LoopGroupCommitWriter(path, "normal", batch_max=64, queue_max=1000)

    async def main() -> None:
        writer.start()
        await asyncio.gather(*(writer.append(f"e{i}", b"{}") for i in range(150)))
        await writer.append("last", b"{}")  # a lone append is committed on its own, without waiting for others
        writer.stop()

    asyncio.run(main())
    log = SqliteEventLog(path)
    ids = [r.event_id for r in log.read(0, 1000)]
    log.close()
    assert ids == [f"e{i}" for i in range(150)] + ["last"]
    assert writer.appended == 151
    assert writer.commits == 4  # 150 appends from one loop iteration in batches of 64 (3 commits), then one


def test_loop_writer_refuses_past_its_bound_and_serves_nothing_unwritten(tmp_path: Path) -> None:
    writer = LoopGroupCommitWriter(tmp_path / "events.db", "normal", batch_max=8, queue_max=3)

    async def main() -> None:
        writer.start()
        futures = [writer.append(f"e{i}", b"{}") for i in range(3)]
        with pytest.raises(EventLogFull):
            writer.append("e3", b"{}")
        await asyncio.gather(*futures)
        writer.stop()

    asyncio.run(main())
    assert writer.appended == 3


def test_loop_writer_failure_reaches_every_waiting_request(tmp_path: Path) -> None:
    writer = LoopGroupCommitWriter(tmp_path / "events.db", "normal", batch_max=8, queue_max=100)

    async def main() -> list[BaseException | None]:
        writer.start()
        assert writer._log is not None
        writer._log.close()  # the next commit fails: a closed database
        results = await asyncio.gather(*(writer.append(f"e{i}", b"{}") for i in range(3)), return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]

    errors = asyncio.run(main())
    assert all(e is not None for e in errors)
    assert writer.appended == 0


def test_make_writer_picks_the_thread_writer_for_fsync(tmp_path: Path) -> None:
    assert isinstance(make_writer(tmp_path / "a.db", "full", 8, 8), GroupCommitWriter)
    assert isinstance(make_writer(tmp_path / "b.db", "normal", 8, 8), LoopGroupCommitWriter)


def test_request_ids_are_unique_across_instances() -> None:
    a, b = RequestIds(), RequestIds()
    ids = {a.next() for _ in range(1000)} | {b.next() for _ in range(1000)}
    assert len(ids) == 2000
    assert all(i.startswith("req_") for i in ids)


def test_the_metering_child_runs_on_the_gateways_own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelmarket.gateway.compose import child_env
    from modelmarket.settings import Settings

    monkeypatch.setenv("MODELMARKET_HOME", "/somewhere/else")
    monkeypatch.delenv("MODELMARKET_DATABASE_URL", raising=False)
    settings = Settings(home=tmp_path / "home", event_log_sync="full", metering_poll_s=0.25)
    env = child_env(settings, settings.resolved_database_url)  # the gateway passes its store's URL
    assert env["MODELMARKET_HOME"] == str((tmp_path / "home").resolve())
    assert env["MODELMARKET_DATABASE_URL"] == settings.resolved_database_url
    assert env["MODELMARKET_EVENT_LOG_SYNC"] == "full"
    assert env["MODELMARKET_METERING_POLL_S"] == "0.25"
    for name in (
        "MODELMARKET_HOME",
        "MODELMARKET_DATABASE_URL",
        "MODELMARKET_EVENT_LOG_SYNC",
        "MODELMARKET_METERING_POLL_S",
    ):
        monkeypatch.setenv(name, env[name])
    child = Settings()  # what the child process builds from that environment
    assert child.resolved_database_url == settings.resolved_database_url
    assert (child.event_log_sync, child.metering_poll_s) == ("full", 0.25)


def test_request_bodies_past_the_limit_are_refused() -> None:
    from modelmarket.runtime.asgi import BodyTooLarge, read_body

    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 3

    async def main() -> None:
        messages = iter([*chunks, {"type": "http.request", "body": b"", "more_body": False}])

        async def receive() -> dict[str, object]:
            return next(messages)

        with pytest.raises(BodyTooLarge, match="limit of 1000 bytes"):
            await read_body(receive, 1000)
        small = iter(
            [
                {"type": "http.request", "body": b"abc", "more_body": True},
                {"type": "http.request", "body": b"def", "more_body": False},
            ]
        )

        async def receive_small() -> dict[str, object]:
            return next(small)

        assert await read_body(receive_small, 1000) == b"abcdef"

    asyncio.run(main())
