"""Scale-out through Envoy on `digits`: throughput with 1 and with 2 gateway replicas behind Envoy, and the latency
Envoy adds (the same replica called directly and through Envoy).

Starts `modelmarket cluster up --replicas 2` in a temporary home (PostgreSQL, NATS, SeaweedFS, metering, two
gateways, Envoy), publishes `digits` through the gate, and runs a second Envoy (same generated bootstrap, one
replica listed) for the 1-replica figures; everything is stopped at the end (`cluster down`).

Prints, in one run on this machine:
- sequential latency p50/p99: replica 1 directly, and through the 1-replica Envoy; Envoy's added latency;
- requests/s at concurrency C through the 1-replica Envoy and through the 2-replica Envoy, with the ratio.
On one small machine the replicas, their runners, Envoy, the engines and this client share the cores: the ratio
shows what a second replica gives here, not what it gives on a host of its own.
Usage: python benchmarks/scaleout_envoy.py [--requests N] [--seconds S] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from modelmarket.cluster import manager
from modelmarket.cluster import state as st
from modelmarket.cluster.engine import free_port
from modelmarket.cluster.envoy import EnvoyPorts, envoy_proxy, write_bootstrap
from modelmarket.runtime.pool import RunnerPool

MM = [sys.executable, "-m", "modelmarket.cli.main"]
PATH = "/v2/models/digits/infer"
BODY = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [3.0] * 64}]}).encode()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(pool: RunnerPool, headers: list[tuple[bytes, bytes]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await pool.request("POST", PATH, BODY, headers)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status} {r.body[:200]!r}")
    return out


async def _throughput(pool: RunnerPool, headers: list[tuple[bytes, bytes]], concurrency: int, seconds: float) -> float:
    stop_at = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            r = await pool.request("POST", PATH, BODY, headers)
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status} {r.body[:200]!r}")
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


async def _measure(ports: dict[str, int], key: str, n: int, seconds: float, concurrency: int) -> dict[str, float]:
    headers = [(b"Authorization", f"Bearer {key}".encode()), (b"Content-Type", b"application/json")]
    pools = {name: RunnerPool.over_tcp("127.0.0.1", port, 64, 30) for name, port in ports.items()}
    for pool in pools.values():
        await _sequential(pool, headers, 100)  # warm-up: connections, runner, caches
    direct: list[float] = []
    envoy: list[float] = []
    for _ in range(10):  # interleaved blocks: drift hits both sides alike
        direct += await _sequential(pools["replica"], headers, n // 10)
        envoy += await _sequential(pools["envoy1"], headers, n // 10)
    res = {
        "direct_p50_ms": statistics.median(direct),
        "direct_p99_ms": _pct(direct, 0.99),
        "envoy_p50_ms": statistics.median(envoy),
        "envoy_p99_ms": _pct(envoy, 0.99),
    }
    for _ in range(2):  # alternated, the best of two each: a noisy neighbour hits both
        for name in ("envoy1", "envoy2"):
            rps = await _throughput(pools[name], headers, concurrency, seconds)
            res[f"{name}_rps"] = max(res.get(f"{name}_rps", 0.0), rps)
    for pool in pools.values():
        await pool.close()
    return res


def _prepare(state: st.ClusterState) -> str:
    """`digits` published through the gate, a consumer key, and `digits` answering on every replica."""
    from modelmarket.bootstrap import bootstrap
    from modelmarket.cluster.chaos import ensure_digits, warm_up

    os.environ.update(manager.cluster_settings(state))
    p = bootstrap()
    try:
        ensure_digits(p, Path(state.home), lambda msg: print(f"  {msg}", flush=True))
        p.accounts.create("bench", "consumer", actor="bench")
        key = p.accounts.issue_key("bench", actor="bench").secret
    finally:
        p.close()
    for name in state.gateway_names():
        warm_up(state.ports[name], key)
    return key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per side")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent requests in a throughput run")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mm-bench-cluster-", dir="/tmp"))
    base.chmod(0o711)  # as root, PostgreSQL runs as the postgres user and must reach its folder
    home = base / "home"
    env = {**os.environ, "MODELMARKET_HOME": str(home), "MODELMARKET_GATE_REVIEW": "auto"}
    single = None
    try:
        print("starting the cluster (2 replicas) ...", flush=True)
        subprocess.run([*MM, "cluster", "up", "--replicas", "2"], env=env, check=True, stderr=subprocess.DEVNULL)
        state = st.load_state(home)
        assert state is not None
        os.environ["MODELMARKET_HOME"] = str(home)
        key = _prepare(state)
        envoy1 = EnvoyPorts(free_port(), free_port())
        config = write_bootstrap(base / "envoy-1-replica.json", envoy1, [state.ports["gateway-1"]])
        single = envoy_proxy(config, base / "envoy-1-replica.log", envoy1.admin).start()
        ports = {"replica": state.ports["gateway-1"], "envoy1": envoy1.listen, "envoy2": state.ports["envoy"]}
        res = uvloop.run(_measure(ports, key, args.requests, args.seconds, args.concurrency))
    finally:
        if single is not None:
            single.stop()
        subprocess.run([*MM, "cluster", "down"], env=env, check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)
    _report(res, args)


def _report(res: dict[str, float], args: argparse.Namespace) -> None:
    print(f"digits, sequential ({args.requests} requests each side, one keep-alive connection):")
    print(f"  replica directly     p50 {res['direct_p50_ms']:.3f} ms  p99 {res['direct_p99_ms']:.3f} ms")
    print(f"  through Envoy        p50 {res['envoy_p50_ms']:.3f} ms  p99 {res['envoy_p99_ms']:.3f} ms")
    added50, added99 = res["envoy_p50_ms"] - res["direct_p50_ms"], res["envoy_p99_ms"] - res["direct_p99_ms"]
    print(f"  Envoy adds: p50 {added50:.3f} ms, p99 {added99:.3f} ms")
    one, two = res["envoy1_rps"], res["envoy2_rps"]
    print(f"throughput at concurrency {args.concurrency} through Envoy ({args.seconds:g} s runs, best of 2):")
    print(
        f"  1 replica {one:8.0f} req/s   2 replicas {two:8.0f} req/s   ratio {two / one:.2f}  ({os.cpu_count()} cores)"
    )
    print(json.dumps({k: round(v, 4) for k, v in res.items()}))


if __name__ == "__main__":
    main()
