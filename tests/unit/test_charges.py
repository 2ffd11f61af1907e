"""Charge models (billing/charges.py) and the manifest's ``pricing`` forms: expected amounts are worked out by
hand in the comments and written out literally, never computed by the code under test."""

from __future__ import annotations

import itertools
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from modelmarket.billing.charges import ChargeModel, Tier, charge_model, token_amount
from modelmarket.core.errors import InvalidInput, InvariantViolated
from modelmarket.registry.catalogue import ModelEntry, VersionRecord
from modelmarket.registry.manifest import Pricing, parse_manifest
from modelmarket.registry.views import model_summary

F = Fraction
TIERS = [
    {"up_to": 1000, "price_per_iu": "0.002"},
    {"up_to": 10000, "price_per_iu": "0.0015"},
    {"price_per_iu": "0.001"},
]


def doc(pricing: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "m",
        "version": "1.0.0",
        "task": "t",
        "modality": "text",
        "runtime": "vader",
        "provider": "p",
        "license": "MIT",
        "artifacts": [{"path": "a"}],
        "inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}],
        "pricing": pricing,
        "card": {"summary": "s"},
    }


def pricing(**fields: Any) -> Pricing:
    return parse_manifest(doc({"unit": "request", "currency": "USD", **fields})).pricing


def graduated() -> ChargeModel:
    return charge_model(pricing(charge="graduated", tiers=TIERS))


def volume() -> ChargeModel:
    return charge_model(pricing(charge="volume", tiers=TIERS))


def package(package_iu: int = 1000, price: str = "0.05") -> ChargeModel:
    return charge_model(pricing(charge="package", package_iu=package_iu, price_per_package=price))


# -- total(q), by hand


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        (F(0), "0"),
        (F(1), "0.002"),  # 1 x 0.002
        (F(1, 3), "1/1500"),  # 1/3 x 2/1000
        (F(1999, 2), "1.999"),  # 999.5 x 0.002
        (F(1000), "2"),  # 1000 x 0.002: exactly at up_to, all in tier 1
        (F(2001, 2), "2.00075"),  # 2 + 0.5 x 0.0015
        (F(1001), "2.0015"),  # 2 + 1 x 0.0015
        (F(10000), "15.5"),  # 2 + 9000 x 0.0015 = 2 + 13.5
        (F(10001), "15.501"),  # 15.5 + 1 x 0.001
        (F(25000), "30.5"),  # 15.5 + 15000 x 0.001
    ],
)
def test_graduated_total(quantity: Fraction, expected: str) -> None:
    assert graduated().total(quantity) == F(expected)


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        (F(0), "0"),
        (F(1), "0.002"),  # tier 1
        (F(1, 3), "1/1500"),  # 1/3 x 0.002
        (F(1000), "2"),  # 1000 x 0.002: up_to is inclusive
        (F(2001, 2), "1.50075"),  # 1000.5 x 0.0015: every IU at tier 2's price
        (F(1001), "1.5015"),  # 1001 x 0.0015
        (F(10000), "15"),  # 10000 x 0.0015
        (F(10001), "10.001"),  # 10001 x 0.001
        (F(25000), "25"),  # 25000 x 0.001
    ],
)
def test_volume_total(quantity: Fraction, expected: str) -> None:
    assert volume().total(quantity) == F(expected)


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        (F(0), "0"),  # no block started
        (F(1, 1000), "0.05"),  # one token of tokens_1k starts a block
        (F(1), "0.05"),
        (F(1000), "0.05"),  # exactly one full block
        (F(1000001, 1000), "0.10"),  # 1000.001: a second block started
        (F(1001), "0.10"),
        (F(2000), "0.10"),
        (F(2500), "0.15"),  # ceil(2.5) = 3 blocks
    ],
)
def test_package_total(quantity: Fraction, expected: str) -> None:
    assert package().total(quantity) == F(expected)


