"""The OpenAI-compatible gateway, measured in one run on this machine:

1. Overhead over calling an upstream directly. The upstream is a minimal OpenAI-compatible server started here
   (it answers `/v1/chat/completions` at once with a fixed reply and its usage), so what is measured is the
   gateway: key lookup, parsing, limits, forwarding over a pooled connection, the usage event committed before
   the answer. Published as `fast-chat` (`runtime: upstream-openai`). Sequential median and p99, direct vs
   through the gateway, and throughput at concurrency 32 with the ratio.
2. Time to first token of `smollm2-135m-instruct` streamed through the gateway against streamed from its runner
   directly (medians), and its decode speed in tokens/s.
3. Embeddings per second of `all-minilm-l6-v2` at batch 1 and batch 32 (from its runner, and through the gateway).

It starts everything on free loopback ports in a temporary MODELMARKET_HOME and stops it.
Usage: python benchmarks/openai_gateway.py [--requests N] [--seconds S] [--llm-runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvicorn
import uvloop

from modelmarket.runtime.pool import RunnerPool

sys.path.insert(0, str(Path(__file__).parent))
from gateway_overhead import MM, _pct, _start, _stop
from gateway_overhead import _sequential as _seq
from gateway_overhead import _throughput as _rps

ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-fixed",
        "object": "chat.completion",
        "created": 0,
        "model": "fixed",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }
)
CHAT = orjson.dumps({"model": "fast-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1})
PACKAGE = """name: fast-chat
version: 1.0.0
task: text-generation
modality: text
runtime: upstream-openai
provider: demo-provider
license: Apache-2.0
artifacts: [{path: README.md}]
parameters: {provider: fast, model: fixed}
inputs: [{name: text, datatype: BYTES, shape: [1]}]
outputs: [{name: text, datatype: BYTES, shape: [1]}]
pricing: {unit: tokens_1k, input_price_per_iu: "0.0002", output_price_per_iu: "0.0006", currency: USD}
card: {summary: "A fixed-answer upstream that stands for any OpenAI-compatible server"}
"""


async def upstream_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


def serve_upstream() -> None:
    """The upstream server's own process (``--upstream``): prints its port, serves until SIGINT."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"upstream listening on port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(upstream_app, log_level="error", loop="uvloop", http="httptools", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


