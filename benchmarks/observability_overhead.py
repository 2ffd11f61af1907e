"""Observability overhead on `digits`: requests/s at concurrency 32 through a gateway with metrics, tracing and the
request log on, against one with metrics and tracing off.

Two gateways run side by side, each in its own temporary MODELMARKET_HOME with `digits` published and its own
runner; load alternates between them (ABBA rounds, so drift hits both alike) and the medians are compared.

- "on":  MODELMARKET_METRICS_ENABLED=true, MODELMARKET_TRACING=true, MODELMARKET_TRACE_SAMPLE_RATIO (default 1.0:
  every call traced), spans exported over OTLP/HTTP to a local sink (a separate process that reads and drops
  every export; ``--otlp none`` makes spans' trace context only, with no exporter).
- "off": MODELMARKET_METRICS_ENABLED=false, MODELMARKET_TRACING=false.
The JSON request log is always on (it has no switch): both sides write it, so the ratio does not include its
cost, which is printed on its own, measured in-process (per request: line built, encoded, buffered, written).

Prints the two medians, the per-round figures, and the ratio with its target (>= 0.95).
Usage: python benchmarks/observability_overhead.py [--seconds S] [--rounds R] [--otlp sink|none] [--ratio X]
"""

from __future__ import annotations

import argparse
import asyncio
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
PATH = "/v2/models/digits/infer"
CONCURRENCY = 32
SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Sink(BaseHTTPRequestHandler):
    exports = 0
    received = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Sink.exports += 1
        Sink.received += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    print(f"{Sink.exports} {Sink.received}", flush=True)
