"""The runner hot path on `digits` (ONNX), measured in one run on this machine with one load generator:

1. A bare reference: a one-process ASGI endpoint (uvicorn, httptools, uvloop; no key, no metering, no second hop)
   started here, running the same `model.onnx` through onnxruntime (same session options as the platform's onnx
   runtime: one intra-op and one inter-op thread) on the same request body (`examples/digit.json`).
2. The full path (key, routing, validation, metering) at concurrency 1 for the runner profile `process` (the
   default) and `inprocess` (a second gateway with MODELMARKET_INPROCESS_RUNTIMES=onnx), each as a throughput
   ratio to the bare reference (target >= 0.9x for the best profile).
3. Concurrency 32: bare vs the gateway on `digits-batched` (a copy of digits with `batching: {max_batch_size: 32,
   max_delay_ms: 2}`) vs the same gateway on digits without batching (targets: >= 2x bare, >= 3x unbatched), for
   both profiles.
4. Per-call overhead of `bwrap` and `gvisor` against `process` (copies `digits-bwrap`, `digits-gvisor` declaring
   `sandbox: {profile: ...}`): difference of median latencies at concurrency 1, sequential blocks interleaved.
5. Cold start per runtime and profile: gateways start with --no-preload, so each model's first call starts its
   runner (the `x-modelmarket-cold-start` header says how long the call waited for it); `modelmarket runners
   --json` gives each runner's cold_start_s and rss_bytes. The RSS of each runner's whole process tree (VmRSS of
   its pid and descendants, read from /proc) is shown beside it: for bwrap and gvisor the pid the gateway knows is
   the sandbox's launcher. An in-process model has no RSS of its own: the gateway's RSS before and after the load.
6. RSS flatness: the digits runner's RSS (`modelmarket runners --json`) before and after --calls calls at
   concurrency 32 through the gateway, with its pid and restart count to show it is the same process (target of
   this benchmark: after/before <= 1.10). The default, 50,000 calls, keeps the whole run near 5 minutes on two
   busy cores; `--calls 100000` makes the full count.

Throughput comparisons alternate their sides over --rounds rounds (ABBA order) of --seconds each; medians are
compared. Targets are printed next to the measured values with PASS or MISS; nothing is asserted.

It builds the demo catalogue in a temporary MODELMARKET_HOME, publishes the copies above, starts the bare endpoint
and two gateways (one after the other) on free loopback ports, and stops each process it started by its pid.
A runner cgroup a stopped gateway left behind is named in a note and removed.
Usage: python benchmarks/runner_hot_path.py [--calls N] [--seconds S] [--rounds R] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvicorn
import uvloop
import yaml

from modelmarket.runtime.pool import RunnerPool

sys.path.insert(0, str(Path(__file__).parent))
from gateway_overhead import MM, _pct, _sequential, _start, _stop, _throughput

INFER = "/v2/models/{}/infer"
COPIES: dict[str, dict[str, Any]] = {
    "digits-batched": {"batching": {"max_batch_size": 32, "max_delay_ms": 2}},
    "digits-bwrap": {"sandbox": {"profile": "bwrap"}},
    "digits-gvisor": {"sandbox": {"profile": "gvisor"}},
}
SANDBOXED = ("digits-bwrap", "digits-gvisor")
TARGET_C1 = 0.9
TARGET_C32_BARE = 2.0
TARGET_C32_UNBATCHED = 3.0
TARGET_RSS_FLAT = 1.10
COLD_TIMEOUT_S = 180.0
FLAT_CONCURRENCY = 32
MB = 1024 * 1024

# -- the bare reference: its own process (``--bare MODEL_FILE``) --------------------------------------------


def serve_bare(model_file: str, parent_pid: int) -> None:
    """A one-process OIP-shaped endpoint running ``model_file`` with onnxruntime; prints its port."""
    import onnxruntime as ort

    from modelmarket.core import lifetime

    lifetime.exit_with_parent(parent_pid)  # never outlives the benchmark, even one killed with SIGKILL
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model_file, sess_options=options, providers=["CPUExecutionProvider"])
    outputs = ["label", "probabilities"]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        doc = orjson.loads(body)
        tensor = doc["inputs"][0]
        pixels = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        label, probabilities = session.run(outputs, {tensor["name"]: pixels})
        answer = {
            "model_name": "digits",
            "model_version": "1.0.0",
            "id": doc.get("id"),
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": list(label.shape), "data": label},
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": list(probabilities.shape),
                    "data": probabilities.reshape(-1),
                },
            ],
        }
        payload = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"bare listening on port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app,
        log_level="error",
        loop="uvloop",
        http="httptools",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=300,
    )
    uvicorn.Server(config).run(sockets=[sock])


# -- helpers --------------------------------------------------------------------------------------------------


def _runners(env: dict[str, str], since: float = 0.0) -> dict[str, dict[str, Any]]:
    """``modelmarket runners --json`` by model name, from a status written at or after ``since`` (time.time)."""
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run([*MM, "runners", "--json"], env=env, capture_output=True, text=True)
        if out.returncode == 0:
            doc = json.loads(out.stdout)
            if doc.get("written_at", 0) >= since or time.monotonic() > deadline:
                return {r["model"]: r for r in doc.get("runners", [])}
        elif time.monotonic() > deadline:
            raise RuntimeError(f"modelmarket runners --json failed: {out.stderr.strip()}")
        time.sleep(0.2)


def _vm_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _tree_rss(pid: int | None) -> int | None:
    """Sum of VmRSS over ``pid`` and its descendants (shared pages counted in each)."""
    if pid is None:
        return None
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _vm_rss(current) or 0
        todo.extend(children.get(current, []))
    return total or None


def _leftover_cgroups(gateway_pid: int) -> list[Path]:
    """Cgroup folders a stopped gateway's supervisor created for its runners (named ``<its pid>-<version>-<n>``)
    and did not remove."""
    from modelmarket.runtime.sandbox import CGROUP_ROOT, V1_CONTROLLERS, _own_cgroup_v1, _own_cgroup_v2

    parents = [CGROUP_ROOT / c / _own_cgroup_v1(c).lstrip("/") / "modelmarket" for c in V1_CONTROLLERS]
    parents.append(CGROUP_ROOT / _own_cgroup_v2().lstrip("/") / "modelmarket")
    return sorted(d for p in parents if p.is_dir() for d in p.glob(f"{gateway_pid}-*") if d.is_dir())


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:.0f} MB"


def _verdict(value: float, target: float, at_most: bool = False) -> str:
    ok = value <= target if at_most else value >= target
    return "PASS" if ok else "MISS"


def _label(body: bytes) -> Any:
    doc = orjson.loads(body)
    return next(o["data"][0] for o in doc["outputs"] if o["name"] == "label")


def _publish_copies(home: Path, env: dict[str, str]) -> None:
    """Each copy: the demo's digits package folder with another name and one more manifest section."""
    source = home / "demo" / "digits"
    for name, extra in COPIES.items():
        target = home / "bench-packages" / name
        shutil.copytree(source, target)
        manifest = yaml.safe_load((target / "modelmarket.yaml").read_text())
        manifest["name"] = name
        manifest.update(extra)
        (target / "modelmarket.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        subprocess.run([*MM, "publish", str(target)], env=env, check=True, capture_output=True)


def _other_runtimes(home: Path) -> list[tuple[str, bytes, list[tuple[bytes, bytes]]]]:
    """A small first call (OIP infer body and extra headers) for each of the demo's other runtimes."""
    examples = home / "demo" / "examples"
    wav = (examples / "hello.wav").read_bytes()
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "audio", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4 + len(wav)}}
            ]
        }
    )
    chat = json.loads((examples / "chat.json").read_text())
    chat["parameters"] = {"max_tokens": 1, "temperature": 0}
    text = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello world"]}]}
    binary = [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(head)).encode()),
    ]
    return [
        ("sentiment", (examples / "sentiment.json").read_bytes(), []),
        ("speech-to-text", head + struct.pack("<I", len(wav)) + wav, binary),
        ("smollm2-135m-instruct", orjson.dumps(chat), []),
        ("all-minilm-l6-v2", orjson.dumps(text), []),
    ]


