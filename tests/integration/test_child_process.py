"""ChildProcess and RestartPolicy, with real tiny child processes (``python -c``)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from modelmarket.core.errors import InvariantViolated
from modelmarket.core.process import ChildProcess, ChildState, ProbeSettings, RestartPolicy

QUICK = RestartPolicy(max_restarts=2, backoff_base_s=0.2, backoff_cap_s=1.0, jitter_ratio=0.0, reset_after_s=30)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_backoff_doubles_capped_and_jitter_only_shortens() -> None:
    policy = RestartPolicy(max_restarts=9, backoff_base_s=0.5, backoff_cap_s=3.0, jitter_ratio=0.2)
    assert [policy.delay_s(n, 0.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay_s(1, 0.999) == pytest.approx(0.5 * (1 - 0.2 * 0.999))
    assert policy.delay_s(10_000, 0.5) <= 3.0  # no overflow for absurd restart numbers
    with pytest.raises(InvariantViolated):
        RestartPolicy(backoff_base_s=5, backoff_cap_s=1)


def test_a_crashing_child_is_restarted_with_growing_backoff_then_given_up(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    code = f"import time; open({str(starts)!r}, 'a').write(f'{{time.time()}}\\n'); raise SystemExit(1)"

    async def scenario() -> None:
        child = ChildProcess("crasher", py(code), policy=QUICK, log_path=tmp_path / "crasher.log")
        child.start()
        await until(lambda: child.state is ChildState.FAILED)
        assert child.spawns == 3 and child.restarts == 2
        assert child.failure is not None and "exited with code 1" in child.failure
        assert "gave up after 2 restarts" in child.failure
        await child.stop()
        assert child.state is ChildState.FAILED  # stop() does not paper over why it failed

    run(scenario)
    times = [float(x) for x in starts.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 3
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # 0.2 s, then doubled


def test_the_budget_resets_after_a_healthy_period(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=1, backoff_base_s=0.05, backoff_cap_s=0.05, jitter_ratio=0, reset_after_s=0.3)

    async def scenario() -> None:
        # Lives 0.6 s (healthy longer than reset_after_s) and then crashes: it is never given up on.
        steady = ChildProcess("steady", py("import time; time.sleep(0.6); raise SystemExit(1)"), policy=policy)
        # Crashes at once: the same policy gives up on it after one restart.
        flaky = ChildProcess("flaky", py("raise SystemExit(1)"), policy=policy)
        steady.start()
        flaky.start()
        await until(lambda: steady.spawns >= 4, timeout_s=15)
        assert steady.state is not ChildState.FAILED
        assert flaky.state is ChildState.FAILED and flaky.spawns == 2
        await steady.stop()
        assert steady.state is ChildState.STOPPED

    run(scenario)


def test_a_do_not_restart_exit_code_fails_with_the_childs_reason(tmp_path: Path) -> None:
    code = "import sys; print('metering halted: record 7 breaks an invariant', file=sys.stderr); sys.exit(3)"

    async def scenario() -> None:
        child = ChildProcess(
            "meter", py(code), policy=QUICK, log_path=tmp_path / "m.log", no_restart_codes={3: "metering halted"}
        )
        child.start()
        await until(lambda: child.state is ChildState.FAILED)
        await asyncio.sleep(0.3)  # a restart would have happened by now (backoff 0.2 s)
        assert child.spawns == 1
        assert child.failure is not None
        assert "code 3 (metering halted); not restarting" in child.failure
        assert "record 7 breaks an invariant" in child.failure
        assert await child.wait_running(0.1) is False

    run(scenario)


def test_stop_escalates_to_sigkill_for_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    armed = tmp_path / "armed"
    code = f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(armed)!r}, "w").close()
        time.sleep(60)
    """

    async def armed_probe() -> bool:
        return armed.exists()

    async def scenario() -> None:
        child = ChildProcess(
            "stubborn", py(code), probe=ProbeSettings(armed_probe, start_timeout_s=20), stop_timeout_s=0.5
        )
        child.start()
        assert await child.wait_running(20)
        started = time.monotonic()
        await child.stop()
        assert child.returncode == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - started < 5
        assert child.state is ChildState.STOPPED

    run(scenario)


def test_stop_is_a_sigterm_for_a_child_that_honours_it() -> None:
    async def scenario() -> None:
        child = ChildProcess("polite", py("import time; time.sleep(60)"), stop_timeout_s=10)
        child.start()
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await child.stop()
        assert child.returncode == -signal.SIGTERM and time.monotonic() - started < 2

    run(scenario)


def _echo_server(path: Path) -> str:
    """A child that answers every connection on a Unix socket with b'ok' (its probe target)."""
    return f"""
        import os, socket
        path = {str(path)!r}
        if os.path.exists(path):
            os.unlink(path)
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(8)
        while True:
            conn, _ = server.accept()
            conn.sendall(b"ok")
            conn.close()
    """


