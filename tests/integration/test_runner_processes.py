"""The supervisor with real runner processes serving a tiny test runtime (``sleepy``, installed as a plug-in the
way a third party would ship one): private Unix sockets only, readiness that tells the truth about hung and
given-up runners, and a timed-out call that does not leave the next one stuck."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from engines import REAL, clean_env, store_rows
from modelmarket.core.errors import NotReady
from modelmarket.core.process import RestartPolicy
from modelmarket.registry import VersionRecord
from modelmarket.registry.catalogue import ArtifactRecord
from modelmarket.registry.manifest import Manifest
from modelmarket.runtime.pool import RunnerTimeout
from modelmarket.runtime.supervisor import Supervisor, socket_path_for

RUNTIME_SOURCE = """
import time

from modelmarket.runtime.base import Runtime, Tensor


class SleepyRuntime(Runtime):
    '''Echoes x; first burns x[0] seconds of CPU on the runner's event loop, like a model busy with a big input.'''

    name = "sleepy"

    def load(self):
        if self.spec.parameters.get("fail_load"):
            raise RuntimeError("the artifact is corrupt")

    def predict(self, inputs, parameters):
        until = time.monotonic() + float(inputs[0].data.reshape(-1)[0])
        while time.monotonic() < until:
            pass
        return [Tensor("y", "FP32", list(inputs[0].shape), inputs[0].data)]
"""

FAST = RestartPolicy(max_restarts=2, backoff_base_s=0.1, backoff_cap_s=0.5, jitter_ratio=0.0, reset_after_s=600)


@pytest.fixture()
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ``sleepy`` runtime as an installed distribution on the runners' PYTHONPATH (they inherit our env)."""
    site = tmp_path / "site"
    (site / "mm_sleepy").mkdir(parents=True)
    (site / "mm_sleepy" / "__init__.py").write_text(textwrap.dedent(RUNTIME_SOURCE))
    info = site / "mm_sleepy-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mm-sleepy\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[modelmarket.runtimes]\nsleepy = mm_sleepy:SleepyRuntime\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return site


