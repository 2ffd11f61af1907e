"""Gateway overhead on `digits`: the same OIP request sent to a runner directly and through the gateway.

Prints, measured in one run on this machine:
- sequential latency (median, p99) direct vs gateway, and the gateway's overhead;
- requests/s at concurrency 1 and 32, direct vs gateway, with the ratio.

It starts its own gateway and runner on free loopback ports in a temporary MODELMARKET_HOME and stops them.
Usage: python benchmarks/gateway_overhead.py [--requests N] [--seconds S]
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
from pathlib import Path

import uvloop

from modelmarket.runtime.pool import RunnerPool

MM = [sys.executable, "-m", "modelmarket.cli.main"]


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


async def _measure(gw_port: int, rn_port: int, key: str, body: bytes, n: int, seconds: float) -> dict[str, float]:
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
    await gw.close()
    await rn.close()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests per side")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as home:
        env = {**os.environ, "MODELMARKET_HOME": home}
        print("building the demo catalogue ...", flush=True)
        subprocess.run([*MM, "demo", "--build-only"], env=env, check=True, stderr=subprocess.DEVNULL)
        key = subprocess.run(
            [*MM, "keys", "create", "demo-consumer"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        body = (Path(home) / "demo" / "examples" / "digit.json").read_bytes()
        gateway, gw_url = _start([*MM, "serve", "--port", "0"], env, r"URL: http://127\.0\.0\.1:(\d+)")
        runner, rn_url = _start([*MM, "runner", "digits", "--port", "0"], env, r"listening on http://[\d.]+:(\d+)")
        try:
            res = uvloop.run(_measure(int(gw_url), int(rn_url), key, body, args.requests, args.seconds))
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
    print(json.dumps({k: round(v, 4) for k, v in res.items()}))


if __name__ == "__main__":
    main()
