"""Proofs at scale: ``audit prove`` and ``audit check-proof`` on a usage tree of 1,000,000 events (SQLite).

The tree is built in bulk, not through the gateway: each batch of events is written as the metering consumer writes
it, in one transaction (the ``usage_events`` rows through ``UsageRepository.add_events``, their leaves through
``audit.trees.grow``, the proofs repository's bulk insert), the last batch signed with the home's key. A proof
reads its leaf and event rows and the stored subtree heads it needs (O(log n) small range reads), never the
tree.

Prints: the build time; ``prove`` (the service call, in process) and ``check-proof`` (parse and check, in process)
per proof over random events: mean, p50, p95 and max; then each command once through the CLI (a new Python process,
so its start-up is included). ``--verify`` also times ``audit verify``'s pass over the usage tree.

Usage: python benchmarks/audit_proofs.py [--events N] [--proofs N] [--verify]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson

from modelmarket.audit.leaves import USAGE_TREE, usage_leaf
from modelmarket.audit.proofs import check_proof, parse_proof
from modelmarket.audit.tree_verify import verify_tree
from modelmarket.audit.trees import grow
from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.metering.usage_tree import usage_facts
from modelmarket.settings import Settings

BUILD_BATCH = 50_000
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _events(first: int, n: int) -> list[tuple[int, UsageEvent]]:
    price = Decimal("0.0010")
    return [
        (
            i + 1,
            UsageEvent(
                id=f"req_{i:012d}",
                source="bench",
                account_id=f"acc_{i % 97:04d}",
                time=T0 + timedelta(milliseconds=i),
                model="digits",
                version="1.0.0",
                provider_account_id="acc_provider",
                unit_kind=UnitKind.IMAGE,
                quantity=1 + i % 5,
                unit_price=price,
                currency="USD",
                latency_ms=Decimal("3.1"),
            ),
        )
        for i in range(first, first + n)
    ]


def build(plat: Platform, events: int) -> float:
    started = time.perf_counter()
    for first in range(0, events, BUILD_BATCH):
        batch = _events(first, min(BUILD_BATCH, events - first))
        last = first + len(batch) == events
        with plat.store.write() as uow:
            uow.usage.add_events(batch)
            leaves = [(e.id, usage_leaf(usage_facts(offset, e))) for offset, e in batch]
            grow(uow.proofs, USAGE_TREE, leaves, plat.store.signer if last else None, T0)
        print(f"  {first + len(batch):>10,} leaves", end="\r", flush=True)
    print()
    return time.perf_counter() - started


def _figures(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return (
        f"  {name:<12} mean {statistics.fmean(ms):7.2f} ms   p50 {statistics.median(ms):7.2f} ms   "
        f"p95 {p95:7.2f} ms   max {ms[-1]:7.2f} ms   ({len(ms)} proofs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--proofs", type=int, default=200)
    parser.add_argument("--verify", action="store_true", help="also time audit verify's pass over the usage tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm-proofs-bench-") as tmp:
        home = Path(tmp) / "home"
        platform = bootstrap(Settings(home=home))
        try:
            print(f"building a usage tree of {args.events:,} events (SQLite, batches of {BUILD_BATCH:,}) ...")
            build_s = build(platform, args.events)
            print(f"  built in {build_s:.1f} s ({args.events / build_s:,.0f} events/s, rows and leaves)")
            assert platform.audit.key is not None
            key = platform.audit.key.public_key()
            rng = random.Random(7)
            ids = [f"req_{rng.randrange(args.events):012d}" for _ in range(args.proofs)]
            prove_s, check_s, docs = [], [], []
            for event_id in ids:
                t = time.perf_counter()
                proof = platform.audit.prove(event_id)
                prove_s.append(time.perf_counter() - t)
                docs.append(orjson.dumps(proof.to_json()))
            for raw in docs:
                t = time.perf_counter()
                result = check_proof(parse_proof(raw), key)
                check_s.append(time.perf_counter() - t)
                assert result.ok, result.message
            path_len = len(orjson.loads(docs[0])["audit_path"])
            print(f"in process, at {args.events:,} leaves (audit paths of {path_len} hashes):")
            print(_figures("prove", prove_s))
            print(_figures("check-proof", check_s))
            _cli(home, ids[0], Path(tmp))
            if args.verify:
                t = time.perf_counter()
                with platform.store.read() as uow:
                    report = verify_tree(uow.proofs, USAGE_TREE, key)
                print(f"audit verify of the usage tree: {time.perf_counter() - t:.1f} s, ok={report.ok}")
        finally:
            platform.close()


def _cli(home: Path, event_id: str, tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMARKET_")} | {"MODELMARKET_HOME": str(home)}
    cmd = [sys.executable, "-m", "modelmarket.cli.main", "audit"]
    t = time.perf_counter()
    proved = subprocess.run([*cmd, "prove", event_id], env=env, capture_output=True, text=True, check=True)
    prove_s = time.perf_counter() - t
    (tmp / "proof.json").write_text(proved.stdout)
    t = time.perf_counter()
    checked = subprocess.run([*cmd, "check-proof", str(tmp / "proof.json")], env=env, capture_output=True, text=True)
    check_s = time.perf_counter() - t
    assert checked.returncode == 0, checked.stderr
    print("through the CLI, once (a new process each, start-up included):")
    print(f"  modelmarket audit prove       {prove_s * 1000:7.0f} ms")
    print(f"  modelmarket audit check-proof {check_s * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
