"""Billing periods: one calendar month in UTC, written ``YYYY-MM``."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date

from modelmarket.core.errors import InvalidInput, ensure

_PERIOD_RE = re.compile(r"([0-9]{4})-([0-9]{2})")


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """A calendar month: usage belongs to it when its UTC ``day`` is from ``first_day`` to ``last_day``."""

    year: int
    month: int

    def __post_init__(self) -> None:
        ensure(1 <= self.year <= 9999, f"period year {self.year} out of range")
        ensure(1 <= self.month <= 12, f"period month {self.month} out of range")

    @classmethod
    def of(cls, day: date) -> Period:
        return cls(day.year, day.month)

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def last_day(self) -> date:
        return date(self.year, self.month, calendar.monthrange(self.year, self.month)[1])

    def __str__(self) -> str:
        return self.label


def parse_period(text: str) -> Period:
    """Parse ``YYYY-MM`` (e.g. ``2026-01``); anything else is refused with a message saying what to write."""
    match = _PERIOD_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        shown = repr(text[:20]) + ("..." if len(text) > 20 else "") if isinstance(text, str) else repr(text)
        raise InvalidInput(f"period {shown} is not a month: write it as YYYY-MM, e.g. 2026-01")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        raise InvalidInput(f"period {text!r}: month {match.group(2)} is not between 01 and 12")
    if year < 1:
        raise InvalidInput(f"period {text!r}: year 0000 does not exist")
    return Period(year, month)
