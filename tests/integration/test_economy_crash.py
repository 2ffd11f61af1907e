"""Exactly once over at-least-once: every usage event delivered twice, out of order, to a consumer killed with
SIGKILL mid-run, gives the same usage, ledger and invoices as one clean, ordered delivery.

On the embedded engines whatever the run (`MM_TEST_ENGINES`): the test writes the embedded log's file itself to
deliver events twice and out of order, which no JetStream client can do (JetStream dedups by id); JetStream's own
redelivery and restarts are tested in test_event_log_contract.py and by the chaos drill (tests/e2e/test_chaos.py)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from modelmarket.adapters.bus import SqliteEventLog
from modelmarket.billing.period import Period
from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.settings import Settings

EVENTS = 12_000
JAN = Period(2026, 1)
PLANS = """
plans:
  - {name: pro, kind: subscription, currency: USD, fee: "20.00", included: {image: 3000}}
"""
GRADUATED = (
    "pricing: {unit: image, currency: USD, charge: graduated, "
    "tiers: [{up_to: 5000, price_per_iu: '0.002'}, {price_per_iu: '0.001'}]}"
)


def _platform(home: Path) -> Platform:
    embedded = Settings(home=home, database_url=None, bus_url=None, blob_url=None, bus_partitions=1)
    return bootstrap(embedded, clock=lambda: datetime(2026, 2, 10, tzinfo=UTC))


def _prepare(home: Path, demo_dir: Path) -> tuple[str, str]:
    p = _platform(home)
    provider = p.accounts.create("demo-provider", "provider")
    consumer = p.accounts.create("crash-consumer", "consumer")
    shutil.copytree(demo_dir / "digits", home / "pkg" / "digits")
    p.registry.publish(home / "pkg" / "digits")
    grad = home / "pkg" / "digits-grad"
    shutil.copytree(demo_dir / "digits", grad)
    manifest = (grad / "modelmarket.yaml").read_text()
    manifest = manifest.replace("name: digits", "name: digits-grad")
    manifest = manifest.replace("pricing: {unit: image, price_per_iu: '0.0010', currency: USD}", GRADUATED)
    (grad / "modelmarket.yaml").write_text(manifest)
    p.registry.publish(grad)
    p.plans.apply(PLANS)
    p.plans.subscribe(consumer.id, "pro")  # effective at the pinned clock: 2026-02-10, after January's events
    p.close()
    return provider.id, consumer.id


def _events(provider: str, consumer: str) -> list[UsageEvent]:
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(EVENTS):
        model = "digits" if i % 3 else "digits-grad"
        out.append(
            UsageEvent(
                id=f"evt-{i:06d}",
                source="gateway-1",
                account_id=consumer,
                time=start + timedelta(seconds=i * 200),
                model=model,
                version="1.0.0",
                provider_account_id=provider,
                unit_kind=UnitKind.IMAGE,
                quantity=rng.randint(1, 4),
                unit_price=Decimal("0.0010") if model == "digits" else Decimal("0.002"),
                currency="USD",
                latency_ms=Decimal("1.5"),
            )
        )
    return out


def _state(home: Path, consumer: str, provider: str) -> dict[str, object]:
    p = _platform(home)
    try:
        assert p.metering.halted() is None
        invoices = [
            (i.currency, [(x.type, x.model, x.events, x.quantity_iu, x.amount_exact) for x in i.lines], i.total)
            for i in p.invoices.invoices(consumer, JAN)
        ]
        return {
            "usage": p.usage.summary(consumer, None, None).to_json(),
            "balances": [(b.ledger_account, b.currency, b.exact) for b in p.ledger.balances(consumer)]
            + [(b.ledger_account, b.currency, b.exact) for b in p.ledger.balances(provider)],
            "invoices": invoices,
            "statements": [s.to_json() for s in p.ledger.statements(JAN)],
            "verify": p.ledger.verify().ok,
        }
    finally:
        p.close()


def _applied_offset(home: Path) -> int:
    try:
        with sqlite3.connect(home / "modelmarket.db", timeout=5) as conn:
            row = conn.execute("SELECT log_offset FROM consumer_offsets WHERE consumer = 'metering'").fetchone()
    except sqlite3.OperationalError:
        return 0
    return 0 if row is None else int(row[0])


def test_duplicates_reordering_and_a_sigkill_leave_every_total_unchanged(tmp_path: Path, demo_dir: Path) -> None:
    clean, messy = tmp_path / "clean", tmp_path / "messy"
    provider, consumer = _prepare(clean, demo_dir)
    shutil.copytree(clean, messy)
    events = _events(provider, consumer)

    log = SqliteEventLog(clean / "events.db", "normal")
    log.append_many([(e.id, e.encode()) for e in events])
    log.close()
    reference = _state(clean, consumer, provider)
    assert reference["verify"] is True

    # At-least-once: each event twice (a redelivery is another log record with the same event), shuffled.
    deliveries = [(f"{e.id}/{n}", e.encode()) for e in events for n in (1, 2)]
    random.Random(11).shuffle(deliveries)
    log = SqliteEventLog(messy / "events.db", "normal")
    log.append_many(deliveries)
    total = log.last_offset()
    log.close()

    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMARKET_")}
    env["MODELMARKET_HOME"] = str(messy)
    env["MODELMARKET_METERING_POLL_S"] = "0.01"
    consumer_proc = subprocess.Popen(
        [sys.executable, "-m", "modelmarket.cli.main", "meter"], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while _applied_offset(messy) == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    consumer_proc.send_signal(signal.SIGKILL)  # mid-run: some batches committed, maybe one half-written
    consumer_proc.wait(timeout=30)
    applied = _applied_offset(messy)
    assert 0 < applied < total, f"the consumer was not killed mid-run (applied {applied} of {total})"

    assert _state(messy, consumer, provider) == reference  # reading catches up from where the kill left it

    p = _platform(messy)
    report = p.ledger.rebuild()
    p.close()
    assert report.identical