def _socket_probe(path: Path) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 0.3)
        try:
            return await asyncio.wait_for(reader.read(2), 0.3) == b"ok"
        finally:
            writer.close()

    return probe


def test_a_hung_child_is_unhealthy_at_once_and_killed_and_restarted_after_the_bound(tmp_path: Path) -> None:
    sock = tmp_path / "s"
    probe = ProbeSettings(_socket_probe(sock), interval_s=0.2, unresponsive_after_s=1.5, start_timeout_s=20)

    async def scenario() -> None:
        child = ChildProcess("hangs", py(_echo_server(sock)), policy=QUICK, probe=probe)
        child.start()
        assert await child.wait_running(20) and child.healthy
        first = child.pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)
        stopped_at = time.monotonic()
        await until(lambda: not child.healthy, timeout_s=5)
        assert time.monotonic() - stopped_at < 1.2  # noticed within a probe or two
        assert "not answering its probe" in child.describe()
        await until(lambda: child.healthy and child.pid != first, timeout_s=20)
        assert time.monotonic() - stopped_at >= 1.5
        assert child.restarts == 1
        assert child.last_exit is not None and "SIGKILL" in child.last_exit and "did not answer" in child.last_exit
        await child.stop()

    run(scenario)


def test_recycle_kills_now_and_restarts_at_once_without_spending_the_crash_budget() -> None:
    async def scenario() -> None:
        child = ChildProcess("worker", py("import time; time.sleep(60)"), policy=QUICK)
        child.start()
        for round_ in range(QUICK.max_restarts + 3):  # more recycles than the budget allows crashes
            before = child.pid
            child.recycle("a call timed out")
            await until(lambda before=before: child.pid not in (None, before) and child.state is ChildState.RUNNING)
            assert child.restarts == 0, round_
        assert child.spawns == QUICK.max_restarts + 4 and child.state is ChildState.RUNNING
        assert child.last_exit is not None and "a call timed out" in child.last_exit
        await child.stop()

    run(scenario)


def test_a_child_that_never_answers_its_probe_is_killed_at_the_start_timeout() -> None:
    async def never() -> bool:
        return False

    async def scenario() -> None:
        policy = RestartPolicy(max_restarts=0)
        probe = ProbeSettings(never, start_timeout_s=0.5)
        child = ChildProcess("mute", py("import time; time.sleep(60)"), policy=policy, probe=probe)
        child.start()
        assert await child.wait_running(10) is False
        assert child.state is ChildState.FAILED
        assert child.failure is not None and "did not answer within 0.5s of starting" in child.failure

    run(scenario)


def test_a_command_that_cannot_start_fails_with_the_os_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        child = ChildProcess("ghost", [str(tmp_path / "no-such-program")])
        child.start()
        assert child.state is ChildState.FAILED
        assert child.failure is not None and "cannot start ghost" in child.failure
        await child.stop()

    run(scenario)


HALTING_CONSUMER = """
import sys
from modelmarket.core.errors import MeteringHalted
from modelmarket.gateway import metering_process


class HaltingMetering:
    def follow(self, stop):
        raise MeteringHalted("log offset 12 is past the end of the event log")


class FakePlatform:
    metering = HaltingMetering()

    def close(self):
        pass


metering_process.bootstrap = lambda: FakePlatform()
sys.exit(metering_process.main([]))
"""


def test_a_halted_metering_consumer_is_not_restarted_and_the_gateway_can_say_why(tmp_path: Path) -> None:
    from modelmarket.gateway.metering_process import EXIT_METERING_HALTED, MeteringProcess

    async def scenario() -> None:
        metering = MeteringProcess(tmp_path / "metering.log", dict(os.environ), command=py(HALTING_CONSUMER))
        metering.start()
        await until(lambda: metering.failure is not None)
        await asyncio.sleep(0.8)  # longer than the first backoff: a restart would have happened
        assert metering.child is not None and metering.child.spawns == 1
        assert metering.child.returncode == EXIT_METERING_HALTED
        assert metering.failure is not None
        assert "metering halted: log offset 12 is past the end of the event log" in metering.failure
        await metering.stop()

    run(scenario)


def test_a_halted_consumer_starts_again_only_once_the_halt_is_cleared(tmp_path: Path) -> None:
    from modelmarket.gateway.metering_process import MeteringProcess

    async def scenario() -> None:
        metering = MeteringProcess(tmp_path / "metering.log", dict(os.environ), command=py(HALTING_CONSUMER))
        metering.start()
        await until(lambda: metering.failure is not None)
        first = metering.child
        assert metering.restart_if_resumed("still halted: the log was truncated") is False
        assert metering.child is first
        assert metering.restart_if_resumed(None) is True  # `modelmarket meter --resume` cleared it
        assert metering.child is not first
        await until(lambda: metering.failure is not None)  # the stand-in halts again: it is watched again
        await metering.stop()

    run(scenario)