def test_package_of_one_iu_charges_each_started_iu() -> None:
    model = package(package_iu=1, price="0.05")
    assert model.total(F(3, 2)) == F("0.10")  # 1.5 IU start two blocks
    assert model.total(F(2)) == F("0.10")


@pytest.mark.parametrize(
    ("unit", "price", "quantity", "expected"),
    [
        ("image", "0.0010", F(0), "0"),
        ("image", "0.0010", F(3), "0.003"),
        ("tokens_1k", "0.0200", F(3, 2), "0.03"),  # 1,500 tokens x 0.02 / 1000
        ("audio_minute", "0.0060", F(3, 2), "0.009"),  # 90 s = 1.5 min x 0.006
        ("audio_minute", "0.0060", F(1, 60), "0.0001"),  # 1 s = 1/60 min x 0.006
        ("audio_minute", "0.0070", F(1, 60), "7/60000"),  # no finite decimal: kept exact
    ],
)
def test_per_unit_total(unit: str, price: str, quantity: Fraction, expected: str) -> None:
    model = charge_model(pricing(unit=unit, price_per_iu=price))
    assert model == ChargeModel("per_unit", (Tier(None, Decimal(price)),))
    assert model.total(quantity) == F(expected)


# -- input and output tokens priced apart


def split() -> Pricing:
    return pricing(unit="tokens_1k", input_price_per_iu="0.0005", output_price_per_iu="0.0015")


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "expected"),
    [
        (0, 0, "0"),
        (1500, 0, "0.00075"),  # 1.5 x 0.0005
        (1500, 2000, "0.00375"),  # 0.00075 + 2 x 0.0015
        (1, 1, "0.000002"),  # 0.001 x 0.0005 + 0.001 x 0.0015 = 0.0000005 + 0.0000015
        (0, 333, "0.0004995"),  # 0.333 x 0.0015
    ],
)
def test_token_amount_with_input_and_output_prices(input_tokens: int, output_tokens: int, expected: str) -> None:
    assert token_amount(split(), input_tokens, output_tokens) == F(expected)


def test_split_prices_in_the_charge_model() -> None:
    model = charge_model(split())
    assert model.kind == "per_unit"
    assert model.input_price_per_iu == Decimal("0.0005")
    assert model.output_price_per_iu == Decimal("0.0015")
    assert model.total(F(2)) == F("0.001")  # quantities are input IU: 2 x 0.0005
    assert model.output_total(F(2)) == F("0.003")  # 2 x 0.0015
    assert model.estimate_per_iu() == F("0.0015")  # the dearer of the two


def test_token_amount_with_one_price_bills_input_tokens_only() -> None:
    one_price = pricing(unit="tokens_1k", price_per_iu="0.02")
    assert token_amount(one_price, 1500, 9999) == F("0.03")  # 1.5 x 0.02; tokens_1k counts input text


def test_token_amount_is_for_per_unit_token_models_only() -> None:
    with pytest.raises(InvariantViolated, match="tokens_1k"):
        token_amount(pricing(price_per_iu="1"), 1, 0)
    with pytest.raises(InvariantViolated, match="per_unit"):
        token_amount(pricing(unit="tokens_1k", charge="graduated", tiers=TIERS), 1, 0)
    with pytest.raises(InvariantViolated, match="token count"):
        token_amount(split(), -1, 0)
    with pytest.raises(InvariantViolated, match="output_price_per_iu"):
        charge_model(pricing(price_per_iu="1")).output_total(F(1))


# -- marginals: one event's amount


EVENTS = [F(300), F(800), F(3, 2), F(9000), F(4000)]  # 14,101.5 IU in all


