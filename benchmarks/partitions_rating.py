"""Partitioned rating (DESIGN.md section 10's simulation): synthetic usage events through the real rating code over
1, 2, 4 and 8 partitions on PostgreSQL, one metering consumer per partition, all in parallel.

For each partition count P: a fresh platform (its own home and its own database on one throwaway PostgreSQL
server, ``MODELMARKET_BUS_PARTITIONS=P``) with ``digits`` published, a ``pro`` plan and ``--accounts`` consumer
accounts subscribed to it (their included IU cover each account's first calls, the rest is overage), and
``--events`` usage events appended to the log before timing, each to its account's partition (``partition_of``),
as the gateway appends them. Before those, one event per partition is rated, untimed: the timed run sees a
platform already running (a store's first rating fixes the provider share under the lock every partition shares,
once). Then P consumers rate them, one per partition, started together; the clock runs
from the start signal until every partition's offset reached its last offset.

What is measured is rating, not the bus: the log is the embedded one (a SQLite file per partition under the
home), read by each consumer from local disk. On NATS JetStream the consumers would read over the network; its
publish rate is ``benchmarks/bus_publish.py``'s subject.

Each consumer is its own **process** (the section 10 plan: consumers scale by partition, each on its own), not a
thread: rating an event is Python work (decode, dedup, rate under the plan in force, build the rows) that holds
the GIL, so threads in one process would measure the GIL, not the design. Each process bootstraps its own
platform from the same settings and applies its partition with ``MeteringService.consume_batch`` (the step
``follow`` repeats), under the partition's own lock; what every partition writes (the usage tree) is taken under
the shared key, as in production.

Events are spread so that every partition gets the same number (round robin over partitions, then over that
partition's accounts): with few accounts the hash's skew would otherwise make one partition the slowest, and the
ratio would measure the skew. The per-partition event counts are printed.

Each run is checked before it counts: every event rated once (``usage_events`` rows and rated rows equal to the
events appended), every partition's offset at its log's end, and ``ledger.verify()`` (every transaction balances,
every rated event's amount is in its transaction). A fast wrong run fails loudly.

Prints, measured in one run: for each partition count, total events/s, events/s per partition (total / P, and
the slowest and fastest partition's own rate), the ratio of the total to one partition's, and the consumer
processes' CPU seconds summed (flat while the wall time grows: the run waited for cores or locks, it did not do
more work); and the machine's core count. PostgreSQL's work and the consumers share those cores: with more
partitions than cores the CPU is the limit, not the design. One part of each batch is serial by design: the
usage tree (one sequence of leaves for every partition) is written under the shared key, held to the batch's
commit.

Usage: python benchmarks/partitions_rating.py [--events N] [--partitions 1,2,4,8] [--accounts A]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from modelmarket.adapters.store import schema as t
from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.cluster.postgres import PostgresUnavailable, find_pg_tools, running_postgres
from modelmarket.demo import build_packages
from modelmarket.metering.consumer import CONSUMER_NAME
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.partitions import PARTITIONS_MAX, consumer_name, partition_of
from modelmarket.metering.units import UnitKind
from modelmarket.settings import HOME_ID, Settings

PLANS = """
plans:
  - {name: pro, kind: subscription, currency: USD, fee: "20.00", included: {image: 500}}
"""
MONTH_START = datetime(2026, 1, 1, tzinfo=UTC)
MONTH_S = 31 * 86_400
READY_TIMEOUT_S = 120.0
"""How long the consumer processes may take to start (import, bootstrap, connect) before the run is abandoned."""
RUN_TIMEOUT_S = 600.0
"""How long one partition count's rating may take before the run is abandoned."""


def _clock() -> datetime:
    """Pinned to the month's start: every account's subscription is in force for every event."""
    return MONTH_START


@dataclass(frozen=True)
class PartitionResult:
    partition: int
    records: int
    rate_s: float
    cpu_s: float
    """The consumer process's own CPU time over its run (PostgreSQL's work is in the server's processes)."""

    @property
    def eps(self) -> float:
        return self.records / self.rate_s


@dataclass(frozen=True)
class RunResult:
    partitions: int
    events: int
    wall_s: float
    per_partition: list[PartitionResult]
    granted_events: int
    billed_events: int
    transactions: int

    @property
    def eps(self) -> float:
        return self.events / self.wall_s


def _settings(home: Path, database_url: str, partitions: int) -> Settings:
    return Settings(home=home, database_url=database_url, bus_partitions=partitions)


def _accounts_by_partition(platform: Platform, accounts: int, partitions: int) -> list[list[str]]:
    """``accounts`` consumer accounts subscribed to ``pro``, by partition; more while a partition has none (so every
    partition has events to rate)."""
    by_partition: list[list[str]] = [[] for _ in range(partitions)]
    i = 0
    while i < accounts or not all(by_partition):
        account = platform.accounts.create(f"bench-consumer-{i:03d}", "consumer")
        platform.plans.subscribe(account.id, "pro")
        by_partition[partition_of(account.id, partitions)].append(account.id)
        i += 1
    return by_partition


