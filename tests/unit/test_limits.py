"""The gateway's in-memory limiter: rpm windows, daily IU quotas, monthly budgets, free-plan grants, and the body
and headers the edge answers a refusal with."""

from __future__ import annotations

import contextlib
from datetime import date
from decimal import Decimal
from fractions import Fraction

import orjson
import pytest

from modelmarket.core.errors import InvariantViolated, QuotaExceeded, RateLimited
from modelmarket.gateway.errors import extra_fields_for, headers_for, message_for, status_for
from modelmarket.gateway.limits import AccountPolicy, Limiter, LimitSet, SeedUsage, Ticket, Usage
from modelmarket.metering.units import UnitKind

IMAGE, TOKENS, AUDIO = UnitKind.IMAGE, UnitKind.TOKENS_1K, UnitKind.AUDIO_MINUTE
DAY = date(2024, 5, 14)
PERIOD = "2024-05"
ONE = Fraction(1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter_with(*policies: AccountPolicy) -> tuple[Limiter, FakeClock]:
    clock = FakeClock()
    limiter = Limiter(monotonic=clock)
    limiter.set_policies({p.account_id: p for p in policies})
    limiter.seed(DAY, PERIOD, {p.account_id: SeedUsage() for p in policies})
    return limiter, clock


def admit(
    limiter: Limiter,
    account_id: str = "acc",
    key_id: str | None = "key",
    kind: UnitKind = IMAGE,
    iu: Fraction = ONE,
    price: Fraction = Fraction(0),
    day: date = DAY,
    period: str = PERIOD,
) -> Ticket:
    return limiter.admit(
        account_id=account_id,
        key_id=key_id,
        unit_kind=kind,
        quantity_iu=iu,
        price_per_iu=price,
        day=day,
        period=period,
    )


def body_of(exc: Exception) -> dict[str, object]:
    """The JSON body the gateway's error path writes (app.py: ``{"error": message_for, **extra_fields_for}``)."""
    decoded: dict[str, object] = orjson.loads(orjson.dumps({"error": message_for(exc), **extra_fields_for(exc)}))
    return decoded


# -- requests per minute -------------------------------------------------------------------------------------


def test_rpm_admits_r_calls_then_refuses_the_next_with_the_wait_until_the_oldest_leaves() -> None:
    limiter, clock = limiter_with(AccountPolicy("acc", "USD", key_limits={"key": LimitSet(rpm=5)}))
    for i in range(5):
        clock.now = 1000.0 + i
        admit(limiter)
    clock.now = 1004.5
    with pytest.raises(RateLimited) as refused:
        admit(limiter)
    exc = refused.value
    assert (exc.limit, exc.scope, exc.allowed) == ("rpm", "key", 5)
    assert exc.retry_after_s == pytest.approx(55.5)  # the admission at 1000.0 leaves the window at 1060.0
    assert exc.retry_after_whole_s == 56
    assert "5 requests per minute" in exc.message and "rpm" in exc.message and "retry in 56 s" in exc.message


def test_the_window_slides_and_a_refused_call_takes_no_slot() -> None:
    limiter, clock = limiter_with(AccountPolicy("acc", "USD", limits=LimitSet(rpm=2)))
    clock.now = 0.0
    admit(limiter)
    clock.now = 30.0
    admit(limiter)
    clock.now = 45.0
    with pytest.raises(RateLimited) as refused:
        admit(limiter)
    assert refused.value.retry_after_s == pytest.approx(15.0)
    assert refused.value.scope == "account"
    clock.now = 60.0  # the call at 0.0 has left the (now - 60, now] window; the refusal at 45 did not count
    admit(limiter)
    clock.now = 60.5
    with pytest.raises(RateLimited) as refused:
        admit(limiter)
    assert refused.value.retry_after_s == pytest.approx(29.5)  # the call at 30.0 leaves at 90.0
    assert refused.value.retry_after_whole_s == 30
    clock.now = 90.0
    admit(limiter)


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    limiter, clock = limiter_with(AccountPolicy("acc", "USD", limits=LimitSet(rpm=1)))
    clock.now = 0.0
    admit(limiter)
    clock.now = 59.9999
    with pytest.raises(RateLimited) as refused:
        admit(limiter)
    assert refused.value.retry_after_whole_s == 1
    assert headers_for(refused.value) == [(b"retry-after", b"1")]


def test_key_limits_apply_first_then_the_account_limits_across_keys() -> None:
    policy = AccountPolicy(
        "acc", "USD", limits=LimitSet(rpm=3), key_limits={"a": LimitSet(rpm=2), "b": LimitSet(rpm=5)}
    )
    limiter, _ = limiter_with(policy)
    admit(limiter, key_id="a")
    admit(limiter, key_id="a")
    with pytest.raises(RateLimited) as refused:
        admit(limiter, key_id="a")
    assert (refused.value.scope, refused.value.allowed) == ("key", 2)
    assert "this API key allows 2" in refused.value.message
    admit(limiter, key_id="b")  # key a's refusal took no account slot: this is the account's third call
    for key_id in ("b", "c", None):  # b is under its own 5; an unlimited key and no key share the account's 3
        with pytest.raises(RateLimited) as refused:
            admit(limiter, key_id=key_id)
        assert (refused.value.scope, refused.value.allowed) == ("account", 3)
        assert "this account allows 3" in refused.value.message


def test_a_cancelled_call_keeps_its_rpm_slot() -> None:
    limiter, _ = limiter_with(AccountPolicy("acc", "USD", limits=LimitSet(rpm=1)))
    limiter.cancel(admit(limiter))
    with pytest.raises(RateLimited):
        admit(limiter)


def test_rpm_windows_hold_at_most_rpm_entries() -> None:
    limiter, clock = limiter_with(AccountPolicy("acc", "USD", limits=LimitSet(rpm=3)))
    for i in range(1000):
        clock.now = float(i) * 21  # three calls per minute at most, each admitted
        limiter.settle(admit(limiter))
    account = limiter._accounts["acc"]
    assert len(account.window) <= 3 and account.window.maxlen == 3


# -- free-plan grants ------------------------------------------------------------------------------------------


def free_plan(images: int = 3) -> AccountPolicy:
    return AccountPolicy("acc", "USD", grant={IMAGE: Fraction(images)}, hard_cap_grant=True)


def test_a_grant_of_n_images_admits_n_then_refuses_with_the_fields() -> None:
    limiter, _ = limiter_with(free_plan(100))
    for _ in range(100):
        limiter.settle(admit(limiter))
    with pytest.raises(QuotaExceeded) as refused:
        admit(limiter)
    exc = refused.value
    assert status_for(exc) == 402
    assert headers_for(exc) == []
    body = body_of(exc)
    assert body == {
        "error": exc.message,
        "limit": "grant",
        "scope": "account",
        "unit_kind": "image",
        "allowed": "100",
        "used": "100",
    }
    assert "grants 100 IU of image per month (grant)" in exc.message
    assert "100 used this month" in exc.message and "upgrade the plan" in exc.message


def test_a_hard_capped_plan_without_a_grant_for_a_unit_kind_refuses_it_and_says_so() -> None:
    limiter, _ = limiter_with(free_plan(3))
    with pytest.raises(QuotaExceeded) as refused:
        admit(limiter, kind=AUDIO, iu=Fraction(1, 60))
    assert "grants no IU of audio_minute (a grant of 0 per month)" in refused.value.message
    assert body_of(refused.value) | {"error": ""} == {
        "error": "",
        "limit": "grant",
        "scope": "account",
        "unit_kind": "audio_minute",
        "allowed": "0",
        "used": "0",
    }


def test_a_call_that_reaches_the_grant_exactly_is_admitted_and_fractional_iu_count_exactly() -> None:
    policy = AccountPolicy("acc", "USD", grant={TOKENS: Fraction(1)}, hard_cap_grant=True)
    limiter, _ = limiter_with(policy)
    admit(limiter, kind=TOKENS, iu=Fraction(999, 1000))
    admit(limiter, kind=TOKENS, iu=Fraction(1, 1000))  # exactly 1 IU: allowed
    with pytest.raises(QuotaExceeded) as refused:
        admit(limiter, kind=TOKENS, iu=Fraction(1, 1000))
    assert (refused.value.allowed, refused.value.used) == ("1", "1")
    assert limiter.usage("acc") == Usage({TOKENS: ONE}, {TOKENS: ONE}, Fraction(0))


def test_cancel_releases_the_reservation() -> None:
    limiter, _ = limiter_with(free_plan(2))
    first = admit(limiter)
    admit(limiter)
    with pytest.raises(QuotaExceeded):
        admit(limiter)
    limiter.cancel(first)
    usage = limiter.usage("acc")
    assert usage is not None and usage.iu_period == {IMAGE: ONE}
    admit(limiter)
    with pytest.raises(QuotaExceeded):
        admit(limiter)


def test_calls_in_flight_together_never_pass_the_grant() -> None:
    limiter, _ = limiter_with(free_plan(10))
    tickets, refused = [], 0
    for _ in range(50):  # fifty concurrent calls: all admitted or refused before any of them settles
        try:
            tickets.append(admit(limiter, iu=Fraction(3)))
        except QuotaExceeded:
            refused += 1
    assert (len(tickets), refused) == (3, 47)  # 9 images reserved; a fourth call of 3 would make 12 > 10
    limiter.cancel(tickets[0])
    limiter.settle(tickets[1])
    limiter.settle(tickets[2])
    limiter.settle(admit(limiter, iu=Fraction(3)))  # the cancelled call's images are free again
    usage = limiter.usage("acc")
    assert usage is not None and usage.iu_period == {IMAGE: Fraction(9)}


def test_a_ticket_is_settled_or_cancelled_once() -> None:
    limiter, _ = limiter_with(free_plan(5))
    ticket = admit(limiter)
    limiter.settle(ticket)
    with pytest.raises(InvariantViolated):
        limiter.cancel(ticket)
    with pytest.raises(InvariantViolated):
        limiter.settle(ticket)


# -- daily quotas ----------------------------------------------------------------------------------------------


def test_iu_per_day_refuses_past_the_quota_and_resets_the_next_day() -> None:
    policy = AccountPolicy("acc", "EUR", key_limits={"key": LimitSet(iu_per_day={TOKENS: Fraction(2)})})
    limiter, _ = limiter_with(policy)
    limiter.settle(admit(limiter, kind=TOKENS, iu=Fraction(3, 2)))
    with pytest.raises(QuotaExceeded) as refused:
        admit(limiter, kind=TOKENS, iu=Fraction(3, 4))
    exc = refused.value
    assert body_of(exc) == {
        "error": exc.message,
        "limit": "iu_per_day",
        "scope": "key",
        "unit_kind": "tokens_1k",
        "allowed": "2",
        "used": "1.5",
    }
    assert "this API key allows 2 IU of tokens_1k per day (iu_per_day)" in exc.message
    assert "this call needs 0.75" in exc.message and "00:00 UTC" in exc.message
    admit(limiter, kind=TOKENS, iu=Fraction(1, 2))  # reaches 2 exactly: allowed
    admit(limiter, kind=IMAGE, iu=Fraction(100))  # another unit kind has no daily quota
    admit(limiter, key_id="other", kind=TOKENS, iu=Fraction(5))  # another key has none either
    next_day = date(2024, 5, 15)
    admit(limiter, kind=TOKENS, iu=Fraction(2), day=next_day)
    with pytest.raises(QuotaExceeded):
        admit(limiter, kind=TOKENS, iu=Fraction(1, 1000), day=next_day)
    with pytest.raises(QuotaExceeded):  # a late call stamped with the old day counts on the current one
        admit(limiter, kind=TOKENS, iu=Fraction(1, 1000), day=DAY)


def test_a_call_admitted_before_midnight_and_cancelled_after_does_not_touch_the_new_day() -> None:
    policy = AccountPolicy("acc", "USD", limits=LimitSet(iu_per_day={IMAGE: Fraction(2)}))
    limiter, _ = limiter_with(policy)
    late = admit(limiter, iu=Fraction(2))
    next_day = date(2024, 5, 15)
    admit(limiter, iu=Fraction(2), day=next_day)
    limiter.cancel(late)
    with pytest.raises(QuotaExceeded):
        admit(limiter, day=next_day)
    usage = limiter.usage("acc")
    assert usage is not None and usage.iu_today == {IMAGE: Fraction(2)}
    assert usage.iu_period == {IMAGE: Fraction(2)}  # same month: the cancel released its month IU


def test_the_grant_resets_with_the_period() -> None:
    limiter, _ = limiter_with(free_plan(1))
    admit(limiter)
    with pytest.raises(QuotaExceeded):
        admit(limiter, day=date(2024, 5, 31))
    admit(limiter, day=date(2024, 6, 1), period="2024-06")


# -- budgets ---------------------------------------------------------------------------------------------------


def test_budget_counts_only_the_iu_beyond_the_included_ones_and_allows_reaching_it_exactly() -> None:
    policy = AccountPolicy("acc", "EUR", included={IMAGE: Fraction(100)}, limits=LimitSet(budget=Decimal("0.50")))
    limiter, _ = limiter_with(policy)
    cent = Fraction(1, 100)
    for _ in range(98):
        assert admit(limiter, price=cent).cost == 0
    straddling = admit(limiter, iu=Fraction(3), price=cent)  # 2 images left included: 1 is paid
    assert straddling.cost == cent
    for _ in range(49):
        assert admit(limiter, price=cent).cost == cent
    with pytest.raises(QuotaExceeded) as refused:  # 0.50 spent exactly, allowed; one more cent is not
        admit(limiter, price=cent)
    exc = refused.value
    assert body_of(exc) == {
        "error": exc.message,
        "limit": "budget",
        "scope": "account",
        "currency": "EUR",
        "allowed": "0.50",
        "used": "0.50",
    }
    assert "budget of 0.50 EUR per month (budget)" in exc.message
    assert "0.50 EUR spent this month" in exc.message and "would cost 0.01 EUR" in exc.message
    admit(limiter, price=Fraction(0))  # a free model spends nothing: still admitted
    admit(limiter, kind=TOKENS, iu=Fraction(1), price=Fraction(0))


def test_concurrent_calls_never_pass_the_budget_and_cancel_gives_the_money_back() -> None:
    policy = AccountPolicy("acc", "USD", limits=LimitSet(budget=Decimal("1")))
    limiter, _ = limiter_with(policy)
    price = Fraction(3, 10)
    tickets = []
    for _ in range(20):
        with contextlib.suppress(QuotaExceeded):
            tickets.append(admit(limiter, price=price))
    assert len(tickets) == 3  # 0.9 reserved; a fourth 0.3 would make 1.2
    limiter.cancel(tickets[0])
    usage = limiter.usage("acc")
    assert usage is not None and usage.spend_period == Fraction(6, 10)
    admit(limiter, price=price)
    with pytest.raises(QuotaExceeded):
        admit(limiter, price=price)


def test_a_key_budget_applies_to_that_key_and_the_cost_below_a_cent_is_said_plainly() -> None:
    policy = AccountPolicy("acc", "USD", key_limits={"key": LimitSet(budget=Decimal("0.01"))})
    limiter, _ = limiter_with(policy)
    tiny = Fraction(1, 1000)
    for _ in range(10):
        admit(limiter, price=tiny)
    with pytest.raises(QuotaExceeded) as refused:
        admit(limiter, price=tiny)
    assert refused.value.scope == "key" and "this API key has a budget of 0.01 USD" in refused.value.message
    assert "would cost less than 0.01 USD" in refused.value.message
    admit(limiter, key_id="other", price=tiny)


def test_the_grant_of_a_plan_that_is_not_hard_capped_is_free_for_the_budget() -> None:
    policy = AccountPolicy("acc", "USD", grant={IMAGE: Fraction(1)}, limits=LimitSet(budget=Decimal("1")))
    limiter, _ = limiter_with(policy)
    assert admit(limiter, price=ONE).cost == 0
    assert admit(limiter, price=ONE).cost == 1
    with pytest.raises(QuotaExceeded):
        admit(limiter, price=ONE)


def test_cost_of_prices_the_billable_iu_of_the_call_that_crosses_the_included_ones() -> None:
    policy = AccountPolicy("acc", "USD", included={IMAGE: Fraction(1000)}, limits=LimitSet(budget=Decimal("1")))
    limiter, _ = limiter_with(policy)
    priced: list[Fraction] = []

    def package(billable: Fraction) -> Fraction:  # each started block of 1000 IU costs 0.05
        priced.append(billable)
        return -(-billable // 1000) * Fraction(5, 100)

    ticket = limiter.admit(
        account_id="acc",
        key_id=None,
        unit_kind=IMAGE,
        quantity_iu=Fraction(1001),
        price_per_iu=Fraction(0),
        cost_of=package,
        day=DAY,
        period=PERIOD,
    )
    assert ticket.cost == Fraction(5, 100)  # 1 image past the 1000 included starts a block
    assert priced == [ONE]
    free = limiter.admit(
        account_id="other", key_id=None, unit_kind=IMAGE, quantity_iu=ONE, price_per_iu=ONE, day=DAY, period=PERIOD
    )
    assert free.cost == 0  # not held: the fast path


def test_cost_of_is_not_asked_within_the_free_iu() -> None:
    policy = AccountPolicy("acc", "USD", included={IMAGE: Fraction(10)}, limits=LimitSet(budget=Decimal("1")))
    limiter, _ = limiter_with(policy)

    def refuse(billable: Fraction) -> Fraction:
        raise AssertionError(f"priced {billable} billable IU within the included ones")

    ticket = limiter.admit(
        account_id="acc",
        key_id=None,
        unit_kind=IMAGE,
        quantity_iu=Fraction(10),
        price_per_iu=ONE,
        cost_of=refuse,
        day=DAY,
        period=PERIOD,
    )
    assert ticket.cost == 0


# -- seed, policies, memory ------------------------------------------------------------------------------------


def test_seed_restores_the_counters_after_a_restart() -> None:
    policy = AccountPolicy(
        "acc",
        "USD",
        grant={IMAGE: Fraction(10)},
        hard_cap_grant=True,
        key_limits={"key": LimitSet(iu_per_day={IMAGE: Fraction(5)})},
    )
    limiter = Limiter(monotonic=FakeClock())
    assert limiter.set_policies({"acc": policy}) == {"acc"}  # nothing counted yet: seed it
    stored = Usage(iu_today={IMAGE: Fraction(4)}, iu_period={IMAGE: Fraction(9)})
    limiter.seed(DAY, PERIOD, {"acc": SeedUsage(account=stored, keys={"key": Usage(iu_today={IMAGE: Fraction(4)})})})
    assert limiter.set_policies({"acc": policy}) == frozenset()
    admit(limiter)  # the key's 5th image today, the account's 10th this month
    with pytest.raises(QuotaExceeded) as refused:
        admit(limiter, key_id="other")
    assert (refused.value.limit, refused.value.used) == ("grant", "10")
    assert limiter.usage("acc", "key") == Usage({IMAGE: Fraction(5)}, {IMAGE: Fraction(1)}, Fraction(0))


def test_seed_before_the_policies_is_kept_for_accounts_that_get_one() -> None:
    limiter = Limiter(monotonic=FakeClock())
    limiter.seed(DAY, PERIOD, {"acc": SeedUsage(Usage(iu_period={IMAGE: Fraction(3)})), "gone": SeedUsage()})
    assert limiter.set_policies({"acc": free_plan(3)}) == frozenset()
    assert limiter.held_accounts() == {"acc"}
    with pytest.raises(QuotaExceeded):
        admit(limiter)


def test_set_policies_keeps_counters_and_rpm_windows() -> None:
    limiter, _ = limiter_with(
        AccountPolicy("acc", "USD", limits=LimitSet(rpm=3), grant={IMAGE: Fraction(5)}, hard_cap_grant=True)
    )
    for _ in range(3):
        admit(limiter)
    looser = AccountPolicy("acc", "USD", limits=LimitSet(rpm=4), grant={IMAGE: Fraction(5)}, hard_cap_grant=True)
    assert limiter.set_policies({"acc": looser}) == frozenset()
    admit(limiter)  # the 4th call this minute, the 4th image
    with pytest.raises(RateLimited):
        admit(limiter)
    tighter = AccountPolicy("acc", "USD", limits=LimitSet(rpm=2), grant={IMAGE: Fraction(4)}, hard_cap_grant=True)
    limiter.set_policies({"acc": tighter})
    with pytest.raises(RateLimited) as refused:  # the window kept its newest 2 admissions
        admit(limiter)
    assert refused.value.allowed == 2
    limiter.set_policies({"acc": AccountPolicy("acc", "USD", grant={IMAGE: Fraction(4)}, hard_cap_grant=True)})
    with pytest.raises(QuotaExceeded):  # no rpm any more; the 4 images counted are kept
        admit(limiter)


def test_the_fast_path_counts_nothing_and_a_later_limit_asks_for_a_seed() -> None:
    limiter, _ = limiter_with(AccountPolicy("acc", "USD"))
    ticket = admit(limiter, iu=Fraction(1000), price=ONE)
    assert (ticket.base, ticket.cost) == (0, Fraction(0))
    limiter.settle(ticket)
    limiter.cancel(ticket)  # the shared uncounted ticket: nothing to release, never an error
    limited = AccountPolicy("acc", "USD", limits=LimitSet(budget=Decimal("5")))
    assert limiter.set_policies({"acc": limited}) == {"acc"}  # its usage went uncounted
    limiter.seed(DAY, PERIOD, {"acc": SeedUsage(Usage(spend_period=Fraction(5)))})
    with pytest.raises(QuotaExceeded):
        admit(limiter, price=ONE)


def test_a_key_newly_given_a_quota_asks_for_a_seed_but_a_new_rpm_does_not() -> None:
    limiter, _ = limiter_with(AccountPolicy("acc", "USD", limits=LimitSet(rpm=100)))
    with_rpm = AccountPolicy("acc", "USD", limits=LimitSet(rpm=100), key_limits={"key": LimitSet(rpm=9)})
    assert limiter.set_policies({"acc": with_rpm}) == frozenset()
    with_quota = AccountPolicy("acc", "USD", key_limits={"key": LimitSet(iu_per_day={IMAGE: Fraction(9)})})
    assert limiter.set_policies({"acc": with_quota}) == {"acc"}


def test_a_quota_on_a_new_key_keeps_the_other_keys_the_accounts_counters_and_calls_in_flight() -> None:
    k1 = LimitSet(iu_per_day={IMAGE: Fraction(500)})
    before = AccountPolicy("acc", "USD", limits=LimitSet(iu_per_day={IMAGE: Fraction(10_000)}), key_limits={"k1": k1})
    limiter, _ = limiter_with(before)
    limiter.settle(admit(limiter, key_id="k1", iu=Fraction(480)))
    in_flight = admit(limiter, key_id="k1", iu=Fraction(10))
    k2 = LimitSet(iu_per_day={IMAGE: Fraction(5)})
    after = AccountPolicy("acc", "USD", limits=before.limits, key_limits={"k1": k1, "k2": k2})
    assert limiter.set_policies({"acc": after}) == {"acc"}  # k2's counters miss (stored) usage
    admit(limiter, key_id="k2", iu=Fraction(2))  # admitted while the caller loads the stored usage
    stored = Usage({IMAGE: Fraction(480)}, {IMAGE: Fraction(480)})  # per account: the settled 480, nothing else
    limiter.seed(DAY, PERIOD, {"acc": SeedUsage(stored)})
    assert limiter.usage("acc", "k1") == Usage({IMAGE: Fraction(490)}, {IMAGE: Fraction(490)})  # kept
    assert limiter.usage("acc") == Usage({IMAGE: Fraction(492)}, {IMAGE: Fraction(492)})  # kept, not reseeded
    assert limiter.usage("acc", "k2") == Usage({IMAGE: Fraction(2)}, {IMAGE: Fraction(2)})  # new: from 0
    with pytest.raises(QuotaExceeded) as refused:
        admit(limiter, key_id="k1", iu=Fraction(11))
    assert (refused.value.scope, refused.value.used) == ("key", "490")
    limiter.cancel(in_flight)  # releases exactly what it reserved
    assert limiter.usage("acc", "k1") == Usage({IMAGE: Fraction(480)}, {IMAGE: Fraction(480)})
    assert limiter.usage("acc") == Usage({IMAGE: Fraction(482)}, {IMAGE: Fraction(482)})


def test_calls_admitted_between_set_policies_and_seed_are_added_to_the_stored_usage() -> None:
    policy = AccountPolicy(
        "acc",
        "USD",
        limits=LimitSet(iu_per_day={IMAGE: Fraction(10)}, budget=Decimal("10")),
        key_limits={"key": LimitSet(iu_per_day={IMAGE: Fraction(5)})},
    )
    limiter = Limiter(monotonic=FakeClock())
    assert limiter.set_policies({"acc": policy}) == {"acc"}
    in_flight = admit(limiter, iu=Fraction(2), price=ONE)
    assert limiter.set_policies({"acc": policy}) == {"acc"}  # a second reload before the seed: still counting
    stored = Usage({IMAGE: Fraction(7)}, {IMAGE: Fraction(7)}, Fraction(3))
    limiter.seed(DAY, PERIOD, {"acc": SeedUsage(stored, {"key": Usage({IMAGE: Fraction(1)}, {IMAGE: Fraction(1)})})})
    assert limiter.set_policies({"acc": policy}) == frozenset()
    assert limiter.usage("acc") == Usage({IMAGE: Fraction(9)}, {IMAGE: Fraction(9)}, Fraction(5))
    assert limiter.usage("acc", "key") == Usage({IMAGE: Fraction(3)}, {IMAGE: Fraction(3)}, Fraction(2))
    limiter.cancel(in_flight)
    assert limiter.usage("acc") == Usage({IMAGE: Fraction(7)}, {IMAGE: Fraction(7)}, Fraction(3))
    admit(limiter, key_id=None, iu=Fraction(3))  # reaches 10 today exactly
    with pytest.raises(QuotaExceeded):
        admit(limiter, key_id=None)


def test_a_seed_for_a_later_day_drops_the_days_counted_before_it() -> None:
    policy = AccountPolicy("acc", "USD", limits=LimitSet(iu_per_day={IMAGE: Fraction(10)}))
    limiter = Limiter(monotonic=FakeClock())
    limiter.set_policies({"acc": policy})
    admit(limiter, iu=Fraction(4))  # stamped DAY; the stored usage was read on the next day
    next_day = date(2024, 5, 15)
    limiter.seed(next_day, PERIOD, {"acc": SeedUsage(Usage({IMAGE: Fraction(1)}, {IMAGE: Fraction(6)}))})
    assert limiter.usage("acc") == Usage({IMAGE: Fraction(1)}, {IMAGE: Fraction(10)})


def test_counters_that_missed_fast_path_calls_restart_from_the_seed_not_from_stale_counts() -> None:
    limited = AccountPolicy("acc", "USD", limits=LimitSet(budget=Decimal("10")), key_limits={"key": LimitSet(rpm=9)})
    limiter, _ = limiter_with(limited)
    admit(limiter, iu=Fraction(3), price=ONE)
    limiter.set_policies({"acc": AccountPolicy("acc", "USD")})
    admit(limiter, iu=Fraction(100), price=ONE)  # the fast path: not counted
    assert limiter.set_policies({"acc": limited}) == {"acc"}
    admit(limiter, price=ONE)
    limiter.seed(DAY, PERIOD, {"acc": SeedUsage(Usage({}, {IMAGE: Fraction(103)}, Fraction(8)))})
    assert limiter.usage("acc") == Usage({IMAGE: Fraction(1)}, {IMAGE: Fraction(104)}, Fraction(9))
    assert limiter.usage("acc", "key") == Usage({IMAGE: Fraction(1)}, {IMAGE: Fraction(1)}, Fraction(1))


def test_memory_is_held_only_for_accounts_with_a_policy() -> None:
    limiter, _ = limiter_with(free_plan(), AccountPolicy("other", "USD"))
    for i in range(100):
        limiter.settle(admit(limiter, account_id=f"stranger-{i}", key_id=f"k{i}"))
        limiter.settle(admit(limiter, key_id=f"k{i}", iu=Fraction(0)))  # unlimited keys get no counters
    assert limiter.held_accounts() == {"acc", "other"}
    assert limiter._accounts["acc"].keys == {}
    limiter.set_policies({"acc": free_plan()})
    assert limiter.held_accounts() == {"acc"}
    assert limiter.usage("stranger-1") is None


def test_quantities_must_be_whole_base_units_and_prices_not_negative() -> None:
    limiter, _ = limiter_with(free_plan())
    with pytest.raises(InvariantViolated, match="not a whole number"):
        admit(limiter, iu=Fraction(1, 2))  # half an image
    with pytest.raises(InvariantViolated, match="negative price"):
        admit(limiter, price=Fraction(-1))
    with pytest.raises(InvariantViolated):
        LimitSet(rpm=0)
    with pytest.raises(InvariantViolated):
        LimitSet(budget=Decimal("-1"))


# -- the edge --------------------------------------------------------------------------------------------------


def test_rate_limited_answers_429_with_retry_after_and_the_documented_body() -> None:
    exc = RateLimited("rate limit reached: ...", scope="key", allowed=5, retry_after_s=11.2)
    assert status_for(exc) == 429
    assert headers_for(exc) == [(b"retry-after", b"12")]
    assert body_of(exc) == {
        "error": "rate limit reached: ...",
        "limit": "rpm",
        "scope": "key",
        "allowed": 5,
        "retry_after_s": 12,
    }


def test_other_errors_carry_no_extra_fields() -> None:
    assert extra_fields_for(ValueError("x")) == {}
