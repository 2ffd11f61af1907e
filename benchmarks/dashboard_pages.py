"""Dashboard page time, server side: the catalogue with 1,000 published versions, and a model's page.

Builds a temporary MODELMARKET_HOME and publishes the demo's ``digits`` package (its real card and ONNX file) as
MODELS models of VERSIONS versions each (by default 100 x 10 = 1,000 versions) through ``RegistryService.publish``
(every version validated, hashed, stored and audited, as ``modelmarket publish`` does without the gate). Then the
gateway is composed in-process (``bootstrap_gateway``) and each page is asked for REPEAT times over
httpx.ASGITransport: the time is the gateway's whole answer (routing, the session, the search over every model, the
template), without a network. Prints the median and p95 of each page, signed out and signed in, and of
``GET /api/models`` (the same search code, answered as JSON) for comparison.

Usage: python benchmarks/dashboard_pages.py [--models M] [--versions V] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import yaml

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.demo._digits import build_digits
from modelmarket.gateway.app import GatewayApp
from modelmarket.gateway.compose import bootstrap_gateway
from modelmarket.settings import Settings

DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
TOKEN_RE = re.compile(r'id="signin-form"[^>]*>\s*<input type="hidden" name="csrf_token" value="([^"]+)"')


def publish_catalogue(platform: Platform, work: Path, models: int, versions: int) -> float:
    """Publish ``models`` x ``versions`` copies of the digits package; the seconds it took."""
    source = work / "digits"
    build_digits(source, work / "examples", lambda _: None)
    doc = yaml.safe_load((source / "modelmarket.yaml").read_text())
    started = time.perf_counter()
    for m in range(models):
        for v in range(versions):
            doc.update(name=f"model-{m:04d}", version=f"1.{v}.0")
            doc["card"]["summary"] = f"Model {m} version {v}: handwritten digits, 8x8 grey-level images."
            (source / "modelmarket.yaml").write_text(yaml.dump(doc, Dumper=DUMPER, sort_keys=False))
            platform.registry.publish(source, actor="bench")
    return time.perf_counter() - started


async def timed(call: Callable[[], Awaitable[httpx.Response]], repeat: int) -> tuple[float, float]:
    """Median and p95 in milliseconds of ``repeat`` answers (after two warm-up calls)."""
    for _ in range(2):
        (await call()).raise_for_status()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = await call()
        times.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


async def measure(platform: Platform, key: str, models: int, repeat: int) -> None:
    app = GatewayApp(bootstrap_gateway(platform, preload=False, metering_child=False))
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            name = f"model-{models // 2:04d}"
            pages = {
                "catalogue /": "/",
                "catalogue, search q=digits sort=price": "/?q=digits&sort=price",
                "catalogue, htmx partial q=model-00": "/?q=model-00",
                f"model page /models/{name}": f"/models/{name}",
                "for comparison: GET /api/models (the same search, JSON)": "/api/models",
            }
            headers = {"catalogue, htmx partial q=model-00": {"HX-Request": "true"}}
            for signed in ("signed out", "signed in"):
                if signed == "signed in":
                    token = TOKEN_RE.search((await client.get("/signin")).text)
                    assert token is not None
                    answer = await client.post("/signin", data={"key": key, "csrf_token": token.group(1)})
                    assert answer.status_code == 303, answer.text
                for label, path in pages.items():

                    def call(path: str = path, label: str = label) -> Awaitable[httpx.Response]:
                        return client.get(path, headers=headers.get(label, {}))

                    median, p95 = await timed(call, repeat)
                    print(f"{label + ' (' + signed + ')':70} median {median:7.2f} ms   p95 {p95:7.2f} ms")
    finally:
        await app.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm-bench-dashboard-") as tmp:
        work = Path(tmp)
        platform = bootstrap(Settings(home=work / "home"))
        try:
            platform.accounts.create("demo-provider", "provider", actor="bench")
            platform.accounts.create("viewer", "consumer", actor="bench")
            key = platform.accounts.issue_key("viewer", actor="bench").secret
            seconds = publish_catalogue(platform, work, args.models, args.versions)
            total = args.models * args.versions
            print(f"published {args.models} models x {args.versions} versions = {total:,} versions in {seconds:.1f}s")
            print(f"each page asked for {args.repeat} times in-process (httpx.ASGITransport), after 2 warm-up calls")
            asyncio.run(measure(platform, key, args.models, args.repeat))
        finally:
            platform.close()


if __name__ == "__main__":
    main()
