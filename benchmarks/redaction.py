"""Redaction: what replacing personal data costs per call, and what a policy costs the gateway on `sentiment`.

Prints, measured in one run on this machine:
- the cost of redacting one 1 kB text (median and p99 over many calls, in-process): a customer message holding an
  e-mail address, a phone number and a card number, with the three entities and with all fourteen; plain prose
  without personal data; and the gateway's whole OIP step (find, replace, re-encode the request);
- requests/s at concurrency 1 and 32 through one gateway on the demo's `sentiment`, sending the same 1 kB
  message with a key whose policy redacts the three entities and with a key without a policy, alternated over
  several rounds (medians), with the ratio. A last check proves the policy was in force: a text longer than the
  gateway may redact in one call (MODELMARKET_REDACT_MAX_CHARS, set to 4096 here) is refused (413) for the
  policy's key and served (200) for the other.

It starts its own gateway on a free loopback port in a temporary MODELMARKET_HOME and stops it.
Usage: python benchmarks/redaction.py [--calls N] [--seconds S] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import uvloop

from modelmarket.core.pii import PII_ENTITIES
from modelmarket.core.tensors import bytes_tensor
from modelmarket.gateway.privacy import PrivacyGuard
from modelmarket.privacy import PrivacyPolicies, RedactorCache
from modelmarket.runtime import oip
from modelmarket.runtime.pool import RunnerPool

MM = [sys.executable, "-m", "modelmarket.cli.main"]
THREE = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD")
_MESSAGE = (
    "Hello support team, I ordered the blue kettle on the 3rd of March and it still has not arrived, which is "
    "disappointing because I needed it for a family visit this weekend. Please reach me at jane.doe@example.com "
    "or on +1 212-555-0187 in the afternoon. I paid with my card 4111 1111 1111 1111 and would like a refund if "
    "it cannot be shipped this week. "
)
MESSAGE_1K = (_MESSAGE * 4)[:1024]
PROSE_1K = (
    "The film opens slowly, but the second half is a joy: the actors clearly enjoy themselves, the music carries "
    "every scene and the ending is earned. I would happily watch it again with friends. " * 8
)[:1024]
DENSE = "call +1 212-555-0187 or pay with 4111 1111 1111 1111; "
CHECK_REDACT_MAX_CHARS = 4096
"""The gateway's MODELMARKET_REDACT_MAX_CHARS here: above the 1 kB message, below what `sentiment` accepts."""


def _timings(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    for _ in range(min(20, calls)):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


class _Store:
    def __init__(self, redactors: RedactorCache) -> None:
        self.redactors = redactors
        self.capture_max_chars = 4096

    def policies(self) -> PrivacyPolicies:
        return PrivacyPolicies()

    def keep(self, calls: Any) -> int:
        return 0


def in_process(calls: int) -> dict[str, float]:
    redactors = RedactorCache()
    t0 = time.perf_counter()
    three = redactors.get(THREE)
    build_s = time.perf_counter() - t0
    every = redactors.get(PII_ENTITIES)
    assert "<EMAIL_ADDRESS>" in three.redact(MESSAGE_1K).text and not three.redact(PROSE_1K).changed
    guard = PrivacyGuard(_Store(redactors), max_chars=1 << 20, timeout_s=10, now=lambda: datetime.now(UTC))
    version: Any = SimpleNamespace(manifest=SimpleNamespace(redact=list(THREE)))
    request = oip.InferRequest(id=None, inputs=[bytes_tensor("text", [MESSAGE_1K.encode()], [1])])

    out = {"first_redactor_build_s": build_s}
    for name, fn in (
        ("message_three", lambda: three.redact(MESSAGE_1K)),
        ("message_all", lambda: every.redact(MESSAGE_1K)),
        ("prose_three", lambda: three.redact(PROSE_1K)),
    ):
        p50, p99 = _timings(fn, calls)
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = p50, p99

    async def gateway_step() -> list[float]:  # one event loop, as in the gateway
        times = []
        for i in range(calls + 20):
            t0 = time.perf_counter()
            await guard.redact_oip(version, None, request)
            if i >= 20:
                times.append((time.perf_counter() - t0) * 1000)
        return sorted(times)

    times = asyncio.run(gateway_step())
    out["gateway_step_three_p50_ms"] = statistics.median(times)
    out["gateway_step_three_p99_ms"] = times[min(len(times) - 1, int(0.99 * len(times)))]
    return out


# -- the gateway ------------------------------------------------------------------------------------------------


def _start(cmd: list[str], env: dict[str, str], pattern: str, timeout_s: float = 180) -> tuple[Any, str]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{cmd} exited before it was ready")
        match = re.search(pattern, line)
        if match:
            return proc, match.group(1)
    raise RuntimeError(f"{cmd} not ready in {timeout_s}s")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _body(text: str) -> bytes:
    return orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})


async def _throughput(pool: RunnerPool, headers: list[tuple[bytes, bytes]], concurrency: int, seconds: float) -> float:
    path, body = "/v2/models/sentiment/infer", _body(MESSAGE_1K)
    stop_at = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            r = await pool.request("POST", path, body, headers)
            if r.status != 200:
                raise RuntimeError(f"sentiment: HTTP {r.status} {r.body[:200]!r}")
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


