"""7. Readiness tells the truth: a hung runner (SIGSTOP) makes /v2/health/ready and the model's ready endpoint
answer 400 within a few seconds, while the other models keep serving and /v2/health/live stays fast; once the runner
runs again (SIGCONT) the server is ready again."""

from __future__ import annotations

import os
import signal
import time

import httpx
from tests.hostile.conftest import Market
from tests.hostile.support import LiveProbe, digits_body
from tests.hostile.test_c2_runner_sockets import runner_processes

NOT_READY_WITHIN_S = 10.0
"""Generous: the supervisor probes every second with a one-second timeout."""
READY_AGAIN_WITHIN_S = 90.0
STAYS_NOT_READY_S = 2.0
POLL_S = 0.2


def _runner_pid(market: Market, model: str) -> int:
    version_id = httpx.get(f"{market.url}/api/models/{model}/versions/latest", timeout=10).json()["id"]
    pids = [pid for pid, argv in runner_processes(market.gateway.proc.pid) if any(version_id in a for a in argv)]
    assert len(pids) == 1, f"expected one runner of {model} ({version_id}), found {pids}"
    return pids[0]


def _wait_for(url: str, status: int, within_s: float) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    while True:
        r = httpx.get(url, timeout=10)
        waited = time.monotonic() - started
        if r.status_code == status or waited > within_s:
            return r, waited
        time.sleep(POLL_S)


def test_a_hung_runner_makes_the_server_not_ready_until_it_runs_again(market: Market) -> None:
    who = market.consumer("readiness")
    pid = _runner_pid(market, "sentiment")
    os.kill(pid, signal.SIGSTOP)
    try:
        with LiveProbe(market.url, "a SIGSTOPped sentiment runner"):
            r, waited = _wait_for(f"{market.url}/v2/health/ready", 400, NOT_READY_WITHIN_S)
            print(f"[ready] server not ready {waited:.1f}s after SIGSTOP of runner {pid}: {r.text[:300]}")
            assert r.status_code == 400, f"still {r.status_code} {r.text} {waited:.1f}s after SIGSTOP"
            doc = r.json()
            assert doc["ready"] is False and "sentiment" in doc["error"], doc
            stays_s = time.monotonic() + STAYS_NOT_READY_S  # no flapping back to ready while it is still hung
            while time.monotonic() < stays_s:
                assert httpx.get(f"{market.url}/v2/health/ready", timeout=10).status_code == 400
                time.sleep(POLL_S)
            model = httpx.get(f"{market.url}/v2/models/sentiment/ready", timeout=10)
            assert model.status_code == 400 and model.json()["ready"] is False, model.text
            # the other models are not held up by the hung one
            assert httpx.get(f"{market.url}/v2/models/digits/ready", timeout=10).status_code == 200
            call = httpx.post(f"{market.url}/v2/models/digits/infer", json=digits_body(), headers=who.auth, timeout=30)
            assert call.status_code == 200, call.text
    finally:
        os.kill(pid, signal.SIGCONT)
    r, waited = _wait_for(f"{market.url}/v2/health/ready", 200, READY_AGAIN_WITHIN_S)
    print(f"[ready] ready again {waited:.1f}s after SIGCONT")
    assert r.status_code == 200 and r.json() == {"ready": True}, r.text
    assert httpx.get(f"{market.url}/v2/models/sentiment/ready", timeout=10).status_code == 200
    assert market.events(who) == 1