@pytest.mark.parametrize(
    ("model", "final_total"),
    [
        (graduated, "19.6015"),  # 15.5 + (14101.5 - 10000) x 0.001 = 15.5 + 4.1015
        (volume, "14.1015"),  # 14101.5 x 0.001
        (package, "0.75"),  # ceil(14.1015) = 15 blocks x 0.05
    ],
)
def test_event_marginals_sum_to_the_period_total_in_any_order(model: Any, final_total: str) -> None:
    charges = model()
    firsts = set()
    for order in itertools.islice(itertools.permutations(EVENTS), 0, None, 17):  # 8 of the 120 orders
        used, amounts = F(0), []
        for quantity in order:
            amounts.append(charges.marginal(used, used + quantity))
            used += quantity
        assert sum(amounts, F(0)) == F(final_total)
        firsts.add((order[0], amounts[0]))
    assert len(firsts) > 1  # the orders differ: the test is not one sequence seen eight times


def test_graduated_marginal_across_a_boundary() -> None:
    assert graduated().marginal(F(300), F(1100)) == F("1.55")  # 700 x 0.002 + 100 x 0.0015 = 1.4 + 0.15


def test_volume_marginal_is_negative_when_the_period_enters_a_cheaper_tier() -> None:
    model = volume()
    assert model.marginal(F(1000), F(1001)) == F("-0.4985")  # 1001 x 0.0015 - 1000 x 0.002 = 1.5015 - 2
    assert model.marginal(F(10000), F(10001)) == F("-4.999")  # 10001 x 0.001 - 10000 x 0.0015 = 10.001 - 15
    assert model.marginal(F(999), F(1000)) == F("0.002")  # still tier 1: one more IU at 0.002


def test_package_marginal_charges_a_block_when_one_starts() -> None:
    model = package()
    assert model.marginal(F(0), F(1)) == F("0.05")
    assert model.marginal(F(1), F(1000)) == F(0)  # inside the started block
    assert model.marginal(F(1000), F(1000001, 1000)) == F("0.05")


def test_quantities_must_be_exact_non_negative_and_growing() -> None:
    model = graduated()
    with pytest.raises(InvariantViolated, match="Fraction, not float"):
        model.total(0.5)  # type: ignore[arg-type]
    with pytest.raises(InvariantViolated, match="Fraction, not Decimal"):
        model.total(Decimal("0.5"))  # type: ignore[arg-type]
    with pytest.raises(InvariantViolated, match="negative"):
        model.total(F(-1))
    with pytest.raises(InvariantViolated, match="only grows"):
        model.marginal(F(2), F(1))


# -- bounds for budget checks


@pytest.mark.parametrize(
    ("model", "per_iu"),
    [
        (graduated, "0.002"),  # the highest tier price
        (volume, "0.002"),  # tiers only get cheaper: the highest price
        (package, "0.05"),  # one IU can start a whole block
        (lambda: charge_model(pricing(price_per_iu="0.0010")), "0.001"),
    ],
)
def test_estimate_per_iu(model: Any, per_iu: str) -> None:
    assert model().estimate_per_iu() == F(per_iu)


def dearer_volume() -> ChargeModel:
    return charge_model(
        pricing(charge="volume", tiers=[{"up_to": 1000, "price_per_iu": "0.001"}, {"price_per_iu": "0.01"}])
    )


def test_volume_with_a_dearer_later_tier_bounds_the_repricing() -> None:
    model = dearer_volume()
    # 1001 x 0.01 - 1000 x 0.001 = 10.01 - 1 = 9.01: one IU reprices the thousand before it.
    assert model.marginal(F(1000), F(1001)) == F("9.01")
    assert model.estimate_per_iu() == F("9.01")  # 0.01 + 1000 x (0.01 - 0.001)


def test_package_bound_for_a_request_is_not_quantity_times_the_per_iu_bound() -> None:
    model = package(package_iu=1, price="0.05")
    assert model.max_marginal(F(3, 2)) == F("0.10")  # 1.5 IU can start two blocks
    assert model.marginal(F(3, 4), F(9, 4)) == F("0.10")  # ... and do: 0.75 -> 2.25 starts blocks 2 and 3
    assert model.max_marginal(F(3, 2)) > F(3, 2) * model.estimate_per_iu()  # 0.10 > 0.075
    assert model.max_marginal(F(0)) == 0