async def overhead(gw_port: int, up_port: int, key: str, n: int, seconds: float) -> dict[str, float]:
    gw = RunnerPool.over_tcp("127.0.0.1", gw_port, 64, 30)
    up = RunnerPool.over_tcp("127.0.0.1", up_port, 64, 30)
    gw_h = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    up_h = [(b"content-type", b"application/json")]
    path = "/v1/chat/completions"
    await _seq(gw, path, CHAT, gw_h, 300)
    await _seq(up, path, CHAT, up_h, 300)
    direct: list[float] = []
    through: list[float] = []
    for _ in range(10):
        direct += await _seq(up, path, CHAT, up_h, n // 10)
        through += await _seq(gw, path, CHAT, gw_h, n // 10)
    res = {
        "direct_p50_ms": statistics.median(direct),
        "direct_p99_ms": _pct(direct, 0.99),
        "gateway_p50_ms": statistics.median(through),
        "gateway_p99_ms": _pct(through, 0.99),
    }
    # Concurrency 32: per-request latency and throughput, direct and through the gateway.
    for side, pool, headers in (("direct", up, up_h), ("gateway", gw, gw_h)):
        lat: list[float] = []

        async def timed(
            pool: RunnerPool = pool, headers: list[tuple[bytes, bytes]] = headers, lat: list[float] = lat
        ) -> None:
            for _ in range(60):
                lat.extend(await _seq(pool, path, CHAT, headers, 1))

        await asyncio.gather(*(timed() for _ in range(32)))
        res[f"{side}_c32_p50_ms"] = statistics.median(lat)
        res[f"{side}_c32_p99_ms"] = _pct(lat, 0.99)
        res[f"{side}_rps_c32"] = await _rps(pool, path, CHAT, headers, 32, seconds)
    await gw.close()
    await up.close()
    return res


async def _stream_once(
    pool: RunnerPool, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[float, float, int]:
    """(time to first content, time of the last content, completion tokens) of one streamed chat call."""
    t0 = time.perf_counter()
    answer = await pool.stream("POST", path, body, headers)
    first = last = 0.0
    tokens = 0
    try:
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}: {(await answer.read())[:300]!r}")
        async for piece in answer.chunks():
            for line in piece.split(b"\n"):
                if not line.startswith(b"data: {"):
                    continue
                doc = orjson.loads(line[6:])
                if doc.get("choices") and doc["choices"][0].get("delta", {}).get("content"):
                    now = time.perf_counter() - t0
                    first = first or now
                    last = now
                if doc.get("usage"):
                    tokens = doc["usage"]["completion_tokens"]
    finally:
        answer.close()
    return first, last, tokens


async def llm(gw_port: int, llm_port: int, key: str, runs: int) -> dict[str, float]:
    gw = RunnerPool.over_tcp("127.0.0.1", gw_port, 4, 300)
    rn = RunnerPool.over_tcp("127.0.0.1", llm_port, 4, 300)
    gw_h = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    rn_h = [(b"content-type", b"application/json")]
    req = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body = orjson.dumps(req)
    runner_body = orjson.dumps({**req, "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    await _stream_once(rn, "/v1/chat/completions", runner_body, rn_h)  # warm-up
    await _stream_once(gw, "/v1/chat/completions", body, gw_h)
    ttft_direct, ttft_gw, speeds = [], [], []
    for _ in range(runs):
        first, last, tokens = await _stream_once(rn, "/v1/chat/completions", runner_body, rn_h)
        ttft_direct.append(first * 1000)
        if tokens > 1 and last > first:
            speeds.append((tokens - 1) / (last - first))
        first, _, _ = await _stream_once(gw, "/v1/chat/completions", body, gw_h)
        ttft_gw.append(first * 1000)
    await gw.close()
    await rn.close()
    return {
        "ttft_direct_ms": statistics.median(ttft_direct),
        "ttft_gateway_ms": statistics.median(ttft_gw),
        "decode_tokens_per_s": statistics.median(speeds) if speeds else 0.0,
    }


async def embeddings(gw_port: int, emb_port: int, key: str, seconds: float) -> dict[str, float]:
    gw = RunnerPool.over_tcp("127.0.0.1", gw_port, 4, 300)
    rn = RunnerPool.over_tcp("127.0.0.1", emb_port, 4, 300)
    gw_h = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    rn_h = [(b"content-type", b"application/json")]
    sentence = "The quick brown fox jumps over the lazy dog near the river bank."
    res = {}
    for batch in (1, 32):
        body = orjson.dumps({"model": "all-minilm-l6-v2", "input": [sentence] * batch})
        for side, pool, headers in (("runner", rn, rn_h), ("gateway", gw, gw_h)):
            await _seq(pool, "/v1/embeddings", body, headers, 3)
            rps = await _rps(pool, "/v1/embeddings", body, headers, 1, seconds)
            res[f"embeddings_per_s_batch{batch}_{side}"] = rps * batch
    await gw.close()
    await rn.close()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests per side")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--llm-runs", type=int, default=8, help="streamed LLM calls per side")
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream()
        return
    upstream, port_text = _start([sys.executable, __file__, "--upstream"], dict(os.environ), r"port (\d+)")
    up_port = int(port_text)
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as home:
        env = {**os.environ, "MODELMARKET_HOME": home}
        print("building the demo catalogue ...", flush=True)
        subprocess.run([*MM, "demo", "--build-only"], env=env, check=True, stderr=subprocess.DEVNULL)
        run = lambda *a: subprocess.run([*MM, *a], env=env, check=True, capture_output=True, text=True).stdout  # noqa: E731
        run("providers", "add", "fast", "--base-url", f"http://127.0.0.1:{up_port}/v1")
        pkg = Path(home) / "fast-chat"
        pkg.mkdir()
        (pkg / "modelmarket.yaml").write_text(PACKAGE)
        (pkg / "README.md").write_text("fast-chat\n")
        run("publish", str(pkg))
        key = run("keys", "create", "demo-consumer").strip()
        gateway, gw_port = _start([*MM, "serve", "--port", "0"], env, r"URL: http://127\.0\.0\.1:(\d+)")
        llm_runner, llm_port = _start(
            [*MM, "runner", "smollm2-135m-instruct", "--port", "0"], env, r"listening on http://[\d.]+:(\d+)"
        )
        emb_runner, emb_port = _start(
            [*MM, "runner", "all-minilm-l6-v2", "--port", "0"], env, r"listening on http://[\d.]+:(\d+)"
        )
        try:
            res = uvloop.run(overhead(int(gw_port), up_port, key, args.requests, args.seconds))
            res |= uvloop.run(llm(int(gw_port), int(llm_port), key, args.llm_runs))
            res |= uvloop.run(embeddings(int(gw_port), int(emb_port), key, args.seconds))
        finally:
            for proc in (gateway, llm_runner, emb_runner, upstream):
                _stop(proc)
    print(f"OpenAI chat through the gateway vs the upstream directly ({args.requests} sequential requests each):")
    print(f"  direct  p50 {res['direct_p50_ms']:.3f} ms  p99 {res['direct_p99_ms']:.3f} ms")
    print(f"  gateway p50 {res['gateway_p50_ms']:.3f} ms  p99 {res['gateway_p99_ms']:.3f} ms")
    o50, o99 = res["gateway_p50_ms"] - res["direct_p50_ms"], res["gateway_p99_ms"] - res["direct_p99_ms"]
    print(f"  overhead: median {o50:.3f} ms (target <= 0.5), p99 {o99:.3f} ms (target <= 2)")
    c50 = res["gateway_c32_p50_ms"] - res["direct_c32_p50_ms"]
    c99 = res["gateway_c32_p99_ms"] - res["direct_c32_p99_ms"]
    print(f"  at concurrency 32: overhead median {c50:.3f} ms, p99 {c99:.3f} ms")
    ratio = res["gateway_rps_c32"] / res["direct_rps_c32"]
    print(
        f"  throughput at concurrency 32: direct {res['direct_rps_c32']:.0f} req/s, gateway "
        f"{res['gateway_rps_c32']:.0f} req/s, ratio {ratio:.2f} (target >= 0.8)"
    )
    print(f"smollm2-135m-instruct, streamed (medians of {args.llm_runs} calls per side):")
    print(f"  time to first token: runner {res['ttft_direct_ms']:.1f} ms, gateway {res['ttft_gateway_ms']:.1f} ms")
    print(f"  decode speed: {res['decode_tokens_per_s']:.1f} tokens/s")
    print("all-minilm-l6-v2 embeddings per second:")
    for batch in (1, 32):
        print(
            f"  batch {batch:>2}: runner {res[f'embeddings_per_s_batch{batch}_runner']:.0f}/s, "
            f"gateway {res[f'embeddings_per_s_batch{batch}_gateway']:.0f}/s"
        )
    print(json.dumps({k: round(v, 4) for k, v in res.items()}))


if __name__ == "__main__":
    main()
