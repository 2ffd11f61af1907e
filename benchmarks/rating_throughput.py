"""Rating throughput: usage events per second from the event log into usage, rating and the ledger, on SQLite and on
PostgreSQL, beside the raw insert rate of the same rows into the same database (the storage's upper bound).

The measured path is the metering consumer with billing's Rater projector (``platform.metering.catch_up()``, as
``modelmarket meter`` runs it): read the log, decode, dedup by event id, rate each event under the plan in force
(a ``pro`` subscription: its included IU cover the first calls, the rest is overage at the list price), write
each event once with its rating (a row of usage_events), usage_daily, the counters and one balanced ledger
transaction per group and batch, and move the offset, one transaction per batch of ``BATCH_MAX_RECORDS`` log
records.

The raw bound inserts as many usage_events, ledger_txns and ledger_entries rows as that run wrote (copies of
them, new keys), one transaction per batch of the same size, no logic, written the way the consumer writes its
per-event rows (``insert_rows``: ``executemany`` on SQLite, ``COPY`` on PostgreSQL).

Prints, measured in one run on this machine: events/s for each backend (targets: >= 50,000/s embedded SQLite,
>= 10,000/s PostgreSQL), the raw insert rate and the ratio. ``--profile`` also rates a second, fresh copy of each
database under cProfile and prints the top functions by cumulative time (then by own time).

It builds the demo packages (publishing only ``digits``) and its databases in a temporary folder; PostgreSQL is a
throwaway server (initdb/pg_ctl, modelmarket.cluster.postgres) on a free loopback port, stopped at the end.
Without the PostgreSQL binaries that half is skipped, with the reason.

Usage: python benchmarks/rating_throughput.py [--events N] [--pg-events N] [--profile] [--no-postgres]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import func, select

from modelmarket.adapters.bus import SqliteEventLog
from modelmarket.adapters.store import SqlStore, open_store
from modelmarket.adapters.store import schema as t
from modelmarket.adapters.store.repos.usage import insert_rows
from modelmarket.bootstrap import bootstrap
from modelmarket.cluster.postgres import PostgresUnavailable, find_pg_tools, running_postgres
from modelmarket.demo import build_packages
from modelmarket.metering.consumer import BATCH_MAX_RECORDS
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.settings import Settings

TARGET_SQLITE_EPS = 50_000
TARGET_POSTGRES_EPS = 10_000
PLANS = """
plans:
  - {name: pro, kind: subscription, currency: USD, fee: "20.00", included: {image: 10000}}