@pytest.mark.parametrize("model", [graduated, volume, package, dearer_volume, lambda: package(3, "0.05")])
def test_max_marginal_is_never_below_a_real_marginal(model: Any) -> None:
    charges = model()
    starts = [F(n, 2) for n in range(0, 40)] + [F(n) for n in (997, 999, 1000, 1001, 9999, 10000, 10001)]
    for quantity in (F(1, 1000), F(1, 2), F(1), F(3, 2), F(7), F(1000), F(12000)):
        bound = charges.max_marginal(quantity)
        assert all(charges.marginal(b, b + quantity) <= bound for b in starts), quantity


def test_charge_model_invariants() -> None:
    with pytest.raises(InvariantViolated):
        ChargeModel("per_unit", (Tier(10, Decimal(1)),))  # the last tier must be open
    with pytest.raises(InvariantViolated):
        ChargeModel("graduated", (Tier(10, Decimal(1)), Tier(10, Decimal(1)), Tier(None, Decimal(1))))
    with pytest.raises(InvariantViolated):
        ChargeModel("package", package_iu=0, price_per_package=Decimal(1))
    with pytest.raises(InvariantViolated):
        ChargeModel("volume", (Tier(None, Decimal(1)),), output_price_per_iu=Decimal(1))
    with pytest.raises(InvariantViolated):
        ChargeModel("per_unit", (Tier(None, Decimal(-1)),))


# -- the manifest's pricing forms


def test_the_old_form_parses_and_serialises_as_before() -> None:
    written = {"unit": "image", "price_per_iu": "0.0010", "currency": "USD"}
    manifest = parse_manifest(doc(dict(written)))
    p = manifest.pricing
    assert (p.unit, p.price_per_iu, p.price_text, p.currency) == ("image", Decimal("0.0010"), "0.0010", "USD")
    assert (p.charge, p.tiers, p.package_iu, p.price_per_package) == ("per_unit", None, None, None)
    assert (p.input_price_per_iu, p.output_price_per_iu) == (None, None)
    assert manifest.to_json()["pricing"] == written  # same keys, no new ones
    assert p.to_json() == written
    assert parse_manifest(manifest.to_json()) == manifest
    assert parse_manifest(doc({**written, "charge": "per_unit"})) == manifest


@pytest.mark.parametrize(
    ("fields", "reference", "written", "view"),
    [
        (
            {"charge": "graduated", "tiers": TIERS},
            "0.002",  # the first tier's price
            {
                "charge": "graduated",
                "tiers": [
                    {"up_to": 1000, "price_per_iu": "0.002"},
                    {"up_to": 10000, "price_per_iu": "0.0015"},
                    {"up_to": None, "price_per_iu": "0.001"},
                ],
            },
            {},
        ),
        (
            {"charge": "package", "package_iu": 1000, "price_per_package": "0.0500"},
            "0.0500",  # the price of one package: what the first IU of a period costs
            {"charge": "package", "package_iu": 1000, "price_per_package": "0.0500"},
            {},
        ),
        (
            {"unit": "tokens_1k", "input_price_per_iu": "0.0005", "output_price_per_iu": "0.0015"},
            "0.0005",  # the input price
            {"input_price_per_iu": "0.0005", "output_price_per_iu": "0.0015"},
            {"unit": "tokens_1k"},
        ),
    ],
)
def test_new_forms_round_trip_and_show_their_reference_price(
    fields: dict[str, Any], reference: str, written: dict[str, Any], view: dict[str, Any]
) -> None:
    manifest = parse_manifest(doc({"unit": "request", "currency": "USD", **fields}))
    assert manifest.pricing.price_per_iu == Decimal(reference)
    assert manifest.pricing.price_text == reference
    unit = view.get("unit", "request")
    assert manifest.to_json()["pricing"] == {"unit": unit, "currency": "USD", **written}
    assert manifest.pricing.to_json() == {"unit": unit, "price_per_iu": reference, "currency": "USD", **written}
    assert parse_manifest(manifest.to_json()) == manifest