class FakeBlobs:
    """The blob store port, over one file."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def path(self, digest: str) -> Path:
        return self._path

    def exists(self, digest: str) -> bool:
        return True

    def put_file(self, src: Path, expected_sha256: str | None = None) -> tuple[str, int]:
        raise NotImplementedError


def version_record(name: str = "sleepy", **parameters: Any) -> VersionRecord:
    manifest = Manifest.model_validate(
        {
            "name": name,
            "version": "1.0.0",
            "task": "test",
            "modality": "tabular",
            "runtime": "sleepy",
            "provider": "tests",
            "license": "MIT",
            "artifacts": [{"path": "weights.txt"}],
            "parameters": parameters,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
            "pricing": {"unit": "request", "price_per_iu": "0.01", "currency": "EUR"},
            "card": {"summary": "Sleeps, then echoes."},
        }
    )
    artifact = ArtifactRecord("weights.txt", "0" * 64, 1)
    return VersionRecord(f"ver_{name}", name, "1.0.0", "0" * 64, manifest, "acc_tests", (artifact,), "2024-01-01")


def make_supervisor(tmp_path: Path, **overrides: Any) -> Supervisor:
    weights = tmp_path / "weights.txt"
    weights.write_text("w")
    settings: dict[str, Any] = {
        "policy": FAST,
        "probe_interval_s": 0.3,
        "probe_timeout_s": 0.5,
        "unresponsive_after_s": 30.0,
        "stop_timeout_s": 3.0,
    }
    settings.update(overrides)
    request_timeout_s = settings.pop("request_timeout_s", 10.0)
    return Supervisor(FakeBlobs(weights), tmp_path / "runners", 30.0, request_timeout_s, 4, 2, **settings)


def infer_body(seconds: float) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [seconds]}]})


async def infer(supervisor: Supervisor, version: VersionRecord, seconds: float = 0.0) -> dict[str, Any]:
    pool = await supervisor.pool_for(version)
    path = f"/v2/models/{version.model_name}/versions/1.0.0/infer"
    answer = await pool.request("POST", path, infer_body(seconds), [(b"Content-Type", b"application/json")])
    assert answer.status == 200, answer.body
    result: dict[str, Any] = orjson.loads(answer.body)
    return result


async def until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Wait for ``condition``; returns how long it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not reached in time"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def run(supervisor: Supervisor, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        supervisor.start_monitor()
        try:
            await scenario()
        finally:
            await supervisor.stop()

    asyncio.run(main())


def runner_pid(supervisor: Supervisor, version: VersionRecord) -> int:
    child = supervisor.runners[version.id].replicas[0].child
    assert child is not None and child.pid is not None
    return child.pid


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in (Path("/proc") / str(pid) / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _tcp_listen_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(fields[9])
    return inodes


def test_a_runner_listens_only_on_a_private_unix_socket(tmp_path: Path, plugin_site: Path) -> None:
    supervisor = make_supervisor(tmp_path)
    version = version_record()

    async def scenario() -> None:
        result = await infer(supervisor, version)
        assert result["outputs"][0]["data"] == [0.0]
        pid = runner_pid(supervisor, version)
        sock = supervisor.runners[version.id].replicas[0].socket_path
        assert sock is not None and sock == socket_path_for(tmp_path / "runners", version.id, os.getpid())
        # Only the platform's user can enter the directory; the socket itself is 0600 and ours.
        dir_st, sock_st = os.stat(sock.parent), os.stat(sock)
        assert stat.S_IMODE(dir_st.st_mode) == 0o700 and dir_st.st_uid == os.getuid()
        assert stat.S_ISSOCK(sock_st.st_mode) and stat.S_IMODE(sock_st.st_mode) & 0o077 == 0
        # The runner holds no listening TCP socket: no port for another local process to call without a key.
        sockets = _socket_inodes(pid)
        assert sockets and not sockets & _tcp_listen_inodes()
        unix_table = Path("/proc/net/unix").read_text()
        assert any(line.endswith(str(sock)) for line in unix_table.splitlines())
        assert supervisor.is_ready(version) and supervisor.preloaded_ready()

    run(supervisor, scenario)
    assert not supervisor.runners[version.id].replicas[0].socket_path.exists()  # type: ignore[union-attr]


def test_a_hung_runner_is_not_ready_within_seconds_then_killed_and_restarted(tmp_path: Path, plugin_site: Path) -> None:
    supervisor = make_supervisor(tmp_path, unresponsive_after_s=3.0)
    version = version_record()

    async def scenario() -> None:
        supervisor.preloaded.add(version.id)
        await supervisor.ensure_started(version)
        await until(supervisor.preloaded_ready, 10)
        first = runner_pid(supervisor, version)
        os.kill(first, signal.SIGSTOP)
        took_s = await until(lambda: not supervisor.preloaded_ready(), 10)
        assert took_s < 2.0  # one missed probe (0.3 s apart, 0.5 s timeout)
        assert not supervisor.is_ready(version)
        [reason] = supervisor.not_ready_reasons()
        assert reason.startswith("sleepy@1.0.0: running but not answering")
        # Silent for longer than unresponsive_after_s: SIGKILLed and restarted through the policy.
        await until(lambda: supervisor.is_ready(version) and runner_pid(supervisor, version) != first, 20)
        assert supervisor.runners[version.id].replicas[0].child.restarts == 1  # type: ignore[union-attr]
        assert (await infer(supervisor, version))["outputs"][0]["data"] == [0.0]
        assert supervisor.not_ready_reasons() == []

    run(supervisor, scenario)


def test_a_runner_given_up_on_is_not_ready_and_says_why(tmp_path: Path, plugin_site: Path) -> None:
    supervisor = make_supervisor(tmp_path)
    version = version_record()

    async def scenario() -> None:
        supervisor.preloaded.add(version.id)
        await supervisor.ensure_started(version)
        for _ in range(3):  # FAST allows 2 restarts: the third death is the last
            await until(lambda: supervisor.is_ready(version), 20)
            os.kill(runner_pid(supervisor, version), signal.SIGKILL)
            await until(lambda: not supervisor.is_ready(version), 5)
        runner = supervisor.runners[version.id]
        await until(lambda: runner.failed is not None, 10)
        assert not supervisor.preloaded_ready()  # it used to count as ready once given up on
        [reason] = supervisor.not_ready_reasons()
        assert "failed" in reason and "SIGKILL" in reason and "gave up after 2 restarts" in reason
        with pytest.raises(NotReady, match="gave up"):
            await supervisor.pool_for(version)

    run(supervisor, scenario)


def test_a_model_that_cannot_load_fails_at_once_instead_of_restarting(tmp_path: Path, plugin_site: Path) -> None:
    supervisor = make_supervisor(tmp_path)
    version = version_record("broken", fail_load=True)

    async def scenario() -> None:
        supervisor.preloaded.add(version.id)
        with pytest.raises(NotReady, match=r"the model failed to load.*the artifact is corrupt"):
            await supervisor.ensure_started(version)
        assert supervisor.runners[version.id].replicas[0].child.spawns == 1  # type: ignore[union-attr]
        assert not supervisor.preloaded_ready()
        assert "the artifact is corrupt" in supervisor.not_ready_reasons()[0]

    run(supervisor, scenario)


def test_a_timed_out_call_recycles_the_runner_so_the_next_call_is_prompt(tmp_path: Path, plugin_site: Path) -> None:
    supervisor = make_supervisor(tmp_path, request_timeout_s=1.0)
    version = version_record()

    async def scenario() -> None:
        await infer(supervisor, version)
        first = runner_pid(supervisor, version)
        with pytest.raises(RunnerTimeout):
            await infer(supervisor, version, seconds=30.0)  # the runner would burn CPU for 30 s on this
        started = time.monotonic()
        result = await infer(supervisor, version)  # waits for the fresh runner, not for the abandoned call
        assert result["outputs"][0]["data"] == [0.0]
        assert time.monotonic() - started < 15
        assert runner_pid(supervisor, version) != first
        child = supervisor.runners[version.id].replicas[0].child
        assert child is not None and child.last_exit is not None and "took longer than 1s" in child.last_exit

    run(supervisor, scenario)


def test_a_stale_socket_of_a_killed_gateway_is_cleared_and_never_used(tmp_path: Path, plugin_site: Path) -> None:
    supervisor = make_supervisor(tmp_path)
    version = version_record()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = socket_path_for(tmp_path / "runners", version.id, dead.pid)
    stale.parent.mkdir(parents=True)
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))  # bound, never listening again: what a SIGKILLed gateway's runner leaves
    leftover.close()

    async def scenario() -> None:
        await infer(supervisor, version)
        assert not stale.exists()
        assert supervisor.runners[version.id].replicas[0].socket_path != stale

    run(supervisor, scenario)


def test_the_runner_module_serves_tcp_when_started_by_hand(tmp_path: Path, plugin_site: Path) -> None:
    """``python -m modelmarket.runtime.runner --port 0``: what ``modelmarket runner`` does for a person."""
    from modelmarket.runtime.supervisor import materialize

    weights = tmp_path / "weights.txt"
    weights.write_text("w")
    spec = materialize(version_record(), FakeBlobs(weights), tmp_path / "runners")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelmarket.runtime.runner", "--spec", str(spec), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 60)  # a broken runner fails here, not at the timeout
        line = proc.stdout.readline() if readable else ""
        assert "listening on http://127.0.0.1:" in line, line
        url = line.rsplit(" ", 1)[1].strip()
        r = httpx.post(f"{url}/v2/models/sleepy/infer", content=infer_body(0.0), timeout=10)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [0.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == -signal.SIGTERM  # uvicorn re-raises the signal after a graceful stop


def _migrated(home: Path) -> bool:
    """The home's store has its schema (its SQLite file, or on the real engines its PostgreSQL database)."""
    if not (home / "modelmarket.db").exists() and not REAL:
        return False
    try:
        return bool(store_rows(home, "SELECT COUNT(*) FROM accounts"))
    except Exception:  # not created or not migrated yet
        return False


