"""The provider's share is a fact of the store, fixed by its first rating: a process started with another
MODELMARKET_PROVIDER_SHARE (a CLI in a shell without the gateway's environment) rates at the store's share."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from economy_helpers import PROVIDER, PluginRuntimes, make_economy

from modelmarket.adapters.store import SqlStore
from modelmarket.bootstrap import bootstrap
from modelmarket.settings import Settings


def test_every_process_rates_at_the_share_the_store_first_rated_at(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = make_economy(store, tmp_path / "home", demo_dir)  # rates at the default share, 0.80
    eco.consumer("sharer")
    eco.append([eco.event("sharer", "digits", 1000, "2026-01-10")])
    provider = eco.providers[PROVIDER]
    [first] = [b for b in eco.platform.ledger.balances(provider) if b.ledger_account.startswith("payable:")]
    assert first.exact == Fraction("-0.8")  # 1,000 x 0.0010 = 1.00 x 0.80

    other = bootstrap(
        Settings(home=tmp_path / "home", provider_share=Decimal("0.70")),
        store=store,
        clock=eco.clock,
        runtimes=PluginRuntimes(),
    )
    eco.append([eco.event("sharer", "digits", 1000, "2026-01-11")])
    [after] = [b for b in other.ledger.balances(provider) if b.ledger_account.startswith("payable:")]
    assert after.exact == Fraction("-1.6")  # the second 1.00 also at 0.80, not at this process's 0.70
    assert other.ledger.rebuild().identical  # a rebuild from this process rates all history the same way
    assert other.ledger.verify().ok
