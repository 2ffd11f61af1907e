"""The overhead of the lab on the gateway's throughput: requests/s at concurrency 32 on `digits` with nothing
running, with an experiment running on it, and with a shadow copying every call to another version, measured in
one run on one gateway, the three modes alternated over several rounds (medians).

- experiment: `digits` A=1.0.0 / B=2.0.0 50/50; every call is assigned its variant (a hash of the key) and
  recorded by the gateway (a bounded queue written in batches off the hot path).
- shadow: every call of `digits` is answered by 1.0.0 and copied to 2.0.0 in the background (never billed nor
  returned), at most 16 copies at once; both versions' runners share the machine's cores, so this measures the
  copies' real cost on 2 cores, not only the gateway's bookkeeping.

It builds `digits` (and a 2.0.0 copy of it), starts its own gateway on a free loopback port in a temporary
MODELMARKET_HOME and stops it. Usage: python benchmarks/lab_overhead.py [--rounds R] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop
import yaml

from modelmarket.bootstrap import bootstrap
from modelmarket.demo._digits import build_digits
from modelmarket.lab.experiments import parse_variants
from modelmarket.runtime.pool import RunnerPool
from modelmarket.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from gateway_overhead import _start, _stop, _throughput

MM = [sys.executable, "-m", "modelmarket.cli.main"]
PICKUP_S = 3.0
"""Time for the gateway to follow an experiment's start or stop (its invalidation poll is 1 s)."""


async def _rps(port: int, key: str, body: bytes, seconds: float) -> float:
    pool = RunnerPool.over_tcp("127.0.0.1", port, 64, 30)
    try:
        headers = [(b"Authorization", f"Bearer {key}".encode()), (b"Content-Type", b"application/json")]
        return await _throughput(pool, "/v2/models/digits/infer", body, headers, 32, seconds)
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the three modes")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each throughput run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm-bench-lab-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "MODELMARKET_HOME": str(home)}
        packages = Path(tmp) / "packages"
        print("building digits and a 2.0.0 copy of it ...", flush=True)
        digits = build_digits(packages / "digits", packages / "examples", lambda _: None)
        second = packages / "digits-2"
        shutil.copytree(digits, second)
        doc = yaml.safe_load((second / "modelmarket.yaml").read_text())
        doc["version"] = "2.0.0"
        (second / "modelmarket.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        admin = bootstrap(Settings(home=home))
        try:
            admin.accounts.create("demo-provider", "provider")
            admin.registry.publish(digits)
            admin.registry.publish(second)
            admin.registry.move_alias("digits", "latest", "1.0.0")
            admin.accounts.create("bench", "consumer")
            key = admin.accounts.issue_key("bench").secret
        finally:
            admin.close()
        body = (packages / "examples" / "digit.json").read_bytes()
        gateway, port = _start([*MM, "serve", "--port", "0"], env, r"URL: http://127\.0\.0\.1:(\d+)")
        lab = bootstrap(Settings(home=home))
        results: dict[str, list[float]] = {"none": [], "experiment": [], "shadow": []}
        try:
            uvloop.run(_rps(int(port), key, body, 2.0))  # warm-up (and the 2.0.0 runner via a shadow below)
            for r in range(args.rounds):
                order = ["none", "experiment", "shadow"]
                for mode in order[r % 3 :] + order[: r % 3]:  # rotated, so drift hits every mode alike
                    name = f"bench-{mode}-{r}"
                    if mode == "experiment":
                        lab.experiments.start(name, "digits", parse_variants("A=1.0.0,B=2.0.0", "50/50"), "latency_p95")
                    elif mode == "shadow":
                        lab.experiments.start_shadow(name, "digits", "2.0.0", 100)
                    time.sleep(PICKUP_S)
                    results[mode].append(uvloop.run(_rps(int(port), key, body, args.seconds)))
                    if mode != "none":
                        lab.experiments.stop(name)
                        time.sleep(PICKUP_S)
            recorded = sum(len(lab.experiments.observations(e.name)) for e in lab.experiments.all())
        finally:
            lab.close()
            _stop(gateway)
    none = statistics.median(results["none"])
    print(f"digits at concurrency 32, {args.rounds} rounds of {args.seconds:g} s per mode (medians):")
    print(f"  nothing running      {none:8.0f} req/s")
    for mode in ("experiment", "shadow"):
        value = statistics.median(results[mode])
        print(f"  {mode + ' running':<20} {value:8.0f} req/s  ratio {value / none:.2f}")
    print(f"  calls the gateway recorded for the lab: {recorded:,}")
    print(json.dumps({k: [round(x) for x in v] for k, v in results.items()}))


if __name__ == "__main__":
    main()
