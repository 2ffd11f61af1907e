"""Feedback on calls (lab.feedback) on SQLite and PostgreSQL: linked to the call's usage event, one per call (a
second replaces the first), another account's call not found, counted per version in the store."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from economy_helpers import make_economy

from modelmarket.adapters.store import SqlStore
from modelmarket.core.errors import InvalidInput, NotFound

pytestmark = pytest.mark.timeout(120)


def test_feedback_is_linked_to_the_callers_own_call_and_counted_per_version(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = make_economy(store, tmp_path / "home", demo_dir, ("digits-b",))
    alice, bob = eco.consumer("alice"), eco.consumer("bob")
    calls = [
        eco.event("alice", "digits", 1, "2026-01-02"),
        eco.event("alice", "digits", 1, "2026-01-02"),
        eco.event("alice", "digits-b", 1, "2026-01-02"),
        eco.event("bob", "digits", 1, "2026-01-02"),
    ]
    eco.append(calls)  # not applied yet: feedback catches metering up first
    feedback = eco.platform.feedback

    first, new = feedback.give(alice, calls[0].id, 5, "7")
    assert new and (first.model, first.version, first.score, first.label) == ("digits", "1.0.0", 5, "7")
    again, new = feedback.give(alice, calls[0].id, 2)  # replaces it: one feedback per call
    assert not new and (again.score, again.label, again.created_at) == (2, None, first.created_at)
    feedback.give(alice, calls[1].id, 4, "3")
    feedback.give(alice, calls[2].id, 1)
    feedback.give(bob, calls[3].id, 3)

    with pytest.raises(NotFound, match="no call"):
        feedback.give(bob, calls[0].id, 1)  # alice's call: not found, as an unknown one
    with pytest.raises(NotFound, match="no call"):
        feedback.give(bob, "evt-unknown", 1)
    with pytest.raises(NotFound):
        feedback.of_call(bob, calls[0].id)
    with pytest.raises(InvalidInput, match="score"):
        feedback.give(alice, calls[1].id, 6)
    assert feedback.of_call(alice, calls[0].id).score == 2  # the refused ones changed nothing

    counts = {(v.model, v.version): v for v in feedback.per_version()}
    digits = counts[("digits", "1.0.0")]
    assert (digits.calls, digits.mean_score, digits.labelled) == (3, Fraction(2 + 4 + 3, 3), 1)
    assert digits.histogram == (0, 1, 1, 1, 0)  # scores 2, 4 and 3
    assert (counts[("digits-b", "1.0.0")].calls, counts[("digits-b", "1.0.0")].mean_score) == (1, Fraction(1))
    assert [v.model for v in feedback.per_version("digits-b")] == ["digits-b"]
