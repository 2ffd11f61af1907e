"""The price book (records in force, list x factor, exact) and the dynamic-pricing formula, on literal numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from modelmarket.billing.ports import PriceRecord
from modelmarket.billing.pricing import (
    NO_RECORD,
    DemandInputs,
    PriceBook,
    PriceInForce,
    check_bounds,
    check_list_price,
    compute_factor,
    parse_list_price,
    plain,
    round_factor,
)
from modelmarket.core.errors import InvalidInput, InvariantViolated

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MANIFEST = Decimal("0.0010")


def rec(seq: int, at: datetime, source: str, value: str, model: str = "digits") -> PriceRecord:
    """A ``list`` record (value = list price) or a ``dynamic`` one (value = factor)."""
    if source == "list":
        return PriceRecord(model, seq, at.isoformat(), Decimal(value), Decimal(1), "list", "", T0.isoformat())
    return PriceRecord(model, seq, at.isoformat(), None, Decimal(value), "dynamic", "", T0.isoformat())


# -- the book ----------------------------------------------------------------------------------------------------


def test_a_record_is_in_force_from_its_effective_at_on_and_not_before() -> None:
    book = PriceBook.build([rec(1, T0, "list", "0.05")])
    assert book.in_force("digits", T0 - timedelta(microseconds=1)) == NO_RECORD
    assert book.in_force("digits", T0) == PriceInForce(Decimal("0.05"), Decimal(1), 1)
    assert book.in_force("digits", T0 + 24 * HOUR) == PriceInForce(Decimal("0.05"), Decimal(1), 1)
    assert book.unit_price(MANIFEST, "digits", T0 - HOUR) == Decimal("0.0010")
    assert book.unit_price(MANIFEST, "digits", T0) == Decimal("0.05")
    # another model, and a model with no record at all, keep the manifest's price
    assert book.in_force("sentiment", T0) == NO_RECORD
    assert book.unit_price(MANIFEST, "sentiment", T0) is MANIFEST


def test_the_latest_effective_at_wins_not_the_latest_seq() -> None:
    """A list price set for later (seq 1) and then one for now (seq 2): each rules its own time."""
    book = PriceBook.build([rec(1, T0 + HOUR, "list", "0.07"), rec(2, T0, "list", "0.06")])
    assert book.in_force("digits", T0).list_price == Decimal("0.06")
    assert book.in_force("digits", T0 + HOUR).list_price == Decimal("0.07")
    assert book.in_force("digits", T0 + HOUR).seq == 1


def test_ties_on_effective_at_go_to_the_greatest_seq_in_any_input_order() -> None:
    records = [rec(3, T0, "list", "0.03"), rec(2, T0, "list", "0.02"), rec(1, T0 - HOUR, "list", "0.01")]
    for ordering in (records, records[::-1]):
        book = PriceBook.build(ordering)
        assert book.in_force("digits", T0) == PriceInForce(Decimal("0.03"), Decimal(1), 3)
        assert book.in_force("digits", T0 - HOUR).list_price == Decimal("0.01")


def test_list_price_and_dynamic_factor_combine() -> None:
    book = PriceBook.build(
        [
            rec(1, T0 + HOUR, "dynamic", "1.5"),  # a factor on the manifest's price first
            rec(2, T0 + 2 * HOUR, "list", "0.10"),
            rec(3, T0 + 3 * HOUR, "dynamic", "0.8"),
            rec(4, T0 + 4 * HOUR, "list", "0.20"),  # a new list price keeps the factor in force
        ]
    )
    assert book.unit_price(MANIFEST, "digits", T0 + HOUR) == Decimal("0.0015")
    assert book.unit_price(MANIFEST, "digits", T0 + 2 * HOUR) == Decimal("0.15")
    assert book.unit_price(MANIFEST, "digits", T0 + 3 * HOUR) == Decimal("0.08")
    assert book.in_force("digits", T0 + 4 * HOUR) == PriceInForce(Decimal("0.20"), Decimal("0.8"), 4)
    assert book.unit_price(MANIFEST, "digits", T0 + 4 * HOUR) == Decimal("0.16")
    # the timeline shows what each record brings into force
    states = [(r.seq, s.unit_price(MANIFEST)) for r, s in book.timeline("digits")]
    assert states == [(1, Decimal("0.0015")), (2, Decimal("0.15")), (3, Decimal("0.08")), (4, Decimal("0.16"))]


def test_the_product_is_exact_at_the_extremes() -> None:
    tiny = PriceBook.build([rec(1, T0, "list", "0.0000000001"), rec(2, T0, "dynamic", "9.9999")])
    assert str(tiny.unit_price(MANIFEST, "digits", T0)) == "9.9999E-10"
    assert tiny.unit_price(MANIFEST, "digits", T0) == Decimal("0.00000000099999")
    huge = PriceBook.build([rec(1, T0, "list", "999999999999.9999999999"), rec(2, T0, "dynamic", "0.0001")])
    assert format(huge.unit_price(MANIFEST, "digits", T0), "f") == "99999999.99999999999999"


def test_a_naive_time_in_a_record_or_an_unknown_source_is_a_programmer_error() -> None:
    naive = PriceRecord("digits", 1, "2026-03-01T12:00:00", Decimal(1), Decimal(1), "list", "", "")
    with pytest.raises(InvariantViolated):
        PriceBook.build([naive])
    with pytest.raises(InvariantViolated):
        PriceBook.build([PriceRecord("digits", 1, T0.isoformat(), None, Decimal(1), "promo", "", "")])


# -- validation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("0", "0"), ("0.05", "0.05"), ("0.0000000001", "0.0000000001"), ("12", "12")]
)
def test_list_prices_are_written_like_manifest_prices(text: str, expected: str) -> None:
    assert format(parse_list_price(text), "f") == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1e-3", "plain decimal"),
        ("-1", "plain decimal"),
        (".5", "plain decimal"),
        (" 1", "plain decimal"),
        ("0.00000000001", "10 digits"),
        ("1000000000000", "less than"),
    ],
)
def test_bad_list_prices_are_refused_naming_the_field(text: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=f"^price: .*{why}"):
        parse_list_price(text)


def test_check_list_price_refuses_non_finite_and_negative_decimals() -> None:
    for bad in (Decimal("NaN"), Decimal("Infinity"), Decimal("-0.01")):
        with pytest.raises(InvalidInput, match=r"^price: "):
            check_list_price(bad)


def test_dynamic_bounds() -> None:
    assert check_bounds(Decimal("0.50"), Decimal("2.0")) == (Decimal("0.5"), Decimal("2"))
    assert check_bounds(Decimal("1"), Decimal("10")) == (Decimal(1), Decimal(10))
    for low, high, field in [
        ("0", "2", "min_factor"),
        ("1.01", "2", "min_factor"),
        ("0.5", "0.99", "max_factor"),
        ("0.5", "10.0001", "max_factor"),
        ("0.12345", "2", "min_factor"),
        ("0.5", "NaN", "max_factor"),
    ]:
        with pytest.raises(InvalidInput, match=f"^{field}: "):
            check_bounds(Decimal(low), Decimal(high))


def test_plain_and_round_factor() -> None:
    assert str(plain(Decimal("1.2500"))) == "1.25"
    assert str(plain(Decimal("10.000"))) == "10"
    assert str(round_factor(Fraction(5, 6))) == "0.8333"
    assert str(round_factor(Fraction(2, 3))) == "0.6667"


# -- the formula -------------------------------------------------------------------------------------------------


def test_the_worked_example_of_the_docstring() -> None:
    # 30 calls in 5 min against 2 880 in 24 h, p50 120 ms against 80 ms, half of 5 760 calls over 4 models
    inputs = DemandInputs(30, 2880, 5760, 4, Decimal("120"), Decimal("80"))
    computed = compute_factor(inputs, Decimal("0.5"), Decimal("2"))
    assert (computed.demand, computed.latency, computed.popularity) == (3, Fraction(3, 2), 2)
    assert computed.raw == Fraction(8, 5)
    assert computed.factor == Decimal("1.6")
    assert compute_factor(inputs, Decimal("0.5"), Decimal("1.5")).factor == Decimal("1.5")
    assert computed.to_json()["raw"] == "1.6"
    assert computed.reason() == "demand x3, latency x1.5, popularity x2: raw 1.6 in [0.5, 2]"


def test_a_quiet_model_gets_cheaper_and_the_factor_is_rounded_once() -> None:
    # 1 call in 5 min against 864 in 24 h: r = 1/3; usual latency; 864 of 2 592 calls over 3 models: p = 1
    computed = compute_factor(DemandInputs(1, 864, 2592, 3, Decimal(100), Decimal(100)), Decimal("0.5"), Decimal(2))
    assert computed.demand == Fraction(1, 3)
    assert computed.raw == Fraction(5, 6)
    assert computed.factor == Decimal("0.8333")
    assert computed.to_json()["raw"] == "5/6"


def test_rounding_is_half_to_even() -> None:
    # r = 5001 x 86400 / (1440000 x 300) = 1.0002 exactly: raw = 1.00005, a tie, to the even 1.0000
    tie_down = compute_factor(DemandInputs(5001, 1440000, 1440000, 1, None, None), Decimal("0.5"), Decimal(2))
    assert tie_down.raw == Fraction("1.00005")
    assert str(tie_down.factor) == "1"
    # r = 1.0006: raw = 1.00015, a tie, to the even 1.0002
    tie_up = compute_factor(DemandInputs(5003, 1440000, 1440000, 1, None, None), Decimal("0.5"), Decimal(2))
    assert tie_up.raw == Fraction("1.00015")
    assert str(tie_up.factor) == "1.0002"


def test_each_ratio_is_capped_and_the_factor_clamped() -> None:
    # r = 300 x 86400 / (300 x 300) = 288 -> 4; q = 500 / 100 = 5 -> 4; p = 1: raw = 1 + 0.75 + 0.3 = 2.05
    spike = compute_factor(DemandInputs(300, 300, 300, 1, Decimal(500), Decimal(100)), Decimal("0.5"), Decimal(10))
    assert (spike.demand, spike.latency) == (288, 5)
    assert spike.raw == Fraction("2.05")
    assert spike.factor == Decimal("2.05")
    assert compute_factor(spike.inputs, Decimal("0.5"), Decimal("1.25")).factor == Decimal("1.25")
    # nothing in the window: r = 0, q = 1 (no window latency), p = 1000 x 4 / 4000 = 1: raw 0.75, clamped to 0.8
    idle = compute_factor(DemandInputs(0, 1000, 4000, 4, None, Decimal(50)), Decimal("0.8"), Decimal("1.2"))
    assert (idle.demand, idle.latency, idle.popularity, idle.raw) == (0, 1, 1, Fraction(3, 4))
    assert idle.factor == Decimal("0.8")


def test_a_model_with_half_its_fair_share_is_a_little_cheaper() -> None:
    # r = 10 x 86400 / (100 x 300) = 28.8 -> 4; q = 1; p = 100 x 5 / 1000 = 0.5: raw = 1 + 0.75 - 0.025 = 1.725
    computed = compute_factor(DemandInputs(10, 100, 1000, 5, Decimal(50), Decimal(50)), Decimal("0.5"), Decimal(2))
    assert computed.popularity == Fraction(1, 2)
    assert computed.factor == Decimal("1.725")


def test_no_usage_at_all_is_neutral() -> None:
    computed = compute_factor(DemandInputs(0, 0, 0, 0, None, None), Decimal("0.5"), Decimal(2))
    assert (computed.raw, computed.factor) == (1, Decimal(1))


def test_inconsistent_counts_are_a_programmer_error() -> None:
    with pytest.raises(InvariantViolated):
        DemandInputs(5, 4, 10, 1, None, None)  # more calls in the window than in the day that contains it
    with pytest.raises(InvariantViolated):
        DemandInputs(1, 4, 3, 1, None, None)
    with pytest.raises(InvariantViolated):
        DemandInputs(0, 0, 3, 0, None, None)


def test_feedback_moves_the_factor_once_enough_calls_are_scored() -> None:
    # the worked example, with 30 scored calls averaging 4.5 of 5: f = 4.5 / 3 = 1.5, raw 1.6 + 1/20 x 0.5 = 1.625
    rated = DemandInputs(
        30, 2880, 5760, 4, Decimal("120"), Decimal("80"), feedback_calls=30, feedback_score_sum=135, feedback_accounts=5
    )
    computed = compute_factor(rated, Decimal("0.5"), Decimal("2"))
    assert (computed.quality, computed.raw, computed.factor) == (Fraction(3, 2), Fraction(13, 8), Decimal("1.625"))
    assert computed.reason() == "demand x3, latency x1.5, popularity x2, feedback x1.5: raw 1.625 in [0.5, 2]"
    # 19 scored calls, or 4 accounts scoring, are too few to move it (one account cannot move a price)
    few = DemandInputs(30, 2880, 5760, 4, Decimal(120), Decimal(80), feedback_calls=19, feedback_score_sum=95)
    assert compute_factor(few, Decimal("0.5"), Decimal("2")).factor == Decimal("1.6")
    alone = DemandInputs(
        30, 2880, 5760, 4, Decimal(120), Decimal(80), feedback_calls=99, feedback_score_sum=495, feedback_accounts=4
    )
    assert compute_factor(alone, Decimal("0.5"), Decimal("2")).factor == Decimal("1.6")
    # a poorly rated model (mean 1.5: f = 1/2) gets cheaper by 1/40
    poor = DemandInputs(
        30, 2880, 5760, 4, Decimal(120), Decimal(80), feedback_calls=20, feedback_score_sum=30, feedback_accounts=6
    )
    assert compute_factor(poor, Decimal("0.5"), Decimal("2")).raw == Fraction(8, 5) - Fraction(1, 40)
