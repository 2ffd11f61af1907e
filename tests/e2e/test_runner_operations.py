"""Runner operations through a real gateway under load: batching, warm swaps, crashes, scaling.

Every test publishes ``python``-runtime packages under the ``process`` profile (the cheapest to start), starts a
real gateway process with the settings it needs in its environment, and drives it with httpx clients:

- batching joins concurrent calls into fewer model calls, and each caller still gets exactly its own ``2 * x``,
  billed once, with the IU and cost an unbatched call of its size gets;
- moving ``latest`` (a publish, then ``models alias``) while clients call it drops no call: answers come from
  the old version until the new one is warm, then only from the new one, and the old one's runner drains;
- a replica SIGKILLed under load costs at most a 503 with Retry-After per call it had, no failed call is
  billed, and the replica comes back;
- a ``min: 0`` version cold-starts on its first call, scales out under a queue (never past ``max``), scales to
  zero when idle, and cold-starts again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from tests.e2e.conftest import EnvCli, Gateway, start_gateway, stop_gateway
from tests.sandbox_packages import PROVIDER, slow_echo_package, write_package

from engines import developer_setting
from modelmarket.cli.main import cli as cli_main

PROCESS = {"profile": "process"}
MODEL = "py-slow-echo"
COLD = "x-modelmarket-cold-start"


@dataclass
class SandboxCli(EnvCli):
    """The CLI (and the gateway it starts) with extra settings in its environment."""

    def run(self, *args: str, check: bool = True, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """The real CLI, run in this process: starting a second interpreter costs seconds on a busy machine (the
        imports), and these tests call it often. Its environment is the gateway's, MODELMARKET_* from ours left out."""
        env: dict[str, str | None] = {k: None for k in os.environ if developer_setting(k)}
        env.update({k: v for k, v in self.env.items() if k.startswith("MODELMARKET_")})
        result = CliRunner().invoke(cli_main, list(args), env=env, catch_exceptions=False)
        if check and result.exit_code != 0:
            raise AssertionError(f"modelmarket {' '.join(args)} failed ({result.exit_code}):\n{result.output}")
        return subprocess.CompletedProcess(["modelmarket", *args], result.exit_code, result.stdout, "")


@dataclass
class Platform:
    cli: SandboxCli
    gw: Gateway
    key: str

    def client(self, timeout_s: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.gw.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=timeout_s)

    def status(self) -> dict[str, Any]:
        """``runners/status.json`` as the gateway last wrote it (what ``runners --json`` reads, without the cost
        of starting the CLI in a poll loop)."""
        path = self.cli.home / "runners" / "status.json"
        for _ in range(50):
            try:
                return json.loads(path.read_text())  # type: ignore[no-any-return]
            except (FileNotFoundError, ValueError):  # not written yet
                time.sleep(0.05)
        raise AssertionError(f"{path} was never written")


def _runner(doc: dict[str, Any], version: str, model: str = MODEL) -> dict[str, Any] | None:
    return next((r for r in doc["runners"] if r["model"] == model and r["version"] == version), None)


def _wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


@pytest.fixture()
def platforms() -> Iterator[list[Platform]]:
    """Gateways a test started: each is stopped at its end, whatever happened."""
    started: list[Platform] = []
    yield started
    for platform in started:
        stop_gateway(platform.gw)


def _platform(
    tmp: Path,
    started: list[Platform],
    packages: list[Path],
    env: dict[str, str] | None = None,
    *,
    wait_ready: bool = True,
    preload: bool = True,
    publish_env: dict[str, str] | None = None,
) -> Platform:
    """``env`` for the publishes and the gateway; ``publish_env``, when given, for the publishes instead."""
    cli = SandboxCli(tmp / "home", extra_env={"MODELMARKET_SANDBOX_MINIMUM": "process", **(env or {})})
    publisher = cli if publish_env is None else SandboxCli(cli.home, extra_env={**cli.extra_env, **publish_env})
    publisher.run("accounts", "create", PROVIDER, "--role", "provider")
    for package in packages:
        publisher.run("publish", str(package))
    key = cli.new_consumer("load")
    gw = start_gateway(cli, models=(MODEL,) if wait_ready else (), extra_args=() if preload else ("--no-preload",))
    platform = Platform(cli, gw, key)
    started.append(platform)
    return platform


