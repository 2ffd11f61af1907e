"""Publish time per gate stage for the demo models, measured in one run on this machine.

Builds the demo packages in a temporary MODELMARKET_HOME and submits each through the publish gate (validate,
store, scan, smoke test in its sandbox, benchmark, bias, review with `review: auto`, publish), one after the other,
as `make demo` does. Prints a table: milliseconds per stage and model, and each model's total; the biased credit
model stops at its bias stage (that is its purpose). Nothing is asserted.

Usage: python benchmarks/publish_gate.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from modelmarket.bootstrap import bootstrap
from modelmarket.demo.build import build_packages
from modelmarket.governance.model import STAGES
from modelmarket.settings import Settings


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mm-gate-bench-") as tmp:
        home = Path(tmp) / "home"
        platform = bootstrap(Settings(home=home, gate_review="auto"))
        platform.accounts.create("demo-provider", "provider")
        packages = build_packages(home / "demo", progress=lambda _: None)
        rows: list[tuple[str, dict[str, int], float, str]] = []
        for package in packages:
            started = time.perf_counter()
            sub = platform.gate.submit(package, actor="bench")
            if sub.status == "running":
                sub = platform.gate.run(sub.id)
            wall = time.perf_counter() - started
            durations = {s.stage: s.duration_ms for s in sub.stages}
            rows.append((package.name, durations, wall, sub.status))
        platform.close()
    stages = [s for s in STAGES if any(s in r[1] for r in rows)]
    header = f"{'model':<24}" + "".join(f"{s:>12}" for s in stages) + f"{'total s':>10}  outcome"
    print("publish gate, ms per stage (review: auto)")
    print(header)
    for name, durations, wall, status in rows:
        cells = "".join(f"{durations[s]:>12,}" if s in durations else f"{'-':>12}" for s in stages)
        print(f"{name:<24}{cells}{wall:>10.2f}  {status}")


if __name__ == "__main__":
    main()