"""


def _publish(home: Path, package: Path) -> str:
    """`digits` published in ``home`` (without the gate: the package is the platform's own) and a consumer's key."""
    from modelmarket.bootstrap import bootstrap
    from modelmarket.settings import Settings

    platform = bootstrap(Settings(home=home))
    try:
        platform.accounts.create("demo-provider", "provider", actor="bench")
        platform.registry.publish(package, actor="bench")
        platform.accounts.create("bench-consumer", "consumer", actor="bench")
        return platform.accounts.issue_key("bench-consumer", actor="bench").secret
    finally:
        platform.close()


def _start_gateway(env: dict[str, str], timeout_s: float = 120) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [*MM, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the gateway exited before it was ready")
        match = re.search(r"URL: http://127\.0\.0\.1:(\d+)", line)
        if match:
            return proc, int(match.group(1))
    raise RuntimeError(f"the gateway was not ready in {timeout_s}s")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


async def _ready(pool: RunnerPool, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            answer = await pool.request("POST", PATH, body, headers)
            if answer.status == 200:
                return
        except Exception:  # the runner is still starting
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError("digits never answered through the gateway")


async def _throughput(pool: RunnerPool, body: bytes, headers: list[tuple[bytes, bytes]], seconds: float) -> float:
    stop_at = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            answer = await pool.request("POST", PATH, body, headers)
            if answer.status != 200:
                raise RuntimeError(f"HTTP {answer.status}: {answer.body[:200]!r}")
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - started)


PARTS = ("gateway", "runner", "metering")


def _tree_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the gateway ``pid`` and by its runner and metering child."""
    total, pending, tick = dict.fromkeys(PARTS, 0.0), [pid], os.sysconf("SC_CLK_TCK")
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            command = Path(f"/proc/{current}/cmdline").read_bytes()
            part = "runner" if b"runtime.runner" in command else "metering" if b"metering" in command else "gateway"
            total[part] += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
            continue
    return total


async def _rounds(
    ports: dict[str, int], pids: dict[str, int], keys: dict[str, str], body: bytes, rounds: int, seconds: float
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Requests/s of each side per round, and its CPU microseconds per request: in all, and by process."""
    pools = {side: RunnerPool.over_tcp("127.0.0.1", port, 64, 30) for side, port in ports.items()}
    headers = {
        side: [(b"Authorization", f"Bearer {keys[side]}".encode()), (b"Content-Type", b"application/json")]
        for side in ports
    }
    for side, pool in pools.items():
        await _ready(pool, body, headers[side])
        await _throughput(pool, body, headers[side], 1.0)  # warm-up
    results: dict[str, list[float]] = {side: [] for side in ports}
    cpu: dict[str, list[float]] = {f"{side} {part}": [] for side in ports for part in ("all", *PARTS)}
    for r in range(rounds):
        order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
        for side in order:
            before, started = _tree_cpu_s(pids[side]), time.perf_counter()
            rps = await _throughput(pools[side], body, headers[side], seconds)
            after, requests = _tree_cpu_s(pids[side]), rps * (time.perf_counter() - started)
            results[side].append(rps)
            for part in PARTS:
                cpu[f"{side} {part}"].append((after[part] - before[part]) / requests * 1e6)
            cpu[f"{side} all"].append(sum(after[p] - before[p] for p in PARTS) / requests * 1e6)
    for pool in pools.values():
        await pool.close()
    return results, cpu


def _log_line_cost_us(samples: int = 20000) -> float:
    """In-process: the request log's cost per request (line built, encoded, buffered, written), in microseconds."""
    from modelmarket.observability.context import CallInfo
    from modelmarket.observability.logs import RequestLog, RotatingFile

    with tempfile.TemporaryDirectory() as folder:
        log = RequestLog(RotatingFile(Path(folder) / "requests.log", 10 * 1024 * 1024, 1))
        infos = []
        for i in range(samples):
            info = CallInfo("POST", PATH, "oip", time.perf_counter(), status=200, model="digits", version="1.0.0")
            info.trace_id, info.request_id, info.account_id = "a" * 32, f"req_{i}", "acct_1"
            info.iu, info.cost, info.currency, info.ended = "1", "0.0010", "USD", info.started + 0.001
            infos.append(info)

        async def run() -> float:
            started = time.perf_counter()
            for info in infos:
                log.finish(info)
            log.flush()
            return (time.perf_counter() - started) / samples * 1e6

        cost = uvloop.run(run())
        log.close()
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each throughput run")
    parser.add_argument("--rounds", type=int, default=8, help="rounds (each runs both gateways)")
    parser.add_argument("--otlp", choices=("sink", "none"), default="sink", help="where the 'on' gateway exports")
    parser.add_argument("--ratio", type=float, default=1.0, help="MODELMARKET_TRACE_SAMPLE_RATIO of the 'on' side")
    parser.add_argument("--metrics", choices=("on", "off"), default="on", help="metrics of the 'on' side")
    parser.add_argument(
        "--tracing", choices=("on", "off"), default="on", help="tracing of the 'on' side (off with metrics off: A/A)"
    )
    args = parser.parse_args()
    from modelmarket.demo._digits import build_digits

    with tempfile.TemporaryDirectory(prefix="mm-obs-bench-") as tmp:
        root = Path(tmp)
        print("building digits ...", flush=True)
        package = build_digits(root / "packages" / "digits", root / "examples", lambda _: None)
        body = (root / "examples" / "digit.json").read_bytes()
        keys = {side: _publish(root / side, package) for side in ("on", "off")}
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MODELMARKET_", "OTEL_"))}
        sink = None
        on_env = {
            **base,
            "MODELMARKET_HOME": str(root / "on"),
            "MODELMARKET_METRICS_ENABLED": "true" if args.metrics == "on" else "false",
            "MODELMARKET_TRACING": "true" if args.tracing == "on" else "false",
            "MODELMARKET_TRACE_SAMPLE_RATIO": str(args.ratio),
        }
        if args.otlp == "sink" and args.tracing == "on":
            sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
            assert sink.stdout is not None
            on_env["MODELMARKET_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.stdout.readline().strip()}/v1/traces"
        off_env = {
            **base,
            "MODELMARKET_HOME": str(root / "off"),
            "MODELMARKET_METRICS_ENABLED": "false",
            "MODELMARKET_TRACING": "false",
        }
        gateways = {"on": _start_gateway(on_env), "off": _start_gateway(off_env)}
        try:
            ports = {side: port for side, (_, port) in gateways.items()}
            pids = {side: proc.pid for side, (proc, _) in gateways.items()}
            results, cpu = uvloop.run(_rounds(ports, pids, keys, body, args.rounds, args.seconds))
        finally:
            for proc, _ in gateways.values():
                _stop(proc)
            exported = ""
            if sink is not None:
                sink.send_signal(signal.SIGINT)
                out, _ = sink.communicate(timeout=30)
                exports, received = [*out.split(), "0", "0"][:2]
                exported = f"; the sink received {exports} OTLP exports ({int(received) / 1e6:.1f} MB)"
        lines = len((root / "on" / "logs" / "requests.log").read_bytes().splitlines())
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    where = "a local OTLP/HTTP sink (a separate process)" if args.otlp == "sink" else "no exporter"
    print(f"digits at concurrency {CONCURRENCY}, medians of {args.rounds} alternated runs of {args.seconds:g} s:")
    metrics = "metrics, " if args.metrics == "on" else "metrics off, "
    tracing = f"tracing (sample ratio {args.ratio:g}, spans to {where})" if args.tracing == "on" else "tracing off"
    print(f"  {metrics}{tracing} and request log on: {on:8.0f} req/s")
    print(f"  metrics and tracing off (request log on, as always):                {off:8.0f} req/s")
    print(f"  ratio {on / off:.3f}  (target >= 0.95){exported}")
    pairs = list(zip(results["off"], results["on"], strict=True))
    print("  per round (off/on): " + "  ".join(f"{a:.0f}/{b:.0f}" for a, b in pairs))
    print(f"  median of the per-round ratios: {statistics.median(b / a for a, b in pairs):.3f}")
    cpu_on, cpu_off = statistics.median(cpu["on all"]), statistics.median(cpu["off all"])
    print(
        f"  CPU per request (gateway + runner + metering child, medians): on {cpu_on:.0f} us, off {cpu_off:.0f} us;"
        f" off/on {cpu_off / cpu_on:.3f} (what a CPU-bound machine would show; less sensitive to other load)"
    )
    print(
        "  CPU per request by process (on/off): "
        + ", ".join(
            f"{part} {statistics.median(cpu[f'on {part}']):.0f}/{statistics.median(cpu[f'off {part}']):.0f} us"
            for part in PARTS
        )
    )
    print(f"  request log lines written by the 'on' gateway's current file: {lines}")
    print(f"request log, measured in-process: {_log_line_cost_us():.1f} us per request (built, encoded, written)")


if __name__ == "__main__":
    main()
