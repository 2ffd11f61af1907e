"""Limits shared by gateway replicas through leased blocks, on SQLite and PostgreSQL (docs/scale-out.md, "Limits
across replicas").

Each replica is what a gateway holds: a ``Limiter`` with a ``LeaseBook`` leasing from one store through
``LeaseService`` (the gateway wires exactly these, ``Economy.use_leases``). Calls are spread over two replicas
(and run at once from two threads): the total admitted never passes the limit (the stated overshoot for calls
sized on their inputs is zero), and all of it can be used; a replica that dies holding a block gives its unused
allowance back only when its lease expires; rpm holds per wall-clock minute across replicas.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction

import pytest

from modelmarket.adapters.store import SqlStore
from modelmarket.billing.leases import LeaseService, quota_limit
from modelmarket.core.errors import QuotaExceeded, RateLimited
from modelmarket.gateway.economy import Economy
from modelmarket.gateway.leases import LeaseBook
from modelmarket.gateway.limits import AccountPolicy, Limiter, LimitSet, SeedUsage
from modelmarket.metering.ports import DailyUsage
from modelmarket.metering.units import UnitKind

DAY = date(2026, 11, 28)
PERIOD = "2026-11"
NOW_S = datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC).timestamp()
IMAGE = UnitKind.IMAGE


class Clock:
    """Milliseconds the tests move by hand (lease expiry), shared by the replicas of one test."""

    def __init__(self) -> None:
        self.ms = int(NOW_S * 1000)

    def __call__(self) -> int:
        return self.ms


def replica(
    store: SqlStore, name: str, policy: AccountPolicy, clock: Callable[[], int], ttl_s: float = 30.0
) -> tuple[Limiter, LeaseService]:
    service = LeaseService(store, ttl_s)
    limiter = Limiter(leases=LeaseBook(name, service.grant, Fraction(1, 10), clock))
    limiter.set_policies({policy.account_id: policy})
    limiter.seed(DAY, PERIOD, {policy.account_id: SeedUsage()})
    return limiter, service


def call(limiter: Limiter, account: str, price: Fraction = Fraction(0), images: int = 1) -> None:
    ticket = limiter.admit(
        account_id=account,
        key_id="k1",
        unit_kind=IMAGE,
        quantity_iu=Fraction(images),
        price_per_iu=price,
        day=DAY,
        period=PERIOD,
        now_s=NOW_S,
    )
    limiter.settle(ticket)


def until_refused(limiter: Limiter, account: str, price: Fraction = Fraction(0), most: int = 10_000) -> int:
    for n in range(most):
        try:
            call(limiter, account, price)
        except QuotaExceeded:
            return n
    raise AssertionError(f"{most} calls admitted: the limit does not hold")


def spread(limiters: list[Limiter], account: str, price: Fraction = Fraction(0)) -> list[int]:
    """Every replica admits calls from its own thread, all at once, until one is refused."""
    counts = [0] * len(limiters)
    start = threading.Barrier(len(limiters))

    def run(i: int) -> None:
        start.wait()
        counts[i] = until_refused(limiters[i], account, price)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(limiters))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return counts


def round_robin(limiters: list[Limiter], account: str) -> list[int]:
    """Calls spread over the replicas in turn until every one is refused."""
    counts, refused = [0] * len(limiters), [False] * len(limiters)
    while not all(refused):
        for i, limiter in enumerate(limiters):
            try:
                call(limiter, account)
                counts[i] += 1
            except QuotaExceeded:
                refused[i] = True
    return counts


def test_a_daily_quota_holds_exactly_across_two_replicas(store: SqlStore) -> None:
    policy = AccountPolicy("acct_q", "USD", limits=LimitSet(iu_per_day={IMAGE: Fraction(97)}))
    clock = Clock()
    a, b = (replica(store, name, policy, clock)[0] for name in ("gw-a", "gw-b"))
    counts = round_robin([a, b], "acct_q")
    assert sum(counts) == 97  # never more (overshoot 0 for calls sized on their inputs), and all of it usable
    assert abs(counts[0] - counts[1]) <= 10  # both served, within a block of each other
    with pytest.raises(QuotaExceeded) as refused:  # a third replica finds nothing left
        call(replica(store, "gw-c", policy, clock)[0], "acct_q")
    assert refused.value.limit == "iu_per_day" and "used or held by the gateways" in str(refused.value)


def test_replicas_leasing_at_once_never_pass_the_quota(store: SqlStore) -> None:
    policy = AccountPolicy("acct_race", "USD", limits=LimitSet(iu_per_day={IMAGE: Fraction(200)}))
    clock = Clock()
    limiters = [replica(store, f"gw-{i}", policy, clock)[0] for i in range(3)]
    assert sum(spread(limiters, "acct_race")) == 200  # each grant checked under the lock, one after the other


def test_a_budget_and_a_free_grant_hold_across_two_replicas(store: SqlStore) -> None:
    budget = AccountPolicy("acct_b", "USD", limits=LimitSet(budget=Decimal("20.50")))
    clock = Clock()
    limiters = [replica(store, name, budget, clock)[0] for name in ("gw-a", "gw-b")]
    counts = spread(limiters, "acct_b", price=Fraction(1, 2))  # 0.50 USD a call: 41 calls fit in 20.50
    # Never more than 41; a replica may strand less than one call's cost in its last block (blocks of 2.05 USD).
    assert 40 <= sum(counts) <= 41
    free = AccountPolicy("acct_f", "USD", grant={IMAGE: Fraction(33)}, hard_cap_grant=True)
    limiters = [replica(store, name, free, clock)[0] for name in ("gw-a", "gw-b")]
    assert sum(spread(limiters, "acct_f")) == 33


def test_a_dead_replicas_unused_allowance_comes_back_after_the_ttl(store: SqlStore) -> None:
    policy = AccountPolicy("acct_d", "USD", limits=LimitSet(iu_per_day={IMAGE: Fraction(100)}))
    clock = Clock()
    dead, dead_service = replica(store, "gw-dead", policy, clock, ttl_s=5)
    for _ in range(3):
        call(dead, "acct_d")  # leases a block of 10, uses 3
    book = dead.leases
    assert book is not None
    (held,) = book.held()
    sent, ask = book.ask(held, Fraction(0))
    book.apply(held, sent, dead_service.renew(book.replica, ask, clock()))  # its last heartbeat: 3 used
    # ... and it is killed: no give-back. Its block (7 unused) stays held until the lease expires.
    alive, _ = replica(store, "gw-alive", policy, clock, ttl_s=5)
    assert until_refused(alive, "acct_d") == 90
    clock.ms += 5_001  # past the TTL: the dead replica's 7 unused images come back
    assert until_refused(alive, "acct_d") == 7


def test_a_stopping_gateway_gives_its_unused_blocks_back(store: SqlStore) -> None:
    policy = AccountPolicy("acct_g", "USD", limits=LimitSet(iu_per_day={IMAGE: Fraction(50)}))

    async def serve_and_stop() -> None:
        economy = Economy(lambda at: {}, lambda ids, day, cur: {}, None, lambda: datetime.now(UTC), 60.0)
        economy.use_leases(LeaseService(store, 30.0), "gw-stopping", Fraction(1, 10))
        economy.limiter.set_policies({"acct_g": policy})
        economy.limiter.seed(DAY, PERIOD, {"acct_g": SeedUsage()})
        call(economy.limiter, "acct_g")  # leases 5, uses 1
        await economy.stop()

    asyncio.run(serve_and_stop())
    other, _ = replica(store, "gw-other", policy, Clock())
    assert until_refused(other, "acct_g") == 49  # 4 given back at stop, not held until the TTL


def test_rpm_holds_per_minute_across_replicas(store: SqlStore) -> None:
    policy = AccountPolicy("acct_r", "USD", limits=LimitSet(rpm=12))
    clock = Clock()
    a, b = (replica(store, name, policy, clock)[0] for name in ("gw-a", "gw-b"))
    admitted = 0
    for _ in range(10):
        for limiter in (a, b):
            try:
                call(limiter, "acct_r")
                admitted += 1
            except RateLimited as exc:
                assert exc.scope == "account" and 0 < exc.retry_after_s <= 60
    assert admitted == 12  # one wall-clock minute: never more than rpm across the replicas


def test_lease_rows_of_past_windows_are_dropped(store: SqlStore) -> None:
    service = LeaseService(store, 30.0)
    policy = AccountPolicy("acct_w", "USD", limits=LimitSet(iu_per_day={IMAGE: Fraction(10)}))
    clock = Clock()
    call(replica(store, "gw-a", policy, clock)[0], "acct_w")
    with store.read() as uow:
        assert {r.window for r in uow.leases.leases("account:acct_w", quota_limit(IMAGE), DAY.isoformat())} == {
            DAY.isoformat()
        }
    with store.write() as uow:
        assert uow.leases.drop_before("account:acct_w", quota_limit(IMAGE), "2026-11-29") == 2  # baseline + lease
    assert service.held("gw-a") == []


def meter(store: SqlStore, account: str, images: int) -> None:
    """Usage as the metering consumer stores it (the daily row of the account's calls, ``images`` in all)."""
    row = DailyUsage(account, "digits", DAY.isoformat(), IMAGE, "USD", images, images, Decimal(images))
    with store.write() as uow:
        uow.usage.put_daily([row], set(uow.usage.daily([row.key])))


def test_stored_usage_counts_as_the_baseline_and_covers_a_dead_replicas_unreported_calls(store: SqlStore) -> None:
    policy = AccountPolicy("acct_m", "USD", limits=LimitSet(iu_per_day={IMAGE: Fraction(100)}))
    meter(store, "acct_m", 30)  # used before any lease (one gateway, or leasing turned on mid-day)
    clock = Clock()
    dead, _ = replica(store, "gw-dead", policy, clock, ttl_s=5)
    for _ in range(4):
        call(dead, "acct_m")  # leases 10 (reporting 0 used), uses 4, dies before any heartbeat
    meter(store, "acct_m", 34)  # ... and its 4 calls are metered: 34 stored in all
    alive, _ = replica(store, "gw-alive", policy, clock, ttl_s=5)
    assert until_refused(alive, "acct_m") == 60  # 100 - 30 stored before - the dead replica's block of 10
    meter(store, "acct_m", 94)  # the live replica's 60 calls are metered too
    clock.ms += 5_001  # the dead lease expired: it reported 0 used, but the store shows its 4 calls
    admitted = 0
    while True:  # metering keeps up with the live replica (each call stored before the next)
        try:
            call(alive, "acct_m")
        except QuotaExceeded:
            break
        admitted += 1
        meter(store, "acct_m", 94 + admitted)
    assert admitted == 6  # 100 - 94: no overshoot


def test_a_gateway_prefetches_off_the_hot_path_renews_and_gives_idle_blocks_back(store: SqlStore) -> None:
    policy = AccountPolicy("acct_p", "USD", limits=LimitSet(iu_per_day={IMAGE: Fraction(100)}))
    service = LeaseService(store, 30.0)

    async def serve() -> None:
        economy = Economy(lambda at: {}, lambda ids, day, cur: {}, None, lambda: datetime.now(UTC), 60.0)
        book = economy.use_leases(service, "gw-p", Fraction(1, 10))
        economy.limiter.set_policies({"acct_p": policy})
        economy.limiter.seed(DAY, PERIOD, {"acct_p": SeedUsage()})
        for _ in range(6):  # a block of 10; below half of it left, the next is leased in the background
            call(economy.limiter, "acct_p")
        (held,) = book.held()
        for _ in range(500):
            if not held.pending:
                break
            await asyncio.sleep(0.01)
        assert (held.granted, held.used) == (20, 6)
        await economy.heartbeat()  # renews: the block was used since the last one
        (row,) = service.held("gw-p")
        assert (row.granted, row.used) == (20, 6)
        await economy.heartbeat()  # no call since: the block goes back
        (row,) = service.held("gw-p")
        assert (row.granted, row.used) == (6, 6) and book.held() == []
        await economy.stop()

    asyncio.run(serve())
