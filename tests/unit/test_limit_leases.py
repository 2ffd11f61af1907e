"""The lease arithmetic (billing/leases.py) and a replica's blocks (gateway/leases.py), without a database: the
grant service runs on an in-memory lease repository (key limits and rpm read no stored usage)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from fractions import Fraction

import pytest

from modelmarket.billing.leases import LeaseAsk, LeaseService, block, room
from modelmarket.billing.ports import StoredLease
from modelmarket.core.errors import QuotaExceeded
from modelmarket.core.uow import Lock
from modelmarket.gateway.leases import DRY_RETRY_S, LeaseBook, Need
from modelmarket.gateway.limits import AccountPolicy, Limiter, LimitSet, SeedUsage
from modelmarket.metering.units import UnitKind

DAY = date(2026, 11, 28)
F = Fraction
HALF = Fraction(1, 2)


def row(replica: str, granted: int, used: int, expires_ms: int) -> StoredLease:
    return StoredLease("key:k", "iu_per_day:image", "2026-11-28", replica, F(granted), F(used), expires_ms)


def test_room_counts_live_leases_whole_and_expired_ones_by_their_use() -> None:
    rows = [row("", 10, 10, 0), row("a", 20, 5, 2000), row("b", 30, 12, 500)]
    assert room(F(100), rows, None, now_ms=1000) == 100 - (10 + 20 + 12)
    assert room(F(100), [*rows, row("c", 4, 9, 2000)], None, now_ms=1000) == 100 - (10 + 20 + 12 + 9)  # overrun
    assert room(F(40), rows, None, now_ms=1000) == 0  # never negative


def test_room_believes_stored_usage_when_it_shows_more() -> None:
    rows = [row("", 10, 10, 0), row("a", 20, 5, 2000), row("dead", 30, 12, 500)]
    # Metered usage 50 (the dead replica used more than it reported): 50 + the live unused 15 > 42 by leases.
    assert room(F(100), rows, F(50), now_ms=1000) == 100 - 65
    assert room(F(100), rows, F(20), now_ms=1000) == 100 - 42


def test_block_is_a_fraction_of_the_limit_whole_for_counted_limits_and_never_below_the_call() -> None:
    assert block(F(97), F(1, 10), F(1), whole=True) == 10
    assert block(F(5), F(1, 10), F(1), whole=True) == 1
    assert block(F(97), F(1, 10), F(30), whole=True) == 30
    assert block(F(41, 2), F(1, 10), F(1, 2), whole=False) == F(41, 20)


class MemoryLeases:
    """The lease rows in memory; ``writes`` counts the store transactions."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str, str], StoredLease] = {}
        self.writes = 0

    def leases_of(self, scope: str, limit: str, window: str) -> list[StoredLease]:
        return [r for k, r in self.rows.items() if k[:3] == (scope, limit, window)]

    def put_lease(self, lease: StoredLease) -> None:
        self.rows[(lease.scope, lease.limit, lease.window, lease.replica)] = lease

    def held(self, replica: str) -> list[StoredLease]:
        return [r for r in self.rows.values() if r.replica == replica]

    def drop_before(self, scope: str, limit: str, window: str) -> int:
        old = [k for k in self.rows if k[:2] == (scope, limit) and k[2] < window]
        for k in old:
            del self.rows[k]
        return len(old)


def service_on(memory: MemoryLeases) -> LeaseService:
    class Uow:
        leases = _RepoView(memory)

    class Store:
        @contextmanager
        def write(self, lock: Lock | None = None, key: str = "") -> Iterator[Uow]:
            memory.writes += 1
            yield Uow()

        read = write

    return LeaseService(Store(), ttl_s=10)  # type: ignore[arg-type]


class _RepoView:
    def __init__(self, memory: MemoryLeases) -> None:
        self.m = memory

    def leases(self, scope: str, limit: str, window: str) -> list[StoredLease]:
        return self.m.leases_of(scope, limit, window)

    def put_lease(self, lease: StoredLease) -> None:
        self.m.put_lease(lease)

    def held(self, replica: str) -> list[StoredLease]:
        return self.m.held(replica)

    def drop_before(self, scope: str, limit: str, window: str) -> int:
        return self.m.drop_before(scope, limit, window)


def ask(want: int, used: int = 0, cap: int = 100) -> LeaseAsk:
    return LeaseAsk("key:k", "iu_per_day:image", "2026-11-28", F(cap), F(want), F(used), DAY)