"""
MONTH_START = datetime(2026, 1, 1, tzinfo=UTC)
MONTH_S = 31 * 86_400
RAW_TABLES = (t.usage_events, t.ledger_txns, t.ledger_entries)
RAW_KEY = {"usage_events": "event_id", "ledger_txns": "id", "ledger_entries": "txn_id"}


@dataclass
class Result:
    backend: str
    events: int
    append_s: float
    rate_s: float
    raw_s: float
    rows: dict[str, int]
    granted_events: int
    billed_events: int

    @property
    def eps(self) -> float:
        return self.events / self.rate_s

    @property
    def raw_eps(self) -> float:
        return self.events / self.raw_s


def _events(provider_id: str, consumer_id: str, n: int) -> list[UsageEvent]:
    """``n`` calls to digits of 1-4 images each, spread evenly over January 2026."""
    rng = random.Random(7)
    step = timedelta(seconds=MONTH_S / n)
    return [
        UsageEvent(
            id=f"evt-{i:08d}",
            source="gateway-1",
            account_id=consumer_id,
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
        for i in range(n)
    ]


def _rate(home: Path, store: SqlStore, digits: Path, n: int, profile: bool) -> tuple[float, float]:
    """Set up a platform in ``home`` on ``store``, append ``n`` events, apply them. Returns (append_s, rate_s)."""
    # The clock is pinned to the month's start: the subscription is in force for every event.
    platform = bootstrap(Settings(home=home), store=store, clock=lambda: MONTH_START)
    provider = platform.accounts.create("demo-provider", "provider")
    consumer = platform.accounts.create("bench-consumer", "consumer")
    platform.registry.publish(digits)
    platform.plans.apply(PLANS)
    platform.plans.subscribe(consumer.id, "pro")
    events = _events(provider.id, consumer.id, n)
    log = SqliteEventLog(platform.settings.event_log_path, "normal")
    started = time.perf_counter()
    log.append_many([(e.id, e.encode()) for e in events])
    append_s = time.perf_counter() - started
    log.close()
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    applied = platform.metering.catch_up()
    if profiler is not None:
        profiler.disable()
    rate_s = time.perf_counter() - started
    if applied != n:
        raise RuntimeError(f"the consumer applied {applied} log records, expected {n}")
    if profiler is not None:
        _print_profile(profiler)
    return append_s, rate_s


def _print_profile(profiler: cProfile.Profile) -> None:
    for order, top in (("cumulative", 15), ("tottime", 10)):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(top)
        text = out.getvalue()
        print(f"    top {top} by {order}:")
        print("\n".join("    " + line for line in text[text.index("ncalls") :].rstrip().splitlines()))


def _counts(store: SqlStore) -> tuple[dict[str, int], int, int]:
    tables = (*RAW_TABLES, t.usage_daily, t.rating_counters)
    with store.read() as uow:
        conn = uow.conn
        rows = {table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one()) for table in tables}
        r = t.usage_events.c
        rows["rated"] = int(conn.execute(select(func.count()).where(r.txn_id.is_not(None))).scalar_one())
        granted = conn.execute(select(func.count()).where(r.granted_base > 0)).scalar_one()
        billed = conn.execute(select(func.count()).where(r.granted_base < r.quantity_base)).scalar_one()
    return rows, int(granted), int(billed)


def _raw_insert(store: SqlStore, n: int) -> float:
    """Copies of the rows the rating run wrote, inserted as the consumer inserts its per-event rows
    (``insert_rows``), a transaction per batch."""
    copies: list[tuple[str, list[str], list[tuple[object, ...]]]] = []
    with store.read() as uow:
        for table in RAW_TABLES:
            names = [c.name for c in table.columns]
            key = names.index(RAW_KEY[table.name])
            stored = uow.conn.exec_driver_sql(f"SELECT {', '.join(names)} FROM {table.name}").all()
            rows = [(*row[:key], f"raw{row[key]}", *row[key + 1 :]) for row in stored]
            copies.append((table.name, names, rows))
    batches = max(1, -(-n // BATCH_MAX_RECORDS))
    started = time.perf_counter()
    for b in range(batches):
        with store.write() as uow:  # the consumer's kind of transaction (BEGIN IMMEDIATE on SQLite)
            for name, columns, rows in copies:
                per = -(-len(rows) // batches)
                chunk = rows[b * per : (b + 1) * per]
                if chunk:
                    insert_rows(uow.conn, name, columns, chunk)
    return time.perf_counter() - started


def _measure(
    backend: str, new_store: Callable[[str], SqlStore], base: Path, digits: Path, n: int, profile: bool
) -> Result:
    print(f"{backend}: rating {n:,} events ...", flush=True)
    store = new_store("bench")
    try:
        append_s, rate_s = _rate(base / f"{backend}-home", store, digits, n, profile=False)
        rows, granted, billed = _counts(store)
        if rows["rated"] != n or rows["usage_events"] != n:
            raise RuntimeError(f"{backend}: expected {n} usage and rated events, found {rows}")
        raw_s = _raw_insert(store, n)
    finally:
        store.dispose()
    if profile:
        print(f"{backend}: the same run again on a fresh database, under cProfile:", flush=True)
        store = new_store("bench_profile")
        try:
            _, profiled_s = _rate(base / f"{backend}-profile-home", store, digits, n, profile=True)
            print(f"    (under the profiler: {n / profiled_s:,.0f} events/s)")
        finally:
            store.dispose()
    return Result(backend, n, append_s, rate_s, raw_s, rows, granted, billed)


@contextmanager
def _postgres_stores() -> Iterator[Callable[[str], SqlStore]]:
    with running_postgres(find_pg_tools()) as server:

        def new_store(dbname: str) -> SqlStore:
            with psycopg.connect(server.admin_conninfo, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            return open_store(server.url(dbname))

        yield new_store


def _report(res: Result, target: int) -> None:
    verdict = "meets" if res.eps >= target else "BELOW"
    print(
        f"{res.backend}: {res.events:,} events "
        f"({res.granted_events:,} within included IU, {res.billed_events:,} billed)"
    )
    print(f"  appended to the log in {res.append_s:.2f} s ({res.events / res.append_s:,.0f} events/s)")
    print(
        f"  rated (log -> usage + rating + ledger): {res.rate_s:6.2f} s  {res.eps:9,.0f} events/s  "
        f"(target >= {target:,}: {verdict})"
    )
    print(f"  raw insert of the same rows:            {res.raw_s:6.2f} s  {res.raw_eps:9,.0f} events/s")
    print(f"  ratio rated / raw: {res.eps / res.raw_eps:.2f}")
    print("  rows written: " + ", ".join(f"{k} {v:,}" for k, v in res.rows.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="events rated on SQLite (default 50,000)")
    parser.add_argument("--pg-events", type=int, default=20_000, help="events rated on PostgreSQL (default 20,000)")
    parser.add_argument("--profile", action="store_true", help="also profile a second run (cProfile, top 15)")
    parser.add_argument("--no-postgres", action="store_true", help="measure SQLite only")
    args = parser.parse_args()
    results: list[tuple[Result, int]] = []
    with tempfile.TemporaryDirectory(prefix="mm-bench-rating-") as tmp:
        base = Path(tmp)
        print("building the demo packages ...", flush=True)
        digits = build_packages(base / "packages", progress=lambda _: None)[0]

        def sqlite_store(dbname: str) -> SqlStore:
            return open_store(f"sqlite:///{base / dbname / 'modelmarket.db'}")

        results.append((_measure("sqlite", sqlite_store, base, digits, args.events, args.profile), TARGET_SQLITE_EPS))
        if args.no_postgres:
            print("postgresql: skipped (--no-postgres)")
        else:
            try:
                with _postgres_stores() as pg_store:
                    res = _measure("postgresql", pg_store, base, digits, args.pg_events, args.profile)
                results.append((res, TARGET_POSTGRES_EPS))
            except PostgresUnavailable as exc:
                print(f"postgresql: skipped ({exc})")
    print()
    for res, target in results:
        _report(res, target)


if __name__ == "__main__":
    main()