def test_model_summary_shows_the_full_pricing() -> None:
    manifest = parse_manifest(doc({"unit": "request", "currency": "EUR", "charge": "volume", "tiers": TIERS}))
    record = VersionRecord("v1", "m", "1.0.0", "d" * 64, manifest, "acc", (), "2024-01-01T00:00:00Z")
    summary = model_summary(ModelEntry("m", "acc", versions={"1.0.0": record}, aliases={"latest": "1.0.0"}))
    assert summary["pricing"] == {
        "unit": "request",
        "price_per_iu": "0.002",
        "currency": "EUR",
        "charge": "volume",
        "tiers": [
            {"up_to": 1000, "price_per_iu": "0.002"},
            {"up_to": 10000, "price_per_iu": "0.0015"},
            {"up_to": None, "price_per_iu": "0.001"},
        ],
    }


def tiers(*pairs: tuple[int | None, Any]) -> list[dict[str, Any]]:
    return [
        {"price_per_iu": price} if up_to is None else {"up_to": up_to, "price_per_iu": price} for up_to, price in pairs
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"charge": "graduated", "tiers": tiers((1000, "0.002"), (1000, "0.001"), (None, "0.001"))},
            r"pricing\.tiers: tiers\[1\]\.up_to \(1000\) must be greater than tiers\[0\]\.up_to \(1000\)",
        ),
        (
            {"charge": "volume", "tiers": tiers((1000, "0.002"), (500, "0.001"), (None, "0.001"))},
            r"pricing\.tiers: tiers\[1\]\.up_to \(500\) must be greater than tiers\[0\]\.up_to",
        ),
        (
            {"charge": "graduated", "tiers": tiers((1000, "0.002"), (2000, "0.001"))},
            r"pricing\.tiers: the last tier \(tiers\[1\]\) must have no up_to",
        ),
        (
            {"charge": "graduated", "tiers": tiers((None, "0.002"), (None, "0.001"))},
            r"pricing\.tiers: tiers\[0\] has no up_to: only the last tier is open-ended",
        ),
        ({"charge": "graduated", "tiers": []}, r"pricing\.tiers: list 1 to 20 tiers, not 0"),
        (
            {"charge": "graduated", "tiers": tiers(*[(i + 1, "1") for i in range(20)], (None, "1"))},
            r"pricing\.tiers: list 1 to 20 tiers, not 21",
        ),
        ({"charge": "volume"}, r"pricing\.tiers: Field required with charge 'volume'"),
        (
            {"charge": "graduated", "tiers": TIERS, "price_per_iu": "0.002"},
            r"pricing\.price_per_iu: not used with charge 'graduated': each tier gives its price_per_iu",
        ),
        (
            {"charge": "graduated", "tiers": tiers((1000, 0.002), (None, "0.001"))},
            r"pricing\.tiers\[0\]\.price_per_iu: write the amount as a quoted decimal string, not a float",
        ),
        (
            {"charge": "graduated", "tiers": tiers((0, "0.002"), (None, "0.001"))},
            r"pricing\.tiers\[0\]\.up_to: must be a positive whole number of IU, not 0",
        ),
        (
            {"charge": "graduated", "tiers": tiers(("1000", "0.002"), (None, "0.001"))},
            r"pricing\.tiers\[0\]\.up_to: must be a whole number of IU written as an integer, e.g\. 1000, not str",
        ),
        (
            {"charge": "volume", "tiers": tiers((1000.5, "0.002"), (None, "0.001"))},
            r"pricing\.tiers\[0\]\.up_to: .* not float",
        ),
        (
            {"charge": "graduated", "tiers": tiers((10**12 + 1, "0.002"), (None, "0.001"))},
            r"pricing\.tiers\[0\]\.up_to: must be at most 1,000,000,000,000",
        ),
        ({"price_per_iu": "1", "tiers": TIERS}, r"pricing\.tiers: only with charge 'graduated' or 'volume'"),
        (
            {"charge": "package", "package_iu": 0, "price_per_package": "0.05"},
            r"pricing\.package_iu: must be a positive whole number of IU, not 0",
        ),
        (
            {"charge": "package", "package_iu": True, "price_per_package": "0.05"},
            r"pricing\.package_iu: .* not bool",
        ),
        (
            {"charge": "package", "package_iu": 1000, "price_per_package": 0.05},
            r"pricing\.price_per_package: write the amount as a quoted decimal string, not a float",
        ),
        (
            {"charge": "package", "package_iu": 1000},
            r"pricing\.price_per_package: Field required with charge 'package'",
        ),
        (
            {"charge": "package", "package_iu": 1000, "price_per_package": "0.05", "price_per_iu": "0.05"},
            r"pricing\.price_per_iu: not used with charge 'package': give price_per_package",
        ),
        ({"price_per_iu": "1", "package_iu": 10}, r"pricing\.package_iu: only with charge 'package'"),
        (
            {"unit": "tokens_1k", "input_price_per_iu": "0.001"},
            r"pricing\.output_price_per_iu: Field required with input_price_per_iu: give both",
        ),
        (
            {"unit": "tokens_1k", "output_price_per_iu": "0.001"},
            r"pricing\.output_price_per_iu: given without input_price_per_iu",
        ),
        (
            {"unit": "tokens_1k", "price_per_iu": "1", "input_price_per_iu": "1", "output_price_per_iu": "2"},
            r"pricing\.price_per_iu: not used with input_price_per_iu and output_price_per_iu",
        ),
        (
            {"unit": "image", "input_price_per_iu": "1", "output_price_per_iu": "2"},
            r"pricing\.input_price_per_iu: only with unit 'tokens_1k' \(unit is 'image'\)",
        ),
        (
            {
                "unit": "tokens_1k",
                "charge": "graduated",
                "tiers": TIERS,
                "input_price_per_iu": "1",
                "output_price_per_iu": "2",
            },
            r"pricing\.input_price_per_iu: only with charge 'per_unit' \(charge is 'graduated'\)",
        ),
        (
            {"unit": "tokens_1k", "input_price_per_iu": 0.001, "output_price_per_iu": "2"},
            r"pricing\.input_price_per_iu: write the amount as a quoted decimal string, not a float",
        ),
        ({"charge": "tiered", "price_per_iu": "1"}, r"pricing\.charge: Input should be 'per_unit', 'graduated'"),
        ({}, r"pricing\.price_per_iu: Field required"),
    ],
    ids=lambda v: None if isinstance(v, dict) else v,
)
def test_pricing_mistakes_name_the_field(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected) as info:
        parse_manifest(doc({"unit": "request", "currency": "USD", **fields}), "pkg/modelmarket.yaml")
    assert info.value.message.startswith("pkg/modelmarket.yaml: pricing.")


def test_one_mistake_is_reported_once() -> None:
    """A refused field is not reported again through the fields that depend on it (no echo in price_per_iu)."""
    for fields in (
        {"charge": "graduated", "tiers": tiers((1000, "0.002"), (1000, "0.001"), (None, "0.001"))},
        {"charge": "package", "package_iu": 0, "price_per_package": "0.05"},
        {"unit": "tokens_1k", "output_price_per_iu": "0.001"},
        {"charge": "tiered"},
    ):
        with pytest.raises(InvalidInput) as info:
            parse_manifest(doc({"unit": "request", "currency": "USD", **fields}))
        assert len(re.findall(r"pricing\.", info.value.message)) == 1, info.value.message