def _events(provider_id: str, by_partition: list[list[str]], n: int) -> list[UsageEvent]:
    """``n`` calls to digits of 1-4 images each, spread evenly over January 2026, the same number to every
    partition (round robin), and within a partition round robin over its accounts."""
    rng = random.Random(7)
    step = timedelta(seconds=MONTH_S / n)
    parts = len(by_partition)
    out = []
    for i in range(n):
        accounts = by_partition[i % parts]
        out.append(
            UsageEvent(
                id=f"evt-{i:08d}",
                source="gateway-1",
                account_id=accounts[(i // parts) % len(accounts)],
                time=MONTH_START + i * step,
                model="digits",
                version="1.0.0",
                provider_account_id=provider_id,
                unit_kind=UnitKind.IMAGE,
                quantity=rng.randint(1, 4),
                unit_price=Decimal("0.0010"),
                currency="USD",
                latency_ms=Decimal("1.5"),
                trace_id=f"{rng.getrandbits(128):032x}",
            )
        )
    return out


def _append(platform: Platform, events: list[UsageEvent]) -> list[int]:
    """Append each event to its account's partition of the log, as the gateway does. Returns the count per
    partition."""
    return platform.metering.append([(e.account_id, e.id, e.encode()) for e in events])


def _warm_up(platform: Platform, provider_id: str, by_partition: list[list[str]]) -> None:
    """Rate one event per partition, untimed, so the timed run sees a platform already running: a store's first
    rating fixes the provider share under the shared lock (once per store, ``Rater``), and every partition's
    consumer has its offset and the usage tree its first leaves."""
    warm = [
        UsageEvent(
            id=f"warm-{p:02d}",
            source="gateway-1",
            account_id=accounts[0],
            time=MONTH_START,
            model="digits",
            version="1.0.0",
            provider_account_id=provider_id,
            unit_kind=UnitKind.IMAGE,
            quantity=1,
            unit_price=Decimal("0.0010"),
            currency="USD",
            latency_ms=Decimal("1.5"),
        )
        for p, accounts in enumerate(by_partition)
    ]
    _append(platform, warm)
    applied = platform.metering.catch_up()
    if applied != len(warm):
        raise RuntimeError(f"the warm-up rated {applied} events, expected {len(warm)}")


def _prepare(home: Path, database_url: str, partitions: int, digits: Path, accounts: int, n: int) -> list[int]:
    """A fresh platform in ``home``, warmed up, with ``n`` events in the log, not yet rated. Returns the events per
    partition."""
    platform = bootstrap(_settings(home, database_url, partitions), clock=_clock)
    try:
        provider = platform.accounts.create("demo-provider", "provider")
        platform.registry.publish(digits)
        platform.plans.apply(PLANS)
        by_partition = _accounts_by_partition(platform, accounts, partitions)
        _warm_up(platform, provider.id, by_partition)
        return _append(platform, _events(provider.id, by_partition, n))
    finally:
        platform.close()


def _consume(
    home: Path, database_url: str, partitions: int, partition: int, ready: Any, go: EventType, results: Any
) -> None:
    """One partition's consumer process: bootstrap, open the partition, say ready, wait for the start signal, then
    apply batches until the partition's offset is its log's last offset. Puts (partition, records, seconds, CPU
    seconds)."""
    platform = bootstrap(_settings(home, database_url, partitions), clock=_clock)
    metering = platform.metering
    event_log = metering.open_partition(partition)
    try:
        last = event_log.last_offset()
        metering.halted()  # connects to the database before the clock starts
        ready.put(partition)
        go.wait()
        started, cpu_started = time.perf_counter(), time.process_time()
        records = 0
        while (n := metering.consume_batch(event_log, partition=partition)) > 0:
            records += n
        rate_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        with platform.store.read() as uow:
            offset = uow.usage.offset(consumer_name(CONSUMER_NAME, partition))
        if offset != last:
            raise RuntimeError(f"partition {partition}: the consumer stopped at {offset}, the log ends at {last}")
        results.put((partition, records, rate_s, cpu_s))
    finally:
        event_log.close()
        platform.close()


def _rate_in_parallel(home: Path, database_url: str, partitions: int) -> tuple[float, list[PartitionResult]]:
    """Start one consumer process per partition, wait until all are ready, start them together; returns the wall
    time from the start signal to the last one's result, and each partition's own."""
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no engine, connection or thread inherited
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(
            target=_consume,
            args=(home, database_url, partitions, p, ready, go, results),
            name=f"metering-p{p}",
        )
        for p in range(partitions)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=READY_TIMEOUT_S)
        started = time.perf_counter()
        go.set()
        done = [results.get(timeout=RUN_TIMEOUT_S) for _ in procs]
        wall_s = time.perf_counter() - started
        for proc in procs:
            proc.join(timeout=READY_TIMEOUT_S)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # a consumer that failed to finish: our own child, by its handle
                proc.join()
    failed = [proc.name for proc in procs if proc.exitcode != 0]
    if failed:
        raise RuntimeError(f"consumer process(es) {failed} failed; their tracebacks are above")
    return wall_s, [PartitionResult(*result) for result in sorted(done)]


def _check(home: Path, database_url: str, partitions: int, events: int) -> tuple[int, int, int]:
    """Every event (the ``events`` timed and the warm-up's, one per partition) rated exactly once and the ledger
    balanced, or raise. Returns (granted, billed, transactions), warm-up included."""
    n = events + partitions
    platform = bootstrap(_settings(home, database_url, partitions), clock=_clock)
    try:
        with platform.store.read() as uow:
            r = t.usage_events.c
            rows = int(uow.conn.execute(select(func.count()).select_from(t.usage_events)).scalar_one())
            rated = int(uow.conn.execute(select(func.count()).where(r.txn_id.is_not(None))).scalar_one())
            granted = int(uow.conn.execute(select(func.count()).where(r.granted_base > 0)).scalar_one())
            billed = int(uow.conn.execute(select(func.count()).where(r.granted_base < r.quantity_base)).scalar_one())
        if rows != n or rated != n:
            raise RuntimeError(f"{partitions} partition(s): {rows} usage rows and {rated} rated, expected {n} of each")
        report = platform.ledger.verify()
        if not report.ok or report.rated_events != n:
            raise RuntimeError(f"{partitions} partition(s): the ledger does not verify: {report.to_json()}")
        return granted, billed, report.transactions
    finally:
        platform.close()


def _run(base: Path, server_url: str, digits: Path, partitions: int, n: int, accounts: int) -> RunResult:
    home = base / f"home-p{partitions}"
    print(f"{partitions} partition(s): preparing {n:,} events over {accounts} accounts ...", flush=True)
    counts = _prepare(home, server_url, partitions, digits, accounts, n)
    print(f"  events per partition: {counts}; rating ...", flush=True)
    wall_s, per_partition = _rate_in_parallel(home, server_url, partitions)
    if [r.records for r in per_partition] != counts:
        raise RuntimeError(f"consumers applied {[r.records for r in per_partition]} records, appended {counts}")
    granted, billed, txns = _check(home, server_url, partitions, n)
    result = RunResult(partitions, n, wall_s, per_partition, granted, billed, txns)
    print(f"  {result.eps:,.0f} events/s in {wall_s:.2f} s (checked: {n:,} rated once, ledger verifies)", flush=True)
    return result


def _report(results: list[RunResult]) -> None:
    base = next((r for r in results if r.partitions == 1), results[0])
    print()
    first = results[0]
    print(
        f"{first.events:,} events per run (at P={first.partitions}, warm-up included: {first.granted_events:,} "
        f"with included IU, {first.billed_events:,} with overage); PostgreSQL; one consumer process per partition"
    )
    print(
        f"{'partitions':>10} {'total ev/s':>11} {'ev/s per partition':>19} {'slowest':>9} {'fastest':>9} "
        f"{'vs ' + str(base.partitions) + ' partition':>15} {'consumers CPU s':>16}"
    )
    for r in results:
        rates = [p.eps for p in r.per_partition]
        print(
            f"{r.partitions:>10} {r.eps:>11,.0f} {r.eps / r.partitions:>19,.0f} {min(rates):>9,.0f} "
            f"{max(rates):>9,.0f} {r.eps / base.eps:>14.2f}x {sum(p.cpu_s for p in r.per_partition):>16.2f}"
        )
    cores = os.cpu_count() or 1
    print(
        f"cores on this machine: {cores}. PostgreSQL and the consumers share them: beyond {cores} partition(s) "
        "the CPU is the limit, not the design (each partition is rated by its own process, locks only per "
        "partition but for the shared usage tree)."
    )


def _partition_counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",") if x.strip()]
    if not counts or any(not 1 <= c <= PARTITIONS_MAX for c in counts):
        raise argparse.ArgumentTypeError(f"--partitions: a comma-separated list of 1..{PARTITIONS_MAX}, not {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="events rated per partition count (20,000)")
    parser.add_argument("--partitions", type=_partition_counts, default=[1, 2, 4, 8], help="counts (1,2,4,8)")
    parser.add_argument("--accounts", type=int, default=64, help="consumer accounts (default 64)")
    args = parser.parse_args()
    try:
        tools = find_pg_tools()
    except PostgresUnavailable as exc:
        print(f"skipped: {exc}")
        return
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="mm-bench-partitions-") as tmp:
        base = Path(tmp)
        print("building the demo packages ...", flush=True)
        digits = build_packages(base / "packages", progress=lambda _: None)[0]
        with running_postgres(tools) as server:
            url = server.url(HOME_ID)  # a database per home on the one server
            for partitions in args.partitions:
                results.append(_run(base, url, digits, partitions, args.events, args.accounts))
    _report(results)


if __name__ == "__main__":
    main()
