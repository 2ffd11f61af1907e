"""Gateway overhead on `digits`: the same OIP request sent to a runner directly and through the gateway.

Prints, measured in one run on this machine:
- sequential latency (median, p99) direct vs gateway, and the gateway's overhead;
- requests/s at concurrency 1 and 32, direct vs gateway, with the ratio;
- requests/s at concurrency 32 through the same gateway for an account with limits enforced (a subscription plan
  with included IU, and an rpm far above what is reached, a daily IU quota and a monthly budget set with
  `modelmarket limits set`) and for one without limits, alternated over several rounds (medians), with the ratio.
  A last check sets the limited account's rpm to 1 and expects HTTP 429, proving its limits were enforced.

It starts its own gateway and runner on free loopback ports in a temporary MODELMARKET_HOME and stops them.
Usage: python benchmarks/gateway_overhead.py [--requests N] [--seconds S] [--rounds R] [--limit-seconds S]
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
from dataclasses import dataclass
from pathlib import Path

import uvloop

from modelmarket.runtime.pool import RunnerPool
from modelmarket.settings import Settings

MM = [sys.executable, "-m", "modelmarket.cli.main"]
LIMITED_ACCOUNT = "bench-limited"
LIMITED_PLANS = """
plans:
  - {name: bench-pro, kind: subscription, currency: USD, fee: "20.00", included: {image: 10000}}