def test_the_metering_child_runs_from_its_module_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    from modelmarket.gateway.metering_process import MeteringProcess

    env = clean_env()
    env["MODELMARKET_HOME"] = str(tmp_path / "home")

    async def scenario() -> None:
        metering = MeteringProcess(tmp_path / "home" / "metering.log", env)
        metering.start()
        assert metering.child is not None
        command = metering.child.command
        assert command[1:3] == ["-m", "modelmarket.gateway.metering_process"]
        await until(lambda: _migrated(tmp_path / "home"), 30)  # bootstrap() ran
        await asyncio.sleep(1.0)
        assert metering.child.pid is not None and metering.failure is None
        await metering.stop()
        assert metering.child.returncode == 0  # it applied what was in the log and exited by itself

    asyncio.run(scenario())


def test_a_home_too_deep_for_a_socket_path_uses_a_private_short_directory(tmp_path: Path, plugin_site: Path) -> None:
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    supervisor = make_supervisor(deep)
    version = version_record()

    async def scenario() -> None:
        await infer(supervisor, version)
        sock = supervisor.runners[version.id].replicas[0].socket_path
        assert sock is not None and not sock.is_relative_to(deep)  # the deep path would not fit in sun_path
        assert len(os.fsencode(sock)) <= 103
        for directory in (sock.parent, sock.parent.parent):  # the shared temp dir's entry is ours and private too
            st = os.stat(directory)
            assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()

    run(supervisor, scenario)
    sock = supervisor.runners[version.id].replicas[0].socket_path
    assert sock is not None and not sock.parent.exists()  # cleared on stop, not left behind in the temp dir