async def _first_call(
    port: int, model: str, body: bytes, headers: list[tuple[bytes, bytes]], key: str
) -> dict[str, Any]:
    """One call on a fresh connection: its latency, status and the cold-start header (None when absent); a call
    that gets no answer at all (HTTP status 0) is reported, not raised, so one broken profile spoils nothing else."""
    pool = RunnerPool.over_tcp("127.0.0.1", port, 1, COLD_TIMEOUT_S)
    all_headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    names = {n for n, _ in headers}
    all_headers = [h for h in all_headers if h[0] not in names] + headers
    t0 = time.perf_counter()
    try:
        answer = await pool.request("POST", INFER.format(model), body, all_headers)
        elapsed = time.perf_counter() - t0
    except Exception as exc:
        return {"first_call_s": time.perf_counter() - t0, "status": 0, "header_s": None, "body": repr(exc).encode()}
    finally:
        await pool.close()
    cold = answer.headers.get(b"x-modelmarket-cold-start")
    return {
        "first_call_s": elapsed,
        "status": answer.status,
        "header_s": float(cold) if cold is not None else None,
        "body": answer.body,
    }


async def _rounds(
    sides: list[tuple[str, RunnerPool, str, list[tuple[bytes, bytes]]]],
    body: bytes,
    concurrency: int,
    seconds: float,
    rounds: int,
) -> dict[str, list[float]]:
    """Requests/s of each side, ``rounds`` times, the order reversed every other round (ABBA)."""
    out: dict[str, list[float]] = {name: [] for name, *_ in sides}
    for r in range(rounds):
        for name, pool, path, headers in sides if r % 2 == 0 else list(reversed(sides)):
            out[name].append(await _throughput(pool, path, body, headers, concurrency, seconds))
    return out


