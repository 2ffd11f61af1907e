"""Rituals on a schedule (``modelmarket lab schedule FILE``): bake-offs and price replays run at the times a
cron-like schedule gives, and every report kept under ``HOME/lab/reports/<ritual>/``.

The schedule file (YAML, at most ``MAX_FILE_BYTES``, at most ``MAX_RITUALS`` rituals)::

    rituals:
      - name: weekly-digits-bakeoff
        cron: "0 3 * * 1"            # minute hour day-of-month month day-of-week (0 = Sunday), UTC
        bakeoff: {models: [digits, digits-mlp], dataset: /srv/datasets/digits-holdout.jsonl}
      - name: monthly-pricing-alchemy
        cron: "0 4 1 * *"
        price_replay: {period: previous, model: digits, price: "0.0020"}   # or plan: FILE; period: YYYY-MM

A cron field is ``*``, a number, a range ``a-b``, a list ``a,b``, or a step ``*/n`` / ``a-b/n``; when both day
fields are restricted, a day matching either runs (as cron does). ``period: previous`` is the month before the
run's. Each run writes ``<UTC time>.json`` (the report, or the error that stopped it) and keeps the newest
``KEEP_REPORTS`` per ritual.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from modelmarket.core.errors import DomainError, InvalidInput

MAX_FILE_BYTES = 64 * 1024
MAX_RITUALS = 50
KEEP_REPORTS = 50
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6))


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def matches(self, t: datetime) -> bool:
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        return self._day_ok(t)

    def next_after(self, t: datetime) -> datetime:
        """The first matching minute after ``t`` (UTC), within four years (a day, an hour that cannot match is
        skipped whole)."""
        probe = t.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        end = probe + timedelta(days=366 * 4)
        while probe < end:
            if probe.month not in self.months or not self._day_ok(probe):
                probe = probe.replace(hour=0, minute=0) + timedelta(days=1)
            elif probe.hour not in self.hours:
                probe = probe.replace(minute=0) + timedelta(hours=1)
            elif probe.minute not in self.minutes:
                probe += timedelta(minutes=1)
            else:
                return probe
        raise InvalidInput(f"cron {self.text!r} never matches")

    def _day_ok(self, t: datetime) -> bool:
        weekday = (t.weekday() + 1) % 7  # cron: 0 is Sunday
        if self.any_day or self.any_weekday:
            return t.day in self.days and weekday in self.weekdays
        return t.day in self.days or weekday in self.weekdays


def parse_cron(text: str) -> Cron:
    parts = str(text).split()
    if len(parts) != 5:
        raise InvalidInput(f"cron {str(text)[:60]!r}: five fields are needed (minute hour day month weekday)")
    sets = []
    for part, (what, low, high) in zip(parts, _FIELDS, strict=True):
        sets.append(_field(part, what, low, high))
    minutes, hours, days, months, weekdays = sets
    return Cron(str(text), minutes, hours, days, months, weekdays, parts[2] == "*", parts[4] == "*")


def _field(part: str, what: str, low: int, high: int) -> frozenset[int]:
    out: set[int] = set()
    for item in part.split(","):
        body, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise InvalidInput(f"cron {what}: bad step {item!r}")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            if not (a.isdigit() and b.isdigit()):
                raise InvalidInput(f"cron {what}: bad range {item!r}")
            start, end = int(a), int(b)
        elif body.isdigit():
            start = end = int(body)
            if step_text:
                end = high
        else:
            raise InvalidInput(f"cron {what}: {item!r} is not *, a number, a range or a list")
        if not low <= start <= end <= high:
            raise InvalidInput(f"cron {what}: {item!r} is outside {low}-{high}")
        out.update(range(start, end + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Ritual:
    name: str
    cron: Cron
    kind: str
    """``bakeoff`` or ``price_replay``."""
    params: dict[str, Any]


def parse_schedule(text: str | bytes, source: str = "schedule") -> list[Ritual]:
    if len(text) > MAX_FILE_BYTES:
        raise InvalidInput(f"{source}: larger than {MAX_FILE_BYTES:,} bytes")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rituals"), list) or set(doc) != {"rituals"}:
        raise InvalidInput(f"{source}: a mapping with one key, `rituals:`, a list")
    items = doc["rituals"]
    if not 0 < len(items) <= MAX_RITUALS:
        raise InvalidInput(f"{source}: 1 to {MAX_RITUALS} rituals")
    out, seen = [], set()
    for i, item in enumerate(items):
        where = f"{source}: rituals[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where}: a mapping")
        name = item.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name) or name in seen:
            raise InvalidInput(f"{where}.name: a unique name of lowercase letters, digits and '-'")
        seen.add(name)
        kinds = [k for k in ("bakeoff", "price_replay") if k in item]
        unknown = set(item) - {"name", "cron", "bakeoff", "price_replay"}
        if unknown or len(kinds) != 1:
            raise InvalidInput(f"{where} ({name}): `cron` and one of `bakeoff`, `price_replay` (no other keys)")
        params = item[kinds[0]]
        if not isinstance(params, dict):
            raise InvalidInput(f"{where} ({name}).{kinds[0]}: a mapping")
        _check_params(kinds[0], params, f"{where} ({name}).{kinds[0]}")
        out.append(Ritual(name, parse_cron(item.get("cron", "")), kinds[0], params))
    return out


def _check_params(kind: str, params: dict[str, Any], where: str) -> None:
    if kind == "bakeoff":
        models = params.get("models")
        if set(params) - {"models", "dataset"} or not isinstance(models, list) or not models:
            raise InvalidInput(f"{where}: `models` (a list) and `dataset` (a file)")
        if not all(isinstance(m, str) for m in models) or not isinstance(params.get("dataset"), str):
            raise InvalidInput(f"{where}: `models` are names, `dataset` a path")
        return
    if set(params) - {"period", "model", "price", "plan"}:
        raise InvalidInput(f"{where}: `period`, and `model` with `price` and/or `plan`")
    period = params.get("period", "previous")
    if period != "previous" and not (isinstance(period, str) and re.match(r"^\d{4}-\d{2}$", period)):
        raise InvalidInput(f"{where}.period: `previous` or YYYY-MM")
    if ("model" in params) != ("price" in params):
        raise InvalidInput(f"{where}: `model` and `price` go together")
    if "price" in params:
        try:
            Decimal(str(params["price"]))
        except InvalidOperation:
            raise InvalidInput(f"{where}.price: a decimal amount per IU") from None


def previous_period(t: datetime) -> str:
    first = t.astimezone(UTC).replace(day=1)
    last_month = first - timedelta(days=1)
    return f"{last_month.year:04d}-{last_month.month:02d}"


class ReportShelf:
    """The reports kept under ``root/<ritual>/<UTC time>.json``, the newest ``KEEP_REPORTS`` per ritual."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def keep(self, ritual: str, at: datetime, doc: dict[str, Any]) -> Path:
        folder = self.root / ritual
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{at.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=str))
        tmp.replace(path)
        for old in sorted(folder.glob("*.json"))[:-KEEP_REPORTS]:
            old.unlink()
        return path

    def reports(self, ritual: str | None = None) -> list[Path]:
        folders = [self.root / ritual] if ritual else sorted(p for p in self.root.glob("*") if p.is_dir())
        return [p for folder in folders for p in sorted(folder.glob("*.json"))]