"""
LIMITS = ["--rpm", "10000000", "--iu-per-day", "image=100000000", "--budget", "1000000.00"]
"""Far above what a benchmark reaches: every call is checked and counted, none is refused."""


def _start(
    cmd: list[str], env: dict[str, str], pattern: str, timeout_s: float = 120
) -> tuple[subprocess.Popen[str], str]:
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
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(
    pool: RunnerPool, path: str, body: bytes, headers: list[tuple[bytes, bytes]], n: int
) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await pool.request("POST", path, body, headers)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status} {r.body[:200]!r}")
    return out


async def _throughput(
    pool: RunnerPool,
    path: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    concurrency: int,
    seconds: float,
) -> float:
    stop_at = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            r = await pool.request("POST", path, body, headers)
            if r.status != 200:
                raise RuntimeError(f"{path}: HTTP {r.status}")
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


async def _measure(
    gw_port: int, rn_port: int, key: str, body: bytes, n: int, seconds: float, limited: LimitedRun
) -> dict[str, float]:
    path = "/v2/models/digits/infer"
    gw = RunnerPool.over_tcp("127.0.0.1", gw_port, 64, 30)
    rn = RunnerPool.over_tcp("127.0.0.1", rn_port, 64, 30)
    gw_h = [(b"Authorization", f"Bearer {key}".encode()), (b"Content-Type", b"application/json")]
    rn_h = [(b"Content-Type", b"application/json")]
    await _sequential(gw, path, body, gw_h, 200)  # warm-up
    await _sequential(rn, path, body, rn_h, 200)
    direct: list[float] = []
    through: list[float] = []
    for _ in range(10):  # interleave blocks so drift hits both sides alike
        direct += await _sequential(rn, path, body, rn_h, n // 10)
        through += await _sequential(gw, path, body, gw_h, n // 10)
    res = {
        "direct_p50_ms": statistics.median(direct),
        "direct_p99_ms": _pct(direct, 0.99),
        "gateway_p50_ms": statistics.median(through),
        "gateway_p99_ms": _pct(through, 0.99),
    }
    for c in (1, 32):
        res[f"direct_rps_c{c}"] = await _throughput(rn, path, body, rn_h, c, seconds)
        res[f"gateway_rps_c{c}"] = await _throughput(gw, path, body, gw_h, c, seconds)
    res.update(await _limits_on_off(gw, path, body, gw_h, limited))
    await gw.close()
    await rn.close()
    return res


@dataclass(frozen=True)
class LimitedRun:
    key: str
    env: dict[str, str]
    rounds: int
    seconds: float


def _set_up_limited(env: dict[str, str], home: str) -> str:
    """An account on a subscription plan with limits, and its key (set before the gateway starts)."""
    plans = Path(home) / "bench-plans.yaml"
    plans.write_text(LIMITED_PLANS)
    for args in (
        ["accounts", "create", LIMITED_ACCOUNT, "--role", "consumer"],
        ["plans", "apply", str(plans)],
        ["subscribe", LIMITED_ACCOUNT, "bench-pro"],
        ["limits", "set", LIMITED_ACCOUNT, *LIMITS],
    ):
        subprocess.run([*MM, *args], env=env, check=True, capture_output=True)
    return subprocess.run(
        [*MM, "keys", "create", LIMITED_ACCOUNT], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


async def _limits_on_off(
    gw: RunnerPool, path: str, body: bytes, free_h: list[tuple[bytes, bytes]], limited: LimitedRun
) -> dict[str, float]:
    """Requests/s at concurrency 32 without and with limits, alternated (ABBA) so drift hits both alike."""
    limited_h = [(b"Authorization", f"Bearer {limited.key}".encode()), (b"Content-Type", b"application/json")]
    await _sequential(gw, path, body, limited_h, 200)  # warm-up
    off: list[float] = []
    on: list[float] = []
    for r in range(limited.rounds):
        runs = [(off, free_h), (on, limited_h)]
        for out, headers in runs if r % 2 == 0 else reversed(runs):
            out.append(await _throughput(gw, path, body, headers, 32, limited.seconds))
    # Proof that the limits were enforced: an rpm of 1 must refuse the next call once the gateway reloads.
    subprocess.run(
        [*MM, "limits", "set", LIMITED_ACCOUNT, "--rpm", "1"], env=limited.env, check=True, capture_output=True
    )
    await asyncio.sleep(Settings().cache_refresh_s + 1.0)
    refused = await gw.request("POST", path, body, limited_h)
    return {
        "limits_off_rps_c32": statistics.median(off),
        "limits_on_rps_c32": statistics.median(on),
        "limits_ratio_per_round_median": statistics.median(a / b for a, b in zip(on, off, strict=True)),
        "limits_rounds": float(limited.rounds),
        **{f"limits_off_rps_round{i}": v for i, v in enumerate(off)},
        **{f"limits_on_rps_round{i}": v for i, v in enumerate(on)},
        "limits_check_status": float(refused.status),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests per side")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--rounds", type=int, default=8, help="limits on/off rounds (each runs both)")
    parser.add_argument("--limit-seconds", type=float, default=2.5, help="duration of each limits on/off run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as home:
        env = {**os.environ, "MODELMARKET_HOME": home}
        print("building the demo catalogue ...", flush=True)
        subprocess.run([*MM, "demo", "--build-only"], env=env, check=True, stderr=subprocess.DEVNULL)
        key = subprocess.run(
            [*MM, "keys", "create", "demo-consumer"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        body = (Path(home) / "demo" / "examples" / "digit.json").read_bytes()
        limited = LimitedRun(_set_up_limited(env, home), env, args.rounds, args.limit_seconds)
        gateway, gw_url = _start([*MM, "serve", "--port", "0"], env, r"URL: http://127\.0\.0\.1:(\d+)")
        runner, rn_url = _start([*MM, "runner", "digits", "--port", "0"], env, r"listening on http://[\d.]+:(\d+)")
        try:
            res = uvloop.run(_measure(int(gw_url), int(rn_url), key, body, args.requests, args.seconds, limited))
        finally:
            _stop(gateway)
            _stop(runner)
    over50 = res["gateway_p50_ms"] - res["direct_p50_ms"]
    over99 = res["gateway_p99_ms"] - res["direct_p99_ms"]
    print(f"digits, sequential ({args.requests} requests each side, one keep-alive connection):")
    print(f"  direct  p50 {res['direct_p50_ms']:.3f} ms  p99 {res['direct_p99_ms']:.3f} ms")
    print(f"  gateway p50 {res['gateway_p50_ms']:.3f} ms  p99 {res['gateway_p99_ms']:.3f} ms")
    print(f"  gateway overhead: median {over50:.3f} ms (target <= 1), p99 {over99:.3f} ms (target <= 5)")
    for c in (1, 32):
        d, g = res[f"direct_rps_c{c}"], res[f"gateway_rps_c{c}"]
        print(
            f"throughput at concurrency {c:>2}: direct {d:8.0f} req/s  gateway {g:8.0f} req/s  "
            f"ratio {g / d:.2f}" + ("  (target >= 0.7)" if c == 32 else "")
        )
    off, on = res["limits_off_rps_c32"], res["limits_on_rps_c32"]
    print(
        f"limits on/off at concurrency 32, same gateway: medians of {args.rounds} alternated runs "
        f"of {args.limit_seconds:g} s each:"
    )
    print(f"  without limits {off:8.0f} req/s  with limits {on:8.0f} req/s  ratio {on / off:.2f}  (target >= 0.95)")
    rounds = range(args.rounds)
    print(
        "  per round (off/on): "
        + "  ".join(f"{res[f'limits_off_rps_round{i}']:.0f}/{res[f'limits_on_rps_round{i}']:.0f}" for i in rounds)
    )
    print(f"  median of the per-round ratios: {res['limits_ratio_per_round_median']:.2f}")
    status = int(res["limits_check_status"])
    if status == 429:
        print("  check: after `limits set --rpm 1` the limited key got HTTP 429, so its limits were enforced")
    else:
        print(f"  WARNING: after `limits set --rpm 1` the limited key got HTTP {status}, not 429: limits not enforced?")
    print(json.dumps({k: round(v, 4) for k, v in res.items()}))


if __name__ == "__main__":
    main()