def _body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def _doubled(answer: httpx.Response, x: np.ndarray) -> bool:
    """Whether ``answer`` is exactly ``2 * x`` (compared as float32, the tensor's type, element by element)."""
    out = answer.json()["outputs"][0]
    y = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    return y.shape == x.shape and bool(np.array_equal(y, x * np.float32(2)))


def _events(http: httpx.Client) -> int:
    return int(http.get("/api/usage").json()["total_events"])


def _settled_events(http: httpx.Client, expected: int, timeout_s: float = 15) -> int:
    """The usage event count once metering has caught up with ``expected`` (or the count at the timeout), checked
    again a moment later so an extra event written late is seen."""
    deadline = time.monotonic() + timeout_s
    while _events(http) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    return _events(http)


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None
    route: str | None = None
    correct: bool = False
    retry_after: str | None = None
    error: str | None = None


class Load:
    """``threads`` clients calling ``MODEL`` back to back, each call recorded, until stopped."""

    def __init__(self, platform: Platform, threads: int = 4) -> None:
        self.platform = platform
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with self.platform.client() as http:
            while not self._stop.is_set():
                x = rng.standard_normal((1, 4)).astype(np.float32)
                t0 = time.monotonic()
                try:
                    r = http.post(f"/v2/models/{MODEL}/infer", json=_body(x))
                except httpx.HTTPError as exc:
                    found = Outcome(t0, time.monotonic(), None, error=repr(exc))
                else:
                    found = Outcome(
                        t0,
                        time.monotonic(),
                        r.status_code,
                        route=r.headers.get("x-modelmarket-route"),
                        correct=r.status_code == 200 and _doubled(r, x),
                        retry_after=r.headers.get("retry-after"),
                        error=None if r.status_code == 200 else r.text[:300],
                    )
                with self._lock:
                    self.outcomes.append(found)


# -- 1. batching --------------------------------------------------------------------------------------------------
_RECORDING_ECHO = """
import os
import time

DELAY_S = {delay_s!r}
LOG = {log!r}


class Model:
    def load(self, path):
        self.path = path

    def predict(self, inputs):
        x = inputs["x"]
        time.sleep(DELAY_S)
        with open(LOG, "a") as fh:  # one line per model call: the runner's pid and the rows it was given
            fh.write(f"{{os.getpid()}} {{x.shape[0]}}\\n")
        return {{"y": x * 2}}
"""


def recording_echo_package(dest: Path, log: Path, delay_s: float, **sections: Any) -> Path:
    """``y = 2 * x`` after ``delay_s``, appending ``"<pid> <rows>"`` to ``log`` for every model call."""
    source = _RECORDING_ECHO.format(delay_s=float(delay_s), log=str(log))
    summary = "Doubles its input after a pause, logging each model call."
    return write_package(dest, MODEL, source, summary, sandbox=PROCESS, **sections)


def _model_calls(log: Path) -> list[tuple[int, int]]:
    """(runner pid, rows) of each model call so far."""
    if not log.exists():
        return []
    return [(int(pid), int(rows)) for pid, rows in (line.split() for line in log.read_text().splitlines())]


