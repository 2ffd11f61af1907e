"""Experiments (lab.experiments) on SQLite and PostgreSQL: started and stopped with audit records, one running
per model, the gateway's recorded calls joined with their feedback and billed amounts, a significant difference
on the feedback metric, and a promotion that moves the model's `latest` alias."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from economy_helpers import copy_package, make_economy

from modelmarket.adapters.store import SqlStore
from modelmarket.cli.main import cli
from modelmarket.core.errors import Conflict, InvalidInput, NotFound
from modelmarket.lab.bandit import BanditController
from modelmarket.lab.experiments import parse_variants
from modelmarket.lab.ports import ExperimentCall

pytestmark = pytest.mark.timeout(120)


def test_an_experiment_reports_each_variant_and_promotes_the_better_one(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = make_economy(store, tmp_path / "home", demo_dir)
    p = eco.platform
    p.registry.publish(copy_package(demo_dir, "digits", tmp_path / "pkgs", "digits", {"version": "2.0.0"}))
    p.registry.move_alias("digits", "latest", "2.0.0")
    service = p.experiments
    variants = parse_variants("A=1.0.0,B=2.0.0", "50/50")

    with pytest.raises(NotFound, match=r"no published version '9\.9\.9'"):
        service.start("bad", "digits", parse_variants("A=1.0.0,B=9.9.9", None), "feedback")
    with pytest.raises(InvalidInput, match="--metric"):
        service.start("bad", "digits", variants, "vibes")
    started = service.start("digits-v2", "digits", variants, "feedback")
    assert service.running() == {"digits": started}
    with pytest.raises(Conflict, match="in experiment 'digits-v2' already"):
        service.start("again", "digits", variants, "feedback")

    consumer = eco.consumer("tester")
    events = [eco.event("tester", "digits", 1, "2026-01-02") for _ in range(40)]
    eco.append(events)
    p.metering.catch_up()
    calls = []
    for i, e in enumerate(events):  # A's calls score 4-5, B's 1-2: the feedback metric the test controls
        variant = "A" if i % 2 == 0 else "B"
        calls.append(
            ExperimentCall(
                f"xc_{i}",
                "digits-v2",
                variant,
                "1.0.0" if variant == "A" else "2.0.0",
                consumer,
                True,
                1000 + i,
                "7",
                e.id,
                "2026-01-02T12:00:00+00:00",
            )
        )
        p.feedback.give(consumer, e.id, (5 - i % 4 // 2) if variant == "A" else (1 + i % 4 // 2), "7")
    calls.append(
        ExperimentCall("xc_fail", "digits-v2", "B", "2.0.0", consumer, False, 5000, None, None, "2026-01-02T12:00:01Z")
    )
    service.record_calls(calls)

    report = service.show("digits-v2")
    a, b = report.variants
    assert (a.calls, a.errors, b.calls, b.errors) == (20, 0, 21, 1)
    assert a.comparison is None and a.estimate.n == 20 and b.estimate.n == 20  # scored calls only
    assert b.comparison is not None and b.comparison.significant and b.comparison.better is False
    assert b.comparison.p_value is not None and b.comparison.p_value < 1e-6
    assert b.comparison.still_needed == 0

    # The bandit, opted into by the operator, moves the split toward A within the bounds, audited with its figures.
    shift = BanditController(service, random.Random(5)).round("digits-v2", 0.1, 0.9)
    assert shift.changed and shift.weights == {"A": 900, "B": 100}
    assert [(a.name, a.successes, a.failures) for a in shift.arms] == [("A", 20, 0), ("B", 0, 20)]
    assert [(v.name, v.weight) for v in service.get("digits-v2").variants] == [("A", 900), ("B", 100)]
    (note,) = [r for r in p.audit.list(500) if r.action == "bandit.shift"]
    assert note.payload["arms"][0] == {
        "variant": "A",
        "successes": 20,
        "failures": 0,
        "p_best": "1.0000",
        "weight": 900,
    }
    assert not BanditController(service, random.Random(6)).round("digits-v2", 0.1, 0.9).changed  # nothing new

    final = service.stop("digits-v2", promote="A")
    assert (final.experiment.status, final.experiment.promoted) == ("stopped", "A")
    assert service.running() == {}
    assert p.registry.catalogue().resolve("digits").version == "1.0.0"  # `latest` moved to A's version
    with pytest.raises(Conflict, match="not running"):
        service.stop("digits-v2")
    actions = [r.action for r in p.audit.list(200)]
    assert "experiment.start" in actions and "experiment.stop" in actions


def test_a_routes_bandit_moves_its_weights_toward_the_better_rated_target(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = make_economy(store, tmp_path / "home", demo_dir)
    p = eco.platform
    p.registry.publish(copy_package(demo_dir, "digits", tmp_path / "pkgs", "digits", {"version": "2.0.0"}))
    p.routing.apply(
        "routes:\n  - name: digit-route\n    targets:\n"
        "      - {model: digits@1.0.0, weight: 1}\n      - {model: digits@2.0.0, weight: 1}\n"
    )
    consumer = eco.consumer("rater")
    events = []
    for i in range(30):
        e = eco.event("rater", "digits", 1, "2026-01-03")
        events.append(replace(e, version="1.0.0" if i % 2 == 0 else "2.0.0"))
    eco.append(events)
    for i, e in enumerate(events):  # 1.0.0's answers are liked, 2.0.0's are not
        p.feedback.give(consumer, e.id, 5 if i % 2 == 0 else 1)

    result = CliRunner().invoke(
        cli, ["lab", "bandit", "digit-route", "--route", "--json"], obj={"platform": p}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    (shift,) = json.loads(result.output)
    assert shift["changed"] and [(a["variant"], a["weight"]) for a in shift["arms"]] == [
        ("digits@1.0.0", 900),
        ("digits@2.0.0", 100),
    ]
    stored = p.routing.route("digit-route")
    assert stored.revision == 2 and [t.weight for t in stored.spec.targets] == [900, 100]
    actions = [r.action for r in p.audit.list(500)]
    assert actions[-2:] == ["route.changed", "bandit.shift"]