async def _calls(
    pool: RunnerPool, path: str, body: bytes, headers: list[tuple[bytes, bytes]], concurrency: int, n: int
) -> float:
    """Make exactly ``n`` calls with ``concurrency`` workers; the seconds it took."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            r = await pool.request("POST", path, body, headers)
            if r.status != 200:
                raise RuntimeError(f"{path}: HTTP {r.status} {r.body[:200]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


# -- the two gateways ---------------------------------------------------------------------------------------


def _cold_row(model: str, first: dict[str, Any], status: dict[str, dict[str, Any]]) -> dict[str, Any]:
    runner = status.get(model, {})
    process = (runner.get("processes") or [{}])[0]
    return {
        "model": model,
        "runtime": runner.get("runtime"),
        "profile": runner.get("profile"),
        "http": first["status"],
        "first_call_s": first["first_call_s"],
        "header_s": first["header_s"],
        "cold_start_s": runner.get("cold_start_s"),
        "rss_bytes": process.get("rss_bytes"),
        "tree_rss_bytes": _tree_rss(process.get("pid")) if process.get("state") != "in the gateway" else None,
        "error": None if first["status"] == 200 else first["body"][:300].decode("utf-8", "replace"),
    }


async def _process_gateway(
    gw_port: int,
    gw_pid: int,
    bare_port: int,
    key: str,
    body: bytes,
    env: dict[str, str],
    home: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    res: dict[str, Any] = {"cold": []}
    first = await _first_call(gw_port, "digits", body, [], key)
    res["first_digits"] = first
    if first["status"] != 200:
        raise RuntimeError(f"digits: HTTP {first['status']} {first['body'][:300]!r}")
    res["gateway_label"] = _label(first["body"])
    cold_firsts = {"digits": first}
    for model in COPIES:
        print(f"  first call to {model} ...", flush=True)
        cold_firsts[model] = await _first_call(gw_port, model, body, [], key)
    status = _runners(env, time.time())
    res["cold"] += [_cold_row(m, f, status) for m, f in cold_firsts.items()]
    if cold_firsts["digits-batched"]["status"] != 200:
        raise RuntimeError(f"digits-batched: {cold_firsts['digits-batched']['body'][:300]!r}")
    batched_pid = status["digits-batched"]["processes"][0]["pid"]
    argv = Path(f"/proc/{batched_pid}/cmdline").read_bytes().split(b"\0")
    res["batched_argv_ok"] = b"--batch-size" in argv and argv[argv.index(b"--batch-size") + 1] == b"32"
    sandboxes = [m for m in SANDBOXED if cold_firsts[m]["status"] == 200]

    gw = RunnerPool.over_tcp("127.0.0.1", gw_port, 64, 30)
    bare = RunnerPool.over_tcp("127.0.0.1", bare_port, 64, 30)
    gw_h = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    bare_h = [(b"content-type", b"application/json")]
    for model in ("digits", "digits-batched", *sandboxes):
        await _sequential(gw, INFER.format(model), body, gw_h, 200)  # warm-up
    bare_label = _label((await bare.request("POST", INFER.format("digits"), body, bare_h)).body)
    res["bare_label"] = bare_label
    await _sequential(bare, INFER.format("digits"), body, bare_h, 200)

    print("  concurrency 1: bare vs process ...", flush=True)
    bare_side = ("bare", bare, INFER.format("digits"), bare_h)
    res["c1"] = await _rounds(
        [bare_side, ("process", gw, INFER.format("digits"), gw_h)], body, 1, args.seconds, args.rounds
    )
    print("  concurrency 32: bare vs batched vs unbatched ...", flush=True)
    res["c32"] = await _rounds(
        [
            bare_side,
            ("batched", gw, INFER.format("digits-batched"), gw_h),
            ("unbatched", gw, INFER.format("digits"), gw_h),
        ],
        body,
        32,
        args.seconds,
        args.rounds,
    )

    print(f"  sandbox overhead: {args.requests} sequential calls per profile ...", flush=True)
    latencies: dict[str, list[float]] = {m: [] for m in ("digits", *sandboxes)}
    for _ in range(10):  # interleaved blocks, so drift hits every profile alike
        for model in latencies:
            latencies[model] += await _sequential(gw, INFER.format(model), body, gw_h, max(1, args.requests // 10))
    res["latency"] = {m: (statistics.median(v), _pct(v, 0.99)) for m, v in latencies.items()}

    print(f"  RSS flatness: {args.calls} calls at concurrency {FLAT_CONCURRENCY} ...", flush=True)
    before = _runners(env, time.time())["digits"]["processes"][0]
    gw_before = _vm_rss(gw_pid)
    tree_before = _tree_rss(before["pid"])
    took = await _calls(gw, INFER.format("digits"), body, gw_h, FLAT_CONCURRENCY, args.calls)
    after = _runners(env, time.time())["digits"]["processes"][0]
    res["flat"] = {
        "calls": args.calls,
        "seconds": took,
        "before": before,
        "after": after,
        "tree_before": tree_before,
        "tree_after": _tree_rss(after["pid"]),
        "gateway_before": gw_before,
        "gateway_after": _vm_rss(gw_pid),
    }
    await gw.close()
    await bare.close()

    print("  first calls to the demo's other runtimes ...", flush=True)
    others = {}
    for model, other_body, headers in _other_runtimes(home):
        others[model] = await _first_call(gw_port, model, other_body, headers, key)
    status = _runners(env, time.time())
    res["cold"] += [_cold_row(m, f, status) for m, f in others.items()]
    res["version_ids"] = {r["version_id"]: m for m, r in status.items()}
    return res


async def _inprocess_gateway(
    gw_port: int, gw_pid: int, bare_port: int, key: str, body: bytes, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    rss_before = _vm_rss(gw_pid)
    first = await _first_call(gw_port, "digits", body, [], key)
    res["first_digits"] = first
    if first["status"] != 200:
        raise RuntimeError(f"digits (inprocess): HTTP {first['status']} {first['body'][:300]!r}")
    res["gateway_rss_before"], res["gateway_rss_after"] = rss_before, _vm_rss(gw_pid)
    res["gateway_label"] = _label(first["body"])
    batched_first = await _first_call(gw_port, "digits-batched", body, [], key)
    status = _runners(env, time.time())
    res["cold"] = [_cold_row("digits", first, status), _cold_row("digits-batched", batched_first, status)]
    res["version_ids"] = {r["version_id"]: m for m, r in status.items()}

    gw = RunnerPool.over_tcp("127.0.0.1", gw_port, 64, 30)
    bare = RunnerPool.over_tcp("127.0.0.1", bare_port, 64, 30)
    gw_h = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    bare_h = [(b"content-type", b"application/json")]
    for model in ("digits", "digits-batched"):
        await _sequential(gw, INFER.format(model), body, gw_h, 200)
    await _sequential(bare, INFER.format("digits"), body, bare_h, 200)
    bare_side = ("bare", bare, INFER.format("digits"), bare_h)
    print("  concurrency 1: bare vs inprocess ...", flush=True)
    res["c1"] = await _rounds(
        [bare_side, ("inprocess", gw, INFER.format("digits"), gw_h)], body, 1, args.seconds, args.rounds
    )
    print("  concurrency 32: bare vs batched vs unbatched ...", flush=True)
    res["c32"] = await _rounds(
        [
            bare_side,
            ("batched", gw, INFER.format("digits-batched"), gw_h),
            ("unbatched", gw, INFER.format("digits"), gw_h),
        ],
        body,
        32,
        args.seconds,
        args.rounds,
    )
    await gw.close()
    await bare.close()
    return res


def _run_gateway(env: dict[str, str], started: list[subprocess.Popen[str]], phase: Any) -> tuple[dict[str, Any], float]:
    """Start a gateway (--no-preload), run ``phase(port, pid)`` against it, stop it; the phase's result and the
    seconds from the gateway's start until it printed its URL."""
    t0 = time.perf_counter()
    gateway, port = _start([*MM, "serve", "--port", "0", "--no-preload"], env, r"URL: http://127\.0\.0\.1:(\d+)")
    up_s = time.perf_counter() - t0
    started.append(gateway)
    try:
        res: dict[str, Any] = uvloop.run(phase(int(port), gateway.pid))
    finally:
        _stop(gateway)
        started.remove(gateway)
    # A cgroup the supervisor left behind is reported (by version) and removed when empty.
    res["leftover_cgroups"] = []
    for folder in _leftover_cgroups(gateway.pid):
        version = folder.name.split("-", 1)[1].rsplit("-", 1)[0]
        res["leftover_cgroups"].append(res.get("version_ids", {}).get(version, version))
        with contextlib.suppress(OSError):
            folder.rmdir()
    return res, up_s