def test_batched_calls_answer_exactly_and_are_billed_one_by_one(tmp_path: Path, platforms: list[Platform]) -> None:
    delay_s, calls = 0.05, 32
    log = tmp_path / "model-calls.log"
    package = recording_echo_package(tmp_path / "pkg", log, delay_s, batching={"max_batch_size": 16, "max_delay_ms": 5})
    platform = _platform(tmp_path, platforms, [package])
    rng = np.random.default_rng(7)
    with platform.client() as http:
        # Alone (one call at a time: a batch of one each), the IU and cost each size of call gets.
        alone: dict[int, tuple[str, str]] = {}
        for rows in (1, 2, 3):
            x = rng.standard_normal((rows, 4)).astype(np.float32)
            r = http.post(f"/v2/models/{MODEL}/infer", json=_body(x))
            assert r.status_code == 200 and _doubled(r, x), r.text
            alone[rows] = (r.headers["x-modelmarket-iu"], r.headers["x-modelmarket-cost"])
        events_before = _settled_events(http, 3)
        assert events_before == 3
    calls_before = len(_model_calls(log))
    assert calls_before == 3, "each lone call is one model call"

    inputs = [rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32) for _ in range(calls)]

    async def burst() -> tuple[list[httpx.Response], float]:
        limits = httpx.Limits(max_connections=calls, max_keepalive_connections=calls)
        headers = {"Authorization": f"Bearer {platform.key}"}
        async with httpx.AsyncClient(base_url=platform.gw.url, headers=headers, timeout=60, limits=limits) as http:
            await http.get("/v2/health/live")
            started = time.monotonic()
            answers = await asyncio.gather(*(http.post(f"/v2/models/{MODEL}/infer", json=_body(x)) for x in inputs))
            return list(answers), time.monotonic() - started

    answers, wall_s = asyncio.run(burst())

    for x, r in zip(inputs, answers, strict=True):
        assert r.status_code == 200, r.text
        assert _doubled(r, x), (x.tolist(), r.json())  # its own rows, doubled, nobody else's
        assert (r.headers["x-modelmarket-iu"], r.headers["x-modelmarket-cost"]) == alone[x.shape[0]], (
            "a batched call is billed as the same call alone"
        )
    assert len({r.headers["x-request-id"] for r in answers}) == calls
    with platform.client() as http:
        assert _settled_events(http, events_before + calls) == events_before + calls, "each call billed once"

    model_calls = [rows for _, rows in _model_calls(log)[calls_before:]]
    assert sum(model_calls) == sum(x.shape[0] for x in inputs), "every row ran exactly once"
    assert max(model_calls) <= 16, model_calls
    assert len(model_calls) <= calls // 2, f"calls were not joined: {model_calls}"
    assert max(model_calls) > 3, f"no model call joined two requests: {model_calls}"
    assert wall_s < calls * delay_s, f"{calls} calls took {wall_s:.2f}s: as long as one model call each"


# -- 2. swaps under load ------------------------------------------------------------------------------------------
def _switched(outcomes: list[Outcome], since: float, old: str, new: str, grace_s: float) -> tuple[float, int]:
    """Check the calls started after ``since`` switched from ``old`` to ``new`` once: return when ``new`` first
    answered, and how many calls answered after the switch's grace (none of them may be ``old``)."""
    window = [o for o in outcomes if o.started >= since]
    first_new = min((o.ended for o in window if o.route == new), default=None)
    assert first_new is not None, f"{new} never answered"
    late = [o for o in window if o.started > first_new + grace_s]
    stale = [o for o in late if o.route == old]
    assert not stale, f"{len(stale)} of {len(late)} calls after the switch still went to {old}"
    return first_new, len(late)