def test_a_grant_never_passes_the_limit_and_an_expired_lease_is_forfeited() -> None:
    memory = MemoryLeases()
    service = service_on(memory)
    assert service.grant("a", ask(60), now_ms=0) == 60
    assert service.grant("b", ask(60), now_ms=0) == 40  # only what is left
    assert service.grant("b", ask(10, used=40), now_ms=0) == 40  # nothing more
    # "a" dies having reported 0 used: after its TTL (10 s) its 60 come back to "b".
    assert service.grant("b", ask(100, used=40), now_ms=10_001) == 100
    # "a" comes back after its lease expired: it restarts from what it used, and nothing is left.
    assert service.grant("a", ask(5, used=3), now_ms=10_002) == 3


def test_give_back_keeps_only_what_was_used() -> None:
    memory = MemoryLeases()
    service = service_on(memory)
    service.grant("a", ask(50), now_ms=0)
    service.give_back("a", [ask(0, used=7)], now_ms=1)
    assert service.grant("b", ask(100), now_ms=2) == 93


class Now:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


def need(amount: int, limit: str = "iu_per_day:image", cap: int = 100) -> Need:
    return Need("key:k", limit, "2026-11-28", F(cap), F(amount), True, DAY)


def test_take_is_all_or_nothing_and_a_dry_block_is_not_asked_again_at_once() -> None:
    memory, now = MemoryLeases(), Now()
    book = LeaseBook("a", service_on(memory).grant, F(1, 10), now)
    taken, short = book.take([need(5), need(1, "grant:image", cap=0)])
    assert taken == () and short is not None and short.limit == "grant:image"
    (quota,) = [h for h in book.held() if h.limit == "iu_per_day:image"]
    assert quota.used == 0 and quota.granted == 10  # leased, but nothing taken
    writes = memory.writes
    for _ in range(5):  # the grant is dry: refused from memory, no store transaction
        assert book.take([need(1, "grant:image", cap=0)])[1] is not None
    assert memory.writes == writes
    now.ms += int(DRY_RETRY_S * 1000) + 1
    book.take([need(1, "grant:image", cap=0)])
    assert memory.writes == writes + 1


def test_an_older_answer_never_overwrites_a_newer_one() -> None:
    book = LeaseBook("a", lambda replica, ask, now_ms: F(0), F(1, 10), Now())
    book.take([need(0)])
    (held,) = book.held()
    first, _ = book.ask(held, F(10))
    second, _ = book.ask(held, F(10))
    book.apply(held, second, F(20))
    book.apply(held, first, F(10))
    assert held.granted == 20


def limiter_on(memory: MemoryLeases, replica: str, per_day: int, fraction: F = HALF) -> Limiter:
    limiter = Limiter(leases=LeaseBook(replica, service_on(memory).grant, fraction, Now()))
    limits = LimitSet(iu_per_day={UnitKind.TOKENS_1K: F(per_day, 1000)})
    limiter.set_policies({"a1": AccountPolicy("a1", "USD", key_limits={"k": limits})})
    limiter.seed(DAY, "2026-11", {"a1": SeedUsage()})
    return limiter


def admit(limiter: Limiter, tokens: int):  # type: ignore[no-untyped-def]
    return limiter.admit(
        account_id="a1",
        key_id="k",
        unit_kind=UnitKind.TOKENS_1K,
        quantity_iu=F(tokens, 1000),
        price_per_iu=F(0),
        day=DAY,
        period="2026-11",
    )


def test_a_generation_that_outgrows_its_reservation_overshoots_by_its_overrun_only() -> None:
    memory = MemoryLeases()
    a, b = limiter_on(memory, "a", 20), limiter_on(memory, "b", 20)
    a.settle(admit(a, 20), base=25)  # reserved the whole quota, billed 25 tokens: 5 over
    with pytest.raises(QuotaExceeded):
        admit(b, 1)  # the other replica gets nothing
    with pytest.raises(QuotaExceeded):
        admit(a, 1)  # nor does this one
    book = a.leases
    assert book is not None
    (held,) = book.held()
    assert held.used == 25 and held.granted == 20  # the overshoot is exactly that call's overrun
    sent, renewal = book.ask(held, F(0))
    book.apply(held, sent, service_on(memory).renew("a", renewal, now_ms=0))  # the next heartbeat reports it
    (lease,) = memory.held("a")
    assert lease.used == 25 and room(F(20), memory.leases_of(lease.scope, lease.limit, lease.window), None, 0) == 0


def test_a_cancelled_call_gives_its_share_of_the_block_back() -> None:
    memory = MemoryLeases()
    limiter = limiter_on(memory, "a", 10, fraction=F(1))
    limiter.cancel(admit(limiter, 10))
    limiter.settle(admit(limiter, 10))  # the cancelled reservation was released from the block
    with pytest.raises(QuotaExceeded):
        admit(limiter, 1)
