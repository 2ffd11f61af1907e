"""Usage lag: how long after a call's answer the caller's usage (GET /api/usage) and its draft invoice
(GET /api/invoices) show that call, through a real gateway.

For each call: POST one inference to `digits`, then poll the API in a tight loop (about 2 ms apart) until its
count moves by one; the lag is the time from the inference's answer to the answer that shows it. Prints, measured
in one run on this machine, p50, p99 and max of each (target: usage p99 <= 1 s).

It builds the demo catalogue in a temporary MODELMARKET_HOME, starts `modelmarket serve --port 0` and stops it.
Usage: python benchmarks/usage_lag.py [--calls N] [--invoice-calls N]
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

import httpx

MM = [sys.executable, "-m", "modelmarket.cli.main"]
POLL_S = 0.002
LAG_TIMEOUT_S = 30.0
TARGET_USAGE_P99_S = 1.0


def _start_gateway(env: dict[str, str], timeout_s: float = 120) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*MM, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the gateway exited before it was ready")
        match = re.match(r"URL: (http://\S+)", line)
        if match:
            url = match.group(1)
            while time.monotonic() < deadline:  # the runner starts in the background
                if httpx.get(f"{url}/v2/models/digits/ready").status_code == 200:
                    return proc, url
                time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the gateway was not ready in {timeout_s}s")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _usage_events(client: httpx.Client) -> int:
    r = client.get("/api/usage")
    r.raise_for_status()
    return int(r.json()["total_events"])


def _invoiced_events(client: httpx.Client, period: str) -> int:
    r = client.get("/api/invoices", params={"period": period})
    r.raise_for_status()
    return sum(int(line["events"]) for doc in r.json()["invoices"] for line in doc["lines"])


def _lags(client: httpx.Client, body: bytes, calls: int, count: Callable[[], int]) -> tuple[list[float], list[int]]:
    """Seconds from each call's answer to the first read of ``count`` that includes it, and the reads it took."""
    lags, reads = [], []
    before = count()
    for _ in range(calls):
        r = client.post("/v2/models/digits/infer", content=body, headers={"Content-Type": "application/json"})
        answered = time.perf_counter()
        if r.status_code != 200:
            raise RuntimeError(f"inference failed: HTTP {r.status_code} {r.text[:200]}")
        n = 1
        while (seen := count()) < before + 1:
            n += 1
            if time.perf_counter() - answered > LAG_TIMEOUT_S:
                raise RuntimeError(f"the call did not show within {LAG_TIMEOUT_S}s")
            time.sleep(POLL_S)
        lags.append(time.perf_counter() - answered)
        reads.append(n)
        before = seen
    return lags, reads


def _read_ms(count: Callable[[], int], n: int) -> float:
    """Median time of one read when nothing is new: the floor of the lag."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        count()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _summary(
    name: str, measured: tuple[list[float], list[int]], read_ms: float, target_s: float | None = None
) -> dict[str, Any]:
    ms = [x * 1000 for x in measured[0]]
    reads = measured[1]
    p99 = _pct(ms, 0.99)
    target = "" if target_s is None else f"  (target p99 <= {target_s * 1000:.0f} ms)"
    print(
        f"{name:<9} {len(ms):4d} calls: p50 {statistics.median(ms):7.1f} ms  p99 {p99:7.1f} ms  "
        f"max {max(ms):7.1f} ms{target}"
    )
    print(
        f"{'':<9} one read with nothing new: {read_ms:.1f} ms (median); reads until shown: "
        f"p50 {statistics.median(reads):.0f}, max {max(reads)}"
    )
    return {
        "calls": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(p99, 2),
        "read_ms": round(read_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="calls whose usage lag is measured")
    parser.add_argument("--invoice-calls", type=int, default=50, help="calls whose invoice lag is measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm-bench-lag-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMARKET_")}
        env["MODELMARKET_HOME"] = home
        print("building the demo catalogue ...", flush=True)
        subprocess.run([*MM, "demo", "--build-only"], env=env, check=True, stderr=subprocess.DEVNULL)
        key = subprocess.run(
            [*MM, "keys", "create", "demo-consumer"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        body = (Path(home) / "demo" / "examples" / "digit.json").read_bytes()
        gateway, url = _start_gateway(env)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
                _lags(client, body, 10, lambda: _usage_events(client))  # warm-up
                usage = _lags(client, body, args.calls, lambda: _usage_events(client))
                usage_read_ms = _read_ms(lambda: _usage_events(client), 50)
                period = datetime.now(UTC).strftime("%Y-%m")  # a run across a month's end would need two periods
                invoices = _lags(client, body, args.invoice_calls, lambda: _invoiced_events(client, period))
                invoice_read_ms = _read_ms(lambda: _invoiced_events(client, period), 20)
        finally:
            _stop(gateway)
    print("lag from a call's answer to the API showing it (poll every ~2 ms):")
    res = {
        "usage": _summary("usage", usage, usage_read_ms, TARGET_USAGE_P99_S),
        "invoices": _summary("invoices", invoices, invoice_read_ms),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