def test_moving_latest_under_load_drops_no_call_and_drains_the_old_version(
    tmp_path: Path, platforms: list[Platform]
) -> None:
    def package(version: str) -> Path:
        return slow_echo_package(tmp_path / f"pkg-{version}", MODEL, 0.02, sandbox=PROCESS, version=version)

    platform = _platform(tmp_path, platforms, [package("1.0.0")], {"MODELMARKET_CACHE_REFRESH_S": "0.5"})
    v1, v2 = f"{MODEL}@1.0.0", f"{MODEL}@1.1.0"
    grace_s = 0.5

    def stopped(version: str) -> bool:
        found = _runner(platform.status(), version)
        return found is not None and found["state"] == "stopped" and found["processes"] == []

    with Load(platform) as load:
        _wait_for("baseline calls", lambda: len(load.snapshot()) >= 20, 30)
        # A publish moves `latest` to 1.1.0.
        published_at = time.monotonic()
        platform.cli.run("publish", str(package("1.1.0")))
        _wait_for("1.1.0 answering", lambda: any(o.route == v2 for o in load.snapshot()), 30)
        _wait_for("1.0.0 drained", lambda: stopped("1.0.0"), 30, 0.2)
        time.sleep(grace_s + 0.5)
        # `models alias` moves it back: 1.0.0 is started again, 1.1.0 drains.
        rolled_back_at = time.monotonic()
        platform.cli.run("models", "alias", MODEL, "latest", "1.0.0")
        _wait_for(
            "1.0.0 answering again",
            lambda: any(o.route == v1 and o.started > rolled_back_at for o in load.snapshot()),
            30,
        )
        _wait_for("1.1.0 drained", lambda: stopped("1.1.0"), 30, 0.2)
        time.sleep(grace_s + 0.5)
    outcomes = load.snapshot()

    failed = [o for o in outcomes if o.status != 200 or not o.correct]
    assert not failed, f"{len(failed)} of {len(outcomes)} calls failed, e.g. {failed[:3]}"
    assert {o.route for o in outcomes} == {v1, v2}
    assert all(o.route == v1 for o in outcomes if o.ended < published_at), "1.1.0 answered before it was published"
    first_v2, after_publish = _switched(
        [o for o in outcomes if o.started < rolled_back_at], published_at, v1, v2, grace_s
    )
    assert after_publish > 0
    assert all(o.route == v2 for o in outcomes if first_v2 + grace_s < o.started and o.ended < rolled_back_at)
    _, after_rollback = _switched(outcomes, rolled_back_at, v2, v1, grace_s)
    assert after_rollback > 0

    doc = platform.cli.json("runners")
    assert doc["gateway_running"]
    old, current = _runner(doc, "1.1.0"), _runner(doc, "1.0.0")
    assert old is not None and old["state"] == "stopped" and old["draining"] and old["processes"] == [], old
    assert current is not None and current["state"] == "ready" and not current["draining"], current
    with platform.client() as http:
        assert _settled_events(http, len(outcomes)) == len(outcomes)


# -- 3. a replica killed under load ------------------------------------------------------------------------------
def test_a_replica_killed_under_load_fails_no_call_silently_and_comes_back(
    tmp_path: Path, platforms: list[Platform]
) -> None:
    package = slow_echo_package(tmp_path / "pkg", MODEL, 0.05, sandbox=PROCESS, replicas={"min": 2, "max": 2})
    platform = _platform(tmp_path, platforms, [package])

    def serving(doc: dict[str, Any]) -> list[dict[str, Any]]:
        found = _runner(doc, "1.0.0")
        if found is None or found["state"] != "ready":
            return []
        return [p for p in found["processes"] if p["state"] == "running" and p["pid"]]

    before = _wait_for(
        "two replicas running", lambda: found if len(found := serving(platform.status())) == 2 else None, 30
    )
    victim = before[0]
    cmdline = Path(f"/proc/{victim['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"modelmarket.runtime.runner" in cmdline, f"pid {victim['pid']} is not a runner: {cmdline}"

    with Load(platform) as load:
        _wait_for("calls on both replicas", lambda: len(load.snapshot()) >= 30, 30)
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()

        def restarted() -> bool:
            procs = serving(platform.status())
            again = next((p for p in procs if p["replica"] == victim["replica"]), None)
            return len(procs) == 2 and again is not None and again["pid"] != victim["pid"] and again["restarts"] >= 1

        _wait_for("the killed replica restarted", restarted, 30, 0.2)
        back_at = time.monotonic()
        _wait_for("calls after the restart", lambda: sum(o.started > back_at + 1 for o in load.snapshot()) >= 20, 30)
    outcomes = load.snapshot()

    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 503]
    other = [o for o in outcomes if o.status not in (200, 503)]
    assert not other, f"calls that neither succeeded nor got a 503: {other[:3]}"
    assert all(o.correct for o in ok)
    assert all(o.retry_after for o in refused), f"a 503 without Retry-After: {refused[:3]}"
    assert all(killed_at <= o.ended and o.started <= back_at for o in refused), "a 503 away from the crash"
    assert len(ok) > len(refused)
    after = [o for o in outcomes if o.started > back_at + 1]
    assert after and all(o.status == 200 for o in after), "the version does not serve again after the restart"
    with platform.client() as http:
        assert _settled_events(http, len(ok)) == len(ok), f"{len(refused)} refused calls; no failed call is billed"

    found = _runner(platform.cli.json("runners"), "1.0.0")
    assert found is not None and found["state"] == "ready", found
    assert sum(p["restarts"] for p in found["processes"]) >= 1, found
    assert victim["pid"] not in {p["pid"] for p in found["processes"]}
    assert len(found["processes"]) == 2 and found["replicas"]["running"] == 2, found