# -- the report ---------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _report(args: argparse.Namespace, a: dict[str, Any], b: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    say = print
    say()
    say(f"runner hot path on digits (ONNX); throughput: medians of {args.rounds} alternated runs of {args.seconds:g} s")
    labels = {a["bare_label"], a["gateway_label"], b["gateway_label"]}
    same_answer = "yes" if len(labels) == 1 else "NO"
    say(f"  same answer from the bare endpoint and both gateways: {same_answer} (label {sorted(labels)})")
    batching = "yes" if a["batched_argv_ok"] else "NO"
    say(f"  the digits-batched runner (process) was started with --batch-size 32: {batching}")

    say("concurrency 1, full path (key, routing, validation, metering) vs the bare endpoint:")
    ratios = {}
    for name, phase in (("process", a), ("inprocess", b)):
        bare, gw = _median(phase["c1"]["bare"]), _median(phase["c1"][name])
        ratios[name] = gw / bare
        summary |= {f"c1_{name}_bare_rps": bare, f"c1_{name}_rps": gw, f"c1_{name}_ratio": gw / bare}
        rounds = "  ".join(f"{x:.0f}/{y:.0f}" for x, y in zip(phase["c1"]["bare"], phase["c1"][name], strict=True))
        say(f"  {name:<9} {gw:7.0f} req/s   bare {bare:7.0f} req/s   ratio {gw / bare:.2f}x")
        say(f"            per round bare/gateway: {rounds}")
    best = max(ratios, key=lambda k: ratios[k])
    verdict = _verdict(ratios[best], TARGET_C1)
    say(f"  best profile: {best} at {ratios[best]:.2f}x bare   (target >= {TARGET_C1}x)  {verdict}")

    say("concurrency 32: bare vs the gateway with batching (max_batch_size 32, max_delay_ms 2) vs without:")
    for name, phase in (("process", a), ("inprocess", b)):
        bare, bat, unb = (_median(phase["c32"][k]) for k in ("bare", "batched", "unbatched"))
        summary |= {f"c32_{name}_bare_rps": bare, f"c32_{name}_batched_rps": bat, f"c32_{name}_unbatched_rps": unb}
        say(f"  {name:<9} bare {bare:7.0f} req/s   batched {bat:7.0f} req/s   unbatched {unb:7.0f} req/s")
        vs_bare = (
            f"batched/bare {bat / bare:.2f}x (target >= {TARGET_C32_BARE:g}x) {_verdict(bat / bare, TARGET_C32_BARE)}"
        )
        vs_unb = f"batched/unbatched {bat / unb:.2f}x (target >= {TARGET_C32_UNBATCHED:g}x)"
        say(f"            {vs_bare}   {vs_unb} {_verdict(bat / unb, TARGET_C32_UNBATCHED)}")

    say(f"sandbox overhead per call at concurrency 1 ({args.requests} sequential calls per profile, interleaved):")
    base50, base99 = a["latency"]["digits"]
    say(f"  process   median {base50:.3f} ms  p99 {base99:.3f} ms")
    for model in SANDBOXED:
        profile = model.removeprefix("digits-")
        if model not in a["latency"]:
            row = next(r for r in a["cold"] if r["model"] == model)
            say(f"  {profile:<9} not measured: its first call answered HTTP {row['http']}: {row['error']}")
            continue
        p50, p99 = a["latency"][model]
        summary[f"{profile}_overhead_ms"] = p50 - base50
        say(
            f"  {profile:<9} median {p50:.3f} ms  p99 {p99:.3f} ms   overhead vs process: median {p50 - base50:+.3f} ms"
        )

    say("cold start (gateways started with --no-preload: a model's first call starts its runner):")
    for what, phase in (("process runners", a), ("inprocess onnx", b)):
        first = phase["up_s"] + phase["first_digits"]["first_call_s"]
        up = phase["up_s"]
        say(f"  gateway, {what + ':':<17} URL printed {up:.2f} s after start, first digits answer at {first:.2f} s")
    head = ("model", "runtime", "profile", "HTTP", "1st call", "header", "cold_start_s", "RSS", "tree RSS")
    say("  " + _cold_line(head))
    for row in [*a["cold"], *b["cold"]]:
        cells = (
            row["model"],
            row["runtime"] or "-",
            row["profile"] or "-",
            str(row["http"]),
            f"{row['first_call_s']:.2f} s",
            "-" if row["header_s"] is None else f"{row['header_s']:.2f} s",
            "-" if row["cold_start_s"] is None else f"{row['cold_start_s']:.2f} s",
            _mb(row["rss_bytes"]),
            _mb(row["tree_rss_bytes"]),
        )
        say("  " + _cold_line(cells))
        if row["error"]:
            say(f"    error: {row['error']}")
        summary[f"cold_{row['model']}_{row['profile']}_first_call_s"] = row["first_call_s"]
    grew = (b["gateway_rss_after"] or 0) - (b["gateway_rss_before"] or 0)
    say(
        f"  inprocess digits: the gateway's VmRSS went {_mb(b['gateway_rss_before'])} -> {_mb(b['gateway_rss_after'])} "
        f"({grew / MB:+.0f} MB) with its first call"
    )
    say("  (1st call: client-side latency of the model's first call; header: x-modelmarket-cold-start, how long it")
    say("   waited for a runner; RSS: runners --json rss_bytes, the runner's cgroup memory use where it has a cgroup,")
    say("   else its VmRSS; tree RSS: VmRSS of that pid and its descendants, shared library pages included)")

    f = a["flat"]
    rb, ra = f["before"]["rss_bytes"], f["after"]["rss_bytes"]
    rate = f["calls"] / f["seconds"]
    say(
        f"RSS flatness of the digits runner (process): {f['calls']} calls at concurrency {FLAT_CONCURRENCY} "
        f"in {f['seconds']:.1f} s ({rate:.0f} req/s)"
    )
    same = f["before"]["pid"] == f["after"]["pid"] and f["after"]["restarts"] == 0
    warning = "" if same else "   WARNING: not the same process"
    say(f"  runner pid {f['before']['pid']} -> {f['after']['pid']}, restarts {f['after']['restarts']}{warning}")
    if rb and ra:
        summary["rss_ratio"] = ra / rb
        verdict = _verdict(ra / rb, TARGET_RSS_FLAT, at_most=True)
        say(
            f"  runners --json rss_bytes {_mb(rb)} -> {_mb(ra)} ({(ra - rb) / MB:+.1f} MB), ratio {ra / rb:.3f}  "
            f"(target <= {TARGET_RSS_FLAT:.2f})  {verdict}"
        )
    else:
        say(f"  runners --json rss_bytes {_mb(rb)} -> {_mb(ra)}: not reported")
    if f["tree_before"] and f["tree_after"]:
        say(
            f"  runner tree VmRSS {_mb(f['tree_before'])} -> {_mb(f['tree_after'])} "
            f"(ratio {f['tree_after'] / f['tree_before']:.3f}); "
            f"gateway VmRSS {_mb(f['gateway_before'])} -> {_mb(f['gateway_after'])}"
        )
    summary["rss_calls"] = f["calls"]
    for what, phase in (("process runners", a), ("inprocess onnx", b)):
        if phase["leftover_cgroups"]:
            left = ", ".join(sorted(set(phase["leftover_cgroups"])))
            say(f"note: the gateway ({what}) left runner cgroups behind after it stopped, for: {left} (removed here)")
    say(f"total time {elapsed_s:.0f} s")
    return summary


