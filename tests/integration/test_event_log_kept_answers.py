"""The embedded event log keeps an Idempotency-Key's answer in the same commit as its usage event, for a while."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from modelmarket.adapters.bus import LoopGroupCommitWriter, SqliteEventLog
from modelmarket.metering.ports import AlreadyLogged, KeptAnswer


def _kept(event_id: str, age_s: float = 0.0) -> KeptAnswer:
    return KeptAnswer(event_id, "a" * 64, b"application/json", None, b'{"outputs": []}', time.time() - age_s)


def test_an_answer_is_kept_with_its_event_and_found_by_the_event_id(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.db", answer_ttl_s=60)
    log.append_many([("idem_1", b"{}")], [_kept("idem_1")])
    found = log.lookup("idem_1")
    assert found.billed and found.kept is not None and found.kept.body == b'{"outputs": []}'
    assert log.lookup("idem_2").billed is False
    log.close()
    reopened = SqliteEventLog(tmp_path / "events.db", answer_ttl_s=60)  # a restarted gateway reads it back
    assert reopened.lookup("idem_1").kept == found.kept
    reopened.close()


def test_a_duplicate_append_keeps_the_first_event_and_answer(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.db")
    log.append_many([("idem_1", b"first")], [_kept("idem_1")])
    log.append_many([("idem_1", b"second")], [KeptAnswer("idem_1", "b" * 64, b"x", None, b"other", time.time())])
    assert [r.payload for r in log.read(0, 10)] == [b"first"]
    found = log.lookup("idem_1")
    assert found.kept is not None and found.kept.request_sha256 == "a" * 64
    log.close()


def test_an_expired_answer_is_not_replayed_but_the_call_stays_billed(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.db", answer_ttl_s=10)
    log.append_many([("idem_old", b"{}")], [_kept("idem_old", age_s=11)])
    found = log.lookup("idem_old")
    assert found.billed and found.kept is None
    log.read(0, 10)
    log.read(1, 10)  # caught up: the reader's housekeeping deletes expired answers
    row = log._conn.execute("SELECT COUNT(*) FROM kept_answers").fetchone()
    assert row[0] == 0
    log.close()


def test_a_second_process_serving_the_same_key_is_told_the_event_was_already_logged(tmp_path: Path) -> None:
    """Two gateways on one home: the second commit of an idempotent event id reports it, keeping the first."""

    async def scenario() -> None:
        first = LoopGroupCommitWriter(tmp_path / "events.db", "normal", 16, 16)
        second = LoopGroupCommitWriter(tmp_path / "events.db", "normal", 16, 16)
        first.start()
        second.start()
        try:
            await first.append("idem_1", b"{}", _kept("idem_1"))
            with pytest.raises(AlreadyLogged):
                await second.append("idem_1", b"{}", KeptAnswer("idem_1", "b" * 64, b"x", None, b"mine", time.time()))
            kept = second.lookup("idem_1").kept
            assert kept is not None and kept.body == b'{"outputs": []}'  # the first answer is the one replayed
        finally:
            first.stop()
            second.stop()

    asyncio.run(scenario())