# -- 4. scale out, scale to zero --------------------------------------------------------------------------------
def test_a_min_zero_version_cold_starts_scales_out_within_max_and_back_to_zero(
    tmp_path: Path, platforms: list[Platform]
) -> None:
    log = tmp_path / "model-calls.log"
    package = recording_echo_package(tmp_path / "pkg", log, 0.3, replicas={"min": 0, "max": 3})
    env = {"MODELMARKET_REPLICA_IDLE_S": "1", "MODELMARKET_REPLICA_SCALE_QUEUE": "1"}
    platform = _platform(tmp_path, platforms, [package], env, wait_ready=False, preload=False)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)

    with platform.client() as http:
        first = http.post(f"/v2/models/{MODEL}/infer", json=_body(x))
    assert first.status_code == 200 and _doubled(first, x), first.text
    assert COLD in first.headers and float(first.headers[COLD]) > 0, dict(first.headers)

    seen: list[tuple[int, int]] = []  # (replicas.running, processes) in each status written meanwhile

    def replicas_now() -> int:
        found = _runner(platform.status(), "1.0.0")
        if found is None:
            return 0
        seen.append((found["replicas"]["running"], len(found["processes"])))
        return int(found["replicas"]["running"])

    calls_before = len(_model_calls(log))
    with Load(platform, threads=8) as load:  # 8 clients back to back: a queue on one replica
        _wait_for("a second replica", lambda: replicas_now() > 1, 20)
        # A replica started for the queue must get to serve (not be stopped as "idle" while it starts).
        try:
            _wait_for("calls on another replica", lambda: len({pid for pid, _ in _model_calls(log)}) > 1, 15)
        except AssertionError as exc:
            served = Counter(pid for pid, _ in _model_calls(log))
            raise AssertionError(f"{exc}: calls per runner pid {dict(served)}, replicas seen {seen[-5:]}") from None
        until = time.monotonic() + 1.5
        while time.monotonic() < until:  # a while at full scale, watched
            replicas_now()
            time.sleep(0.1)
    outcomes = load.snapshot()
    failed = [o for o in outcomes if o.status != 200 or not o.correct]
    assert not failed, f"{len(failed)} of {len(outcomes)} calls failed, e.g. {failed[:3]}"
    assert max(running for running, _ in seen) > 1, f"never scaled out: {seen}"
    assert max(max(pair) for pair in seen) <= 3, f"more replicas than max 3: {seen}"
    served_by = Counter(pid for pid, _ in _model_calls(log)[calls_before:])
    assert len(served_by) > 1, f"only one runner served: {served_by}"

    def at_zero() -> dict[str, Any] | None:
        found = _runner(platform.status(), "1.0.0")
        ok = found is not None and found["state"] == "stopped" and found["replicas"]["running"] == 0
        return found if ok else None

    _wait_for("scale to zero", at_zero, 20, 0.2)
    found = _runner(platform.cli.json("runners"), "1.0.0")
    assert found is not None and found["state"] == "stopped" and found["processes"] == [], found

    with platform.client() as http:
        again = http.post(f"/v2/models/{MODEL}/infer", json=_body(x))
        warm = http.post(f"/v2/models/{MODEL}/infer", json=_body(x))
    assert again.status_code == 200 and _doubled(again, x), again.text
    assert COLD in again.headers, dict(again.headers)
    assert warm.status_code == 200 and COLD not in warm.headers, dict(warm.headers)