def _cold_line(cells: tuple[str, ...]) -> str:
    widths = (-22, -21, -10, 5, 10, 9, 13, 9, 10)  # negative: left-aligned
    return "".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--calls",
        type=int,
        default=50_000,
        help="calls between the two RSS readings (100000 adds about a minute or two on 2 busy cores)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="alternated throughput runs per side")
    parser.add_argument("--requests", type=int, default=2000, help="sequential calls per sandbox profile")
    parser.add_argument("--bare", metavar="MODEL_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        serve_bare(args.bare, args.parent_pid)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what we started on SIGTERM too
    started: list[subprocess.Popen[str]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mm-bench-", ignore_cleanup_errors=True) as tmp:
        try:
            home = Path(tmp)
            base = {k: v for k, v in os.environ.items() if k != "MODELMARKET_INPROCESS_RUNTIMES"}
            env = {**base, "MODELMARKET_HOME": tmp}
            print("building the demo catalogue and publishing the digits copies ...", flush=True)
            subprocess.run([*MM, "demo", "--build-only"], env=env, check=True, stderr=subprocess.DEVNULL)
            _publish_copies(home, env)
            key = subprocess.run(
                [*MM, "keys", "create", "demo-consumer"], env=env, check=True, capture_output=True, text=True
            ).stdout.strip()
            body = (home / "demo" / "examples" / "digit.json").read_bytes()
            model_file = str(home / "demo" / "digits" / "model.onnx")
            bare, bare_port = _start(
                [sys.executable, __file__, "--bare", model_file, "--parent-pid", str(os.getpid())],
                dict(os.environ),
                r"port (\d+)",
            )
            started.append(bare)

            print("gateway with process runners (the default) ...", flush=True)
            a, up_s = _run_gateway(
                env,
                started,
                lambda port, pid: _process_gateway(port, pid, int(bare_port), key, body, env, home, args),
            )
            a["up_s"] = up_s
            print("gateway with MODELMARKET_INPROCESS_RUNTIMES=onnx ...", flush=True)
            env_b = {**env, "MODELMARKET_INPROCESS_RUNTIMES": "onnx"}
            b, up_s = _run_gateway(
                env_b, started, lambda port, pid: _inprocess_gateway(port, pid, int(bare_port), key, body, env_b, args)
            )
            b["up_s"] = up_s
        finally:
            for proc in reversed(started):  # the gateways stop their own runners
                _stop(proc)
    summary = _report(args, a, b, time.perf_counter() - t_start)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))


if __name__ == "__main__":
    main()