async def _ready(pool: RunnerPool, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while (await pool.request("GET", "/v2/models/sentiment/ready")).status != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("sentiment not ready")
        await asyncio.sleep(0.2)


async def through_gateway(port: int, keys: dict[str, str], rounds: int, seconds: float) -> dict[str, float]:
    pool = RunnerPool.over_tcp("127.0.0.1", port, 64, 60)
    await _ready(pool)
    heads = {
        name: [(b"Authorization", f"Bearer {key}".encode()), (b"Content-Type", b"application/json")]
        for name, key in keys.items()
    }
    res: dict[str, float] = {}
    for concurrency in (1, 32):
        for name in ("policy", "plain"):
            await _throughput(pool, heads[name], concurrency, 1.0)  # warm-up
        off: list[float] = []
        on: list[float] = []
        for r in range(rounds):
            runs = [(off, heads["plain"]), (on, heads["policy"])]
            for out, head in runs if r % 2 == 0 else reversed(runs):
                out.append(await _throughput(pool, head, concurrency, seconds))
        res[f"plain_rps_c{concurrency}"] = statistics.median(off)
        res[f"policy_rps_c{concurrency}"] = statistics.median(on)
        res[f"ratio_c{concurrency}"] = statistics.median(a / b for a, b in zip(on, off, strict=True))
    longer = _body((DENSE * 200)[: CHECK_REDACT_MAX_CHARS + 1000])  # more than the gateway may redact in one call
    res["check_policy_status"] = float(
        (await pool.request("POST", "/v2/models/sentiment/infer", longer, heads["policy"])).status
    )
    res["check_plain_status"] = float(
        (await pool.request("POST", "/v2/models/sentiment/infer", longer, heads["plain"])).status
    )
    await pool.close()
    return res


def _mm(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*MM, *args], env=env, check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="in-process redactions timed per case")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput run")
    parser.add_argument("--rounds", type=int, default=4, help="policy on/off rounds per concurrency")
    args = parser.parse_args()
    local = in_process(args.calls)
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as home:
        env = {
            **os.environ,
            "MODELMARKET_HOME": home,
            "MODELMARKET_CACHE_REFRESH_S": "1",
            "MODELMARKET_REDACT_MAX_CHARS": str(CHECK_REDACT_MAX_CHARS),
        }
        print("building the demo catalogue ...", flush=True)
        subprocess.run([*MM, "demo", "--build-only"], env=env, check=True, stderr=subprocess.DEVNULL)
        issued = {
            name: json.loads(_mm(env, "keys", "create", "demo-consumer", "--json")) for name in ("policy", "plain")
        }
        keys = {name: str(doc["key"]) for name, doc in issued.items()}
        _mm(env, "privacy", "key", issued["policy"]["key_id"], "--redact", ",".join(THREE))
        gateway, port = _start([*MM, "serve", "--port", "0"], env, r"URL: http://127\.0\.0\.1:(\d+)")
        try:
            res = uvloop.run(through_gateway(int(port), keys, args.rounds, args.seconds))
        finally:
            _stop(gateway)
    _report(local, res, args)


def _report(local: dict[str, float], res: dict[str, float], args: argparse.Namespace) -> None:
    print(f"redaction of one 1 kB text, in-process ({args.calls} calls each; median / p99):")
    print(f"  first redactor built in {local['first_redactor_build_s']:.2f} s (imports Presidio; once per process)")
    for name, what in (
        ("message_three", "message with an e-mail, a phone and a card number, 3 entities"),
        ("message_all", f"the same message, all {len(PII_ENTITIES)} entities"),
        ("prose_three", "plain prose without personal data, 3 entities"),
        ("gateway_step_three", "the gateway's OIP step on the message (find, replace, re-encode), 3 entities"),
    ):
        print(f"  {what}: {local[f'{name}_p50_ms']:.2f} / {local[f'{name}_p99_ms']:.2f} ms")
    print(f"sentiment through one gateway, the 1 kB message per call, medians of {args.rounds} alternated runs:")
    for c in (1, 32):
        plain, policy = res[f"plain_rps_c{c}"], res[f"policy_rps_c{c}"]
        print(
            f"  concurrency {c:>2}: without a policy {plain:7.0f} req/s  with a policy {policy:7.0f} req/s  "
            f"ratio {policy / plain:.2f} (median of per-round ratios {res[f'ratio_c{c}']:.2f})"
        )
    on, off = int(res["check_policy_status"]), int(res["check_plain_status"])
    verdict = "the policy was in force" if (on, off) == (413, 200) else "WARNING: the policy was not in force?"
    print(
        f"  check: {CHECK_REDACT_MAX_CHARS + 1000} characters (MODELMARKET_REDACT_MAX_CHARS is "
        f"{CHECK_REDACT_MAX_CHARS}) got HTTP {on} with the policy's key, {off} without: {verdict}"
    )
    print(json.dumps({k: round(v, 4) for k, v in {**local, **res}.items()}))


if __name__ == "__main__":
    main()