_SLOW_LOAD = """
import time


class Model:
    def load(self, path):
        time.sleep(LOAD_S)

    def predict(self, inputs):
        return {"y": inputs["x"] * 2}
"""

_CRASHES = """
import os


class Model:
    def load(self, path):
        pass

    def predict(self, inputs):
        os._exit(9)  # the whole runner dies with every call
"""


def test_a_cold_version_is_not_ready_until_loaded_and_calls_wait_only_up_to_the_bound(
    tmp_path: Path, platforms: list[Platform]
) -> None:
    """A model that takes 6 s to load, with MODELMARKET_RUNNER_START_TIMEOUT_S=2: model-ready says no while it
    loads, and a call that would wait longer than the bound is answered 503 with Retry-After (never billed)."""
    slow = write_package(tmp_path / "slow", MODEL, _SLOW_LOAD.replace("LOAD_S", "6"), "Loads slowly.", sandbox=PROCESS)
    env = {"MODELMARKET_RUNNER_START_TIMEOUT_S": "2"}
    # the gate starts it as well (its smoke test): there the start may take its 6 s
    started = {"MODELMARKET_RUNNER_START_TIMEOUT_S": "30"}
    platform = _platform(tmp_path, platforms, [slow], env, wait_ready=False, preload=False, publish_env=started)
    with platform.client() as http:
        assert http.get(f"/v2/models/{MODEL}/ready").status_code != 200
        t0 = time.monotonic()
        r = http.post(f"/v2/models/{MODEL}/infer", json=_body(np.ones((1, 4), np.float32)))
        waited = time.monotonic() - t0
        assert r.status_code == 503 and r.headers.get("retry-after"), r.text
        assert "not ready" in r.json()["error"] and waited < 5, (waited, r.text)
        assert http.get(f"/v2/models/{MODEL}/ready").status_code != 200
        assert _events(http) == 0


def test_a_runner_that_keeps_crashing_is_given_up_on_and_runners_shows_why(
    tmp_path: Path, platforms: list[Platform]
) -> None:
    """Every call kills its runner: each call is a 503 (never billed), the supervisor restarts it with backoff,
    then marks it failed; `modelmarket runners` shows the state, the restarts and the reason."""
    crash = write_package(tmp_path / "crash", MODEL, _CRASHES, "Exits in every call.", sandbox=PROCESS)
    env = {"MODELMARKET_RUNNER_MAX_RESTARTS": "2"}
    platform = _platform(tmp_path, platforms, [crash], env)
    with platform.client() as http:
        for _ in range(40):  # each call waits for the restart in progress, then crashes the new runner
            r = http.post(f"/v2/models/{MODEL}/infer", json=_body(np.ones((1, 4), np.float32)))
            assert r.status_code == 503 and r.headers.get("retry-after"), r.text
            runner = _runner(platform.status(), "1.0.0")
            if runner is not None and runner["state"] == "failed":
                break
            time.sleep(0.2)
        assert _events(http) == 0
    doc = _wait_for(
        "the runner to be given up on",
        lambda: (d := platform.cli.json("runners")) and (r := _runner(d, "1.0.0")) and r["state"] == "failed" and d,
        20,
    )
    runner = _runner(doc, "1.0.0")
    assert runner is not None and "gave up after 2 restarts" in (runner["last_error"] or ""), runner
    assert "exited with code 9" in runner["last_error"], runner
    table = platform.cli.run("runners").stdout
    assert "failed" in table and MODEL in table