class Scheduler:
    """Runs each ritual at the minutes its cron matches (one at a time, in the foreground)."""

    def __init__(
        self,
        rituals: list[Ritual],
        run: Callable[[Ritual, datetime], dict[str, Any]],
        shelf: ReportShelf,
        clock: Callable[[], datetime],
        sleep: Callable[[float], None],
    ) -> None:
        self.rituals = rituals
        self.run_one = run
        self.shelf = shelf
        self.clock = clock
        self.sleep = sleep

    def due(self, at: datetime) -> list[Ritual]:
        minute = at.astimezone(UTC).replace(second=0, microsecond=0)
        return [r for r in self.rituals if r.cron.matches(minute)]

    def run_due(self, at: datetime, progress: Callable[[str], None] = lambda _: None) -> list[Path]:
        return self._run(self.due(at), at, progress)

    def run_all(self, at: datetime, progress: Callable[[str], None] = lambda _: None) -> list[Path]:
        """Every ritual once, now, whatever its schedule (``lab schedule --run``)."""
        return self._run(self.rituals, at, progress)

    def _run(self, rituals: list[Ritual], at: datetime, progress: Callable[[str], None]) -> list[Path]:
        kept = []
        for ritual in rituals:
            progress(f"{at.astimezone(UTC).isoformat()[:16]}Z {ritual.name}: running its {ritual.kind}")
            try:
                doc = {"ritual": ritual.name, "kind": ritual.kind, "at": at.isoformat(), "ok": True}
                doc["report"] = self.run_one(ritual, at)
            except (DomainError, OSError) as exc:  # a ritual that fails keeps its error as its report
                doc = {"ritual": ritual.name, "kind": ritual.kind, "at": at.isoformat(), "ok": False, "error": str(exc)}
            path = self.shelf.keep(ritual.name, at, doc)
            progress(f"  {'kept' if doc['ok'] else 'failed, kept'} {path}")
            kept.append(path)
        return kept

    def forever(self, progress: Callable[[str], None], stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            now = self.clock()
            upcoming = min(r.cron.next_after(now) for r in self.rituals)
            names = ", ".join(r.name for r in self.rituals if r.cron.matches(upcoming))
            progress(f"next: {names} at {upcoming.isoformat()[:16]}Z")
            while (wait := (upcoming - self.clock()).total_seconds()) > 0:
                if stop():
                    return
                self.sleep(min(wait, 30.0))
            self.run_due(upcoming, progress)
