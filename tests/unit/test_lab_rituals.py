"""Rituals' schedules (lab.rituals), pure: cron fields, the next run, the schedule file's errors, the report shelf."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.lab.rituals import KEEP_REPORTS, ReportShelf, parse_cron, parse_schedule, previous_period


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_cron_fields_and_the_next_run() -> None:
    weekly = parse_cron("0 3 * * 1")  # Mondays 03:00
    assert weekly.next_after(_t("2026-11-28T12:00:00")) == _t("2026-11-30T03:00:00")  # Sat -> Mon
    monthly = parse_cron("0 4 1 * *")
    assert monthly.next_after(_t("2026-11-28T12:00:00")) == _t("2026-12-01T04:00:00")
    every = parse_cron("*/15 9-17 * * 1-5")
    assert every.next_after(_t("2026-11-27T17:50:00")) == _t("2026-11-30T09:00:00")  # Fri evening -> Mon 09:00
    assert every.next_after(_t("2026-11-30T09:00:00")) == _t("2026-11-30T09:15:00")
    either = parse_cron("0 0 13 * 5")  # the 13th or a Friday (both day fields restricted: either matches)
    assert either.next_after(_t("2026-11-28T00:00:00")) == _t("2026-12-04T00:00:00")
    assert parse_cron("0 0 29 2 *").next_after(_t("2026-03-01T00:00:00")) == _t("2028-02-29T00:00:00")
    assert previous_period(_t("2026-01-15T00:00:00")) == "2025-12"


@pytest.mark.parametrize("bad", ["* * * *", "60 * * * *", "* 24 * * *", "0 0 0 * *", "*/0 * * * *", "a * * * *"])
def test_bad_cron_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="cron"):
        parse_cron(bad)


def test_a_schedule_file_is_read_strictly() -> None:
    rituals = parse_schedule(
        "rituals:\n"
        "  - {name: weekly, cron: '0 3 * * 1', bakeoff: {models: [digits, digits-mlp], dataset: /d.jsonl}}\n"
        "  - {name: monthly, cron: '0 4 1 * *', price_replay: {period: previous, model: digits, price: '0.002'}}\n"
    )
    assert [(r.name, r.kind) for r in rituals] == [("weekly", "bakeoff"), ("monthly", "price_replay")]
    for bad, named in [
        ("rituals: []", "1 to"),
        ("rituals: [{name: a, cron: '* * * * *'}]", "one of"),
        ("rituals: [{name: a, cron: '* * * * *', bakeoff: {models: []}}]", "bakeoff"),
        ("rituals: [{name: a, cron: '* * * * *', price_replay: {model: m}}]", "go together"),
        ("rituals: [{name: a, cron: '* * * * *', price_replay: {period: 2026}}]", "period"),
        ("rituals: [{name: A!, cron: '* * * * *', price_replay: {}}]", "name"),
        ("other: 1", "rituals"),
    ]:
        with pytest.raises(InvalidInput, match=named):
            parse_schedule(bad)


def test_the_shelf_keeps_the_newest_reports(tmp_path: Path) -> None:
    shelf = ReportShelf(tmp_path)
    for i in range(KEEP_REPORTS + 3):
        shelf.keep("r", datetime(2026, 1, 1, 0, i % 60, i // 60, tzinfo=UTC), {"n": i})
    kept = shelf.reports("r")
    assert len(kept) == KEEP_REPORTS and kept[-1].read_text().count('"n": 52') == 1
