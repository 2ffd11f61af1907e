"""Price replay speed: usage events re-rated per second by ``modelmarket lab price-replay`` over a month of real,
rated usage (1,000,000 events by default), beside the rate at which metering rated the same events in the same
run.

Set-up (not timed): the demo ``digits`` model, 1,000 consumers (one in ten on a ``pro`` subscription whose
included IU run out during the month, the rest pay as they go) and ``--events`` calls of 1-4 images spread over
January 2026, appended to the embedded event log and applied by the metering consumer with billing's rater
(timed separately: that is the "rated" figure).

Timed: ``PriceReplayService.replay`` of January at today's prices (which must reproduce the stored figures
exactly: the benchmark checks it) and with ``digits`` at twice its price. Each reads every event from the store,
re-rates it through ``Rater.apply`` over an in-memory ledger, and builds every account's invoice.

Prints events/s for each replay, the ratio to metering's rating rate, and the process's peak RSS.

Usage: python benchmarks/price_replay.py [--events N]
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from modelmarket.adapters.bus import SqliteEventLog
from modelmarket.billing.period import Period
from modelmarket.billing.replay import Proposal
from modelmarket.bootstrap import bootstrap
from modelmarket.demo import build_packages
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.settings import Settings

PLANS = """
plans:
  - {name: pro, kind: subscription, currency: USD, fee: "20.00", included: {image: 2000}}
"""
MONTH_START = datetime(2026, 1, 1, tzinfo=UTC)
MONTH_S = 31 * 86_400
CONSUMERS = 1_000
APPEND_CHUNK = 50_000


def _events(provider_id: str, consumers: list[str], n: int) -> list[UsageEvent]:
    rng = random.Random(11)
    step = timedelta(seconds=MONTH_S / n)
    return [
        UsageEvent(
            id=f"evt-{i:08d}",
            source="gateway-1",
            account_id=consumers[rng.randrange(len(consumers))],
            time=MONTH_START + i * step,
            model="digits",
            version="1.0.0",
            provider_account_id=provider_id,
            unit_kind=UnitKind.IMAGE,
            quantity=rng.randint(1, 4),
            unit_price=Decimal("0.0010"),
            currency="USD",
            latency_ms=Decimal("1.5"),
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.events
    with tempfile.TemporaryDirectory(prefix="mm-bench-replay-") as tmp:
        base = Path(tmp)
        print("building the demo packages ...", flush=True)
        digits = build_packages(base / "packages", progress=lambda _: None)[0]
        # The clock is pinned to the month's start: every subscription is in force for the whole month.
        platform = bootstrap(Settings(home=base / "home"), clock=lambda: MONTH_START)
        try:
            provider = platform.accounts.create("demo-provider", "provider")
            platform.registry.publish(digits)
            platform.plans.apply(PLANS)
            consumers = []
            for i in range(CONSUMERS):
                account = platform.accounts.create(f"consumer-{i:04d}", "consumer")
                if i % 10 == 0:
                    platform.plans.subscribe(account.id, "pro")
                consumers.append(account.id)
            print(f"appending {n:,} usage events to the embedded log ...", flush=True)
            log = SqliteEventLog(platform.settings.event_log_path, "normal")
            events = _events(provider.id, consumers, n)
            for i in range(0, n, APPEND_CHUNK):
                log.append_many([(e.id, e.encode()) for e in events[i : i + APPEND_CHUNK]])
            log.close()
            del events
            print("metering and rating them ...", flush=True)
            started = time.perf_counter()
            applied = platform.metering.catch_up()
            rate_s = time.perf_counter() - started
            if applied != n:
                raise RuntimeError(f"metering applied {applied} records, expected {n}")
            jan = Period(2026, 1)
            runs = []
            for label, proposal in (
                ("today's prices", Proposal()),
                ("digits at 0.0020", Proposal({"digits": Decimal("0.0020")})),
            ):
                print(f"replaying January at {label} ...", flush=True)
                report = platform.replays.replay(jan, proposal)
                if report.rated != n:
                    raise RuntimeError(f"the replay re-rated {report.rated} events, expected {n}")
                runs.append((label, report))
            same = runs[0][1]
            if any(c.old != c.new for c in same.models.values()) or any(i.old != i.new for i in same.invoices):
                raise RuntimeError("a replay at today's prices differs from the stored figures")
            doubled = runs[1][1].models[("digits", "USD")]
            print()
            print(f"events: {n:,} over {CONSUMERS:,} accounts ({len(same.invoices):,} invoices)")
            print(f"metering + rating:        {n / rate_s:>10,.0f} events/s ({rate_s:.1f} s)")
            for label, report in runs:
                eps = report.rated / report.seconds
                print(
                    f"replay at {label + ':':<17} {eps:>10,.0f} events/s ({report.seconds:.1f} s), "
                    f"{eps / (n / rate_s):.2f}x metering's rate"
                )
            print(f"digits revenue, today -> doubled price: {doubled.old} -> {doubled.new} USD (exact)")
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"peak RSS of the process: {peak_mib:,.0f} MiB")
        finally:
            platform.close()


if __name__ == "__main__":
    main()
