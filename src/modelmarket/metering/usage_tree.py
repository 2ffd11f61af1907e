"""The usage tree's projector: each applied usage event becomes a leaf of the verifiable ``usage`` tree, in log
order, in the metering batch's transaction; the batch ends with a signed checkpoint covering it.

Its leaf is made of the facts ``usage_events`` stores (``audit.leaves.UsageFacts``), with the same text for every
decimal the store writes (``str`` of the Decimal, ``isoformat`` of the time), so ``audit verify`` can make every
leaf again from its row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from modelmarket.audit.leaves import USAGE_TREE, UsageFacts, usage_leaf
from modelmarket.audit.ports import CheckpointSigner
from modelmarket.audit.trees import grow
from modelmarket.core.clock import Clock
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind


def usage_facts(log_offset: int, e: UsageEvent, texts: FactTexts | None = None) -> UsageFacts:
    """An event's facts as the metering consumer stores them in ``usage_events``."""
    t = texts or FactTexts()
    price = t.objects.get(id(e.unit_price))
    if price is None or price[0] is not e.unit_price:
        price = t.objects[id(e.unit_price)] = (e.unit_price, str(e.unit_price))
    numerator = t.numerators.get((e.quantity, price[1]))
    if numerator is None:
        numerator = t.numerators[(e.quantity, price[1])] = str(e.amount_numerator)
    unit, divisor = _UNITS[e.unit_kind]
    return UsageFacts(
        e.id,
        e.account_id,
        e.model,
        e.version,
        e.provider_account_id,
        unit,
        e.quantity,
        e.quantity_out,
        price[1],
        numerator,
        divisor,
        e.currency,
        e.time.isoformat(),
        log_offset,
    )


class FactTexts:
    """The text of the values a batch's events share (prices by identity: decoding makes one Decimal per distinct
    price text, whose zeros the text keeps; amounts per quantity and price), made once per batch."""

    def __init__(self) -> None:
        self.objects: dict[int, tuple[Any, str]] = {}
        self.numerators: dict[tuple[int, str], str] = {}


REPLAY_PAGE = 10_000
"""Leaves read per query when a rebuild reads the tree's order."""
_UNITS = {unit: (unit.value, unit.divisor) for unit in UnitKind}


class UsageTree:
    """A ``metering.consumer.Projector`` that grows the usage tree (the store's ``proofs`` repository)."""

    records_events = False
    shared = True
    """Every partition's consumer grows the one tree: its growth is serialized (``SHARED_LOCK_KEY``)."""

    def __init__(self, signer: CheckpointSigner | None, clock: Clock, history_every_s: float) -> None:
        self.signer = signer
        self.clock = clock
        self.history_every_s = history_every_s

    def apply(self, uow: Any, events: Sequence[tuple[int, UsageEvent]]) -> None:
        texts = FactTexts()
        leaves = [(e.id, usage_leaf(usage_facts(offset, e, texts))) for offset, e in events]
        grow(uow.proofs, USAGE_TREE, leaves, self.signer, self.clock(), self.history_every_s)

    def replay_order(self, uow: Any) -> Iterator[tuple[str, int]]:
        """(account, log offset) of each leaf's event, in leaf order: the order a rebuild over several partitions
        applies them in again, so the tree regrows the same leaves in the same order."""
        after = -1
        while page := uow.proofs.usage_leaves(after, REPLAY_PAGE):
            for _leaf, facts in page:
                if facts is not None:  # a leaf without its row: the regrown tree will not match, and says so
                    yield facts.account_id, facts.log_offset
            after = page[-1][0].leaf_index

    def clear(self, uow: Any) -> None:
        """Before a rebuild applies the log again: the tree is grown again, to the same leaves (its checkpoints are
        kept, and each one the rebuilt tree reaches must have the same root, or the rebuild halts)."""
        uow.proofs.clear(USAGE_TREE)
