"""Catalogue search: free text, filters, sorts and pages over the models of a snapshot. Pure.

The edges (``GET /api/models``, ``modelmarket models search``) parse their parameters with ``parse_search``, give
each model its price per IU in force and its measured figures (``Listing``), call ``search``, and render the page
with ``views.model_summary``. So both answer the same question the same way.

- Text (``q``): case-insensitive words, every one of which must occur in the model's name, its tags
  (``views.tags_of``: task, modality, runtime, license) or its card (summary, description, intended use,
  limitations, training and evaluation data, metric names). Ranked: the models whose name holds more of the words
  first, then those whose tags hold more of the rest, then card-only matches.
- Filters: ``task``, ``modality``, ``protocol`` (``oip``, ``openai``), ``runtime``, ``license``, ``provider``
  (account name or id): equal, case-insensitive; ``max_price``: price per IU in force at most this (the reference
  price: the input price of split token prices, the first tier's price of tiers; currencies are not converted).
- Sorts: ``relevance`` (the default with ``q``), ``name`` (the default without), ``price`` (ascending),
  ``latency`` (measured p50, ascending; unmeasured models last in either order), ``popularity`` (calls in the last
  ``MEASURED_DAYS`` days, descending); ``order=asc|desc`` reverses the default. Ties: relevance, then name.
- Pages: ``limit`` (1..``LIMIT_MAX``) from ``offset``, or from an opaque ``cursor`` (the offset and a
  fingerprint of the search it was given for: a cursor of another search is refused).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, get_args

from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import decimal_text
from modelmarket.registry.catalogue import Catalogue, ModelEntry, VersionRecord
from modelmarket.registry.manifest import Manifest
from modelmarket.registry.protocols import PROTOCOLS, protocols_of
from modelmarket.registry.views import tags_of

LIMIT_DEFAULT = 20
LIMIT_MAX = 100
OFFSET_MAX = 1_000_000
"""Largest offset accepted (a page past the end is empty)."""
QUERY_MAX_CHARS = 200
QUERY_MAX_WORDS = 16
FILTER_MAX_CHARS = 200
"""Longest filter value (a task, license, provider ...)."""
CURSOR_MAX_CHARS = 64
MEASURED_DAYS = 7
"""The measured figures cover this many UTC days, today included."""
LATENCY_SAMPLE_MAX = 1000
"""Latency percentiles are taken over at most this many of a model's latest calls."""

RELEVANCE, NAME, PRICE, LATENCY, POPULARITY = "relevance", "name", "price", "latency", "popularity"
SORTS = (RELEVANCE, NAME, PRICE, LATENCY, POPULARITY)
ORDERS = ("asc", "desc")
_DESCENDING_BY_DEFAULT = frozenset({POPULARITY})
MODALITIES: tuple[str, ...] = get_args(Manifest.model_fields["modality"].annotation)
FILTERS = ("task", "modality", "protocol", "runtime", "license", "provider")
_WHOLE_RE = re.compile(r"[0-9]{1,9}")


class Measured(Protocol):
    """A model's figures from served calls (``metering.ports.ModelActivity`` is one)."""

    @property
    def calls(self) -> int: ...

    @property
    def latency_ms_p50(self) -> Decimal | None: ...

    @property
    def latency_ms_p95(self) -> Decimal | None: ...


class ModelMeasured(Measured, Protocol):
    @property
    def model_name(self) -> str: ...


class ActivitySource(Protocol):
    """Where measured figures come from (``metering.ports.UsageRepository`` is one)."""

    def model_activity(
        self, model_names: Collection[str], since_day: str, until_day: str, latency_sample_max: int
    ) -> Sequence[ModelMeasured]: ...


def measured_window(now: datetime) -> tuple[str, str]:
    """The first and last UTC day (``YYYY-MM-DD``) the measured figures cover: ``MEASURED_DAYS``, today included."""
    today = now.astimezone(UTC).date()
    return (today - timedelta(days=MEASURED_DAYS - 1)).isoformat(), today.isoformat()


def read_measured(source: ActivitySource, model_names: Collection[str], now: datetime) -> dict[str, Measured]:
    """The measured figures of ``model_names`` as of ``now``, by model (a model with no calls is left out)."""
    since_day, until_day = measured_window(now)
    rows = source.model_activity(model_names, since_day, until_day, LATENCY_SAMPLE_MAX)
    return {row.model_name: row for row in rows}


def measured_json(measured: Measured | None) -> dict[str, Any]:
    """``{"latency_ms_p50": "12.3" | null, "latency_ms_p95": ... | null, "calls_7d": N}``."""

    def text(value: Decimal | None) -> str | None:
        return None if value is None else decimal_text(value)

    if measured is None:
        return {"latency_ms_p50": None, "latency_ms_p95": None, f"calls_{MEASURED_DAYS}d": 0}
    return {
        "latency_ms_p50": text(measured.latency_ms_p50),
        "latency_ms_p95": text(measured.latency_ms_p95),
        f"calls_{MEASURED_DAYS}d": measured.calls,
    }


# -- the query --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A parsed search. Text words and filter values are case-folded."""

    words: tuple[str, ...] = ()
    task: str | None = None
    modality: str | None = None
    protocol: str | None = None
    runtime: str | None = None
    license: str | None = None
    provider: str | None = None
    max_price: Decimal | None = None
    sort: str = NAME
    descending: bool = False
    limit: int = LIMIT_DEFAULT
    offset: int = 0

    def fingerprint(self) -> str:
        """What a cursor is bound to: the text, filters and order (not the page size or position)."""
        doc = [
            list(self.words),
            [getattr(self, name) for name in FILTERS],
            None if self.max_price is None else str(self.max_price),
            self.sort,
            self.descending,
        ]
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


def parse_search(params: Mapping[str, str]) -> SearchQuery:
    """A search from request parameters (``q``, the filters, ``max_price``, ``sort``, ``order``, ``limit``,
    ``cursor`` or ``offset``); an empty value counts as not given, unknown names are ignored. A bad value raises
    ``InvalidInput`` naming the parameter."""

    def get(name: str) -> str | None:
        value = params.get(name)
        return None if value is None else (value.strip() or None)

    words = _words(get("q") or "")
    f = {name: _filter(name, get(name)) for name in (*FILTERS, "sort", "order")}
    for name, allowed in (("modality", MODALITIES), ("protocol", PROTOCOLS), ("sort", SORTS), ("order", ORDERS)):
        if f[name] is not None and f[name] not in allowed:
            raise InvalidInput(f"{name}: {get(name)!r} is not one of {', '.join(allowed)}")
    sort = f["sort"] or (RELEVANCE if words else NAME)
    query = SearchQuery(
        words=words,
        task=f["task"],
        modality=f["modality"],
        protocol=f["protocol"],
        runtime=f["runtime"],
        license=f["license"],
        provider=f["provider"],
        max_price=_max_price(get("max_price")),
        sort=sort,
        descending=f["order"] == "desc" if f["order"] is not None else sort in _DESCENDING_BY_DEFAULT,
        limit=_whole("limit", get("limit"), LIMIT_DEFAULT, 1, LIMIT_MAX),
    )
    cursor, offset = get("cursor"), get("offset")
    if cursor is not None and offset is not None:
        raise InvalidInput("cursor, offset: give one of them, not both")
    if cursor is not None:
        return replace(query, offset=decode_cursor(cursor, query))
    return replace(query, offset=_whole("offset", offset, 0, 0, OFFSET_MAX))


def _words(text: str) -> tuple[str, ...]:
    if len(text) > QUERY_MAX_CHARS:
        raise InvalidInput(f"q: {len(text)} characters; at most {QUERY_MAX_CHARS}")
    words = tuple(dict.fromkeys(text.casefold().split()))
    if len(words) > QUERY_MAX_WORDS:
        raise InvalidInput(f"q: {len(words)} words; at most {QUERY_MAX_WORDS}")
    return words


def _filter(name: str, value: str | None) -> str | None:
    if value is not None and len(value) > FILTER_MAX_CHARS:
        raise InvalidInput(f"{name}: {len(value)} characters; at most {FILTER_MAX_CHARS}")
    return None if value is None else value.casefold()


def _max_price(value: str | None) -> Decimal | None:
    if value is None:
        return None
    shown = value if len(value) <= 40 else value[:40] + "..."
    try:
        price = Decimal(value) if len(value) <= 40 else None
    except InvalidOperation:
        price = None
    if price is None or not price.is_finite():
        raise InvalidInput(f"max_price: {shown!r} is not a decimal number (write it like 0.005)")
    if price < 0:
        raise InvalidInput(f"max_price: {shown!r} must not be negative")
    return price


def _whole(name: str, value: str | None, default: int, least: int, most: int) -> int:
    if value is None:
        return default
    if not _WHOLE_RE.fullmatch(value) or not least <= int(value) <= most:
        raise InvalidInput(f"{name}: {value[:40]!r} is not a whole number from {least} to {most:,}")
    return int(value)


def encode_cursor(offset: int, query: SearchQuery) -> str:
    """The opaque cursor of the page of ``query`` that starts at ``offset``."""
    raw = f"{offset}:{query.fingerprint()}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, query: SearchQuery) -> int:
    """The offset in ``cursor``; ``InvalidInput`` for a cursor this search did not give."""
    bad = InvalidInput("cursor: not a cursor from this API (take next_cursor from the previous page as it is)")
    if len(cursor) > CURSOR_MAX_CHARS:
        raise bad
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise bad from None
    offset, _, fingerprint = raw.partition(":")
    if not _WHOLE_RE.fullmatch(offset) or int(offset) > OFFSET_MAX or not fingerprint:
        raise bad
    if fingerprint != query.fingerprint():
        raise InvalidInput(
            "cursor: it belongs to another search (other q, filters, sort or order); start again without cursor"
        )
    return int(offset)


# -- the search -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listing:
    """A model as searched: its catalogue entry, its price per IU in force, its measured figures (None: no calls)."""

    entry: ModelEntry
    price_per_iu: Decimal
    measured: Measured | None = None
    latest: VersionRecord = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "latest", self.entry.resolve(None))

    @property
    def name(self) -> str:
        return self.entry.name


def listings(
    catalogue: Catalogue, price_of: Mapping[str, Decimal] | None, measured: Mapping[str, Measured]
) -> list[Listing]:
    """Every published model of ``catalogue``; ``price_of``: the price per IU in force by model (None, or a model
    left out: the manifest's price)."""
    out = []
    for name in catalogue.names():
        entry = catalogue.get(name)
        price = (price_of or {}).get(name)
        if price is None:
            price = entry.resolve(None).manifest.pricing.price_per_iu
        out.append(Listing(entry, price, measured.get(name)))
    return out


@dataclass(frozen=True, slots=True)
class _Texts:
    name: str
    tags: str
    card: str


class SearchTexts:
    """The case-folded text searched in each version, made once per version (versions are immutable). Keep one
    across searches to skip the work; it holds the versions of the last search (and a few more) only."""

    def __init__(self) -> None:
        self._by_version: dict[str, _Texts] = {}

    def of(self, record: VersionRecord) -> _Texts:
        found = self._by_version.get(record.id)
        if found is None:
            m = record.manifest
            card = [m.card.summary, m.card.description, m.card.intended_use, m.card.limitations]
            card += [m.card.training_data, m.card.evaluation_data, *(x.name for x in m.card.metrics)]
            found = _Texts(
                name=m.name.casefold(),
                tags=" ".join(tags_of(m)),
                card="\n".join(text for text in card if text).casefold(),
            )
            self._by_version[record.id] = found
        return found

    def retain(self, version_ids: Collection[str]) -> None:
        if len(self._by_version) > 2 * len(version_ids) + 64:
            self._by_version = {k: v for k, v in self._by_version.items() if k in version_ids}


Rank = tuple[int, int, int]


def rank(words: Sequence[str], texts: _Texts) -> Rank | None:
    """None unless every word occurs in the name, tags or card; else a sort key, lower first: (0 for the name
    itself, words not in the name, words in neither the name nor the tags)."""
    not_in_name = card_only = 0
    for word in words:
        if word in texts.name:
            continue
        not_in_name += 1
        if word in texts.tags:
            continue
        if word not in texts.card:
            return None
        card_only += 1
    exact = 0 if words and " ".join(words) == texts.name.replace("-", " ") else 1
    return exact, not_in_name, card_only


def matches(listing: Listing, query: SearchQuery) -> bool:
    """Whether ``listing`` passes every filter of ``query`` (the text is ``rank``'s)."""
    m = listing.latest.manifest
    checks = (
        (query.task, m.task),
        (query.modality, m.modality),
        (query.runtime, m.runtime),
        (query.license, m.license),
    )
    if any(wanted is not None and wanted != value.casefold() for wanted, value in checks):
        return False
    if query.protocol is not None and query.protocol not in protocols_of(m):
        return False
    providers = (m.provider.casefold(), listing.entry.provider_account_id.casefold())
    if query.provider is not None and query.provider not in providers:
        return False
    return query.max_price is None or listing.price_per_iu <= query.max_price


@dataclass(frozen=True, slots=True)
class SearchPage:
    listings: list[Listing]
    total: int
    """Models that match, on every page."""
    next_offset: int | None
    """Where the next page starts; None on the last page."""


def search(items: Iterable[Listing], query: SearchQuery, texts: SearchTexts | None = None) -> SearchPage:
    """The page of ``items`` that match ``query``, in its order. Deterministic: the same items give the same
    pages, so walking the pages yields each match once."""
    texts = texts or SearchTexts()
    found: list[tuple[Listing, Rank]] = []
    seen: set[str] = set()
    for item in items:
        seen.add(item.latest.id)
        if not matches(item, query):
            continue
        r = rank(query.words, texts.of(item.latest))
        if r is not None:
            found.append((item, r))
    texts.retain(seen)
    ordered = _ordered(found, query)
    end = query.offset + query.limit
    return SearchPage(ordered[query.offset : end], len(ordered), end if end < len(ordered) else None)


def _ordered(found: list[tuple[Listing, Rank]], query: SearchQuery) -> list[Listing]:
    found.sort(key=lambda x: x[0].name)  # ties last by name, then by relevance (stable sorts)
    found.sort(key=lambda x: x[1])
    sort, reverse = query.sort, query.descending
    if sort == RELEVANCE and not query.words:
        sort = NAME
    if sort == NAME:
        found.sort(key=lambda x: x[0].name, reverse=reverse)
    elif sort == RELEVANCE:
        found.sort(key=lambda x: x[1], reverse=reverse)
    elif sort == PRICE:
        found.sort(key=lambda x: x[0].price_per_iu, reverse=reverse)
    elif sort == POPULARITY:
        found.sort(key=lambda x: 0 if x[0].measured is None else x[0].measured.calls, reverse=reverse)
    else:  # latency: unmeasured models last, whatever the order
        timed = [x for x in found if _p50(x[0]) is not None]
        timed.sort(key=lambda x: _p50(x[0]) or Decimal(0), reverse=reverse)
        found = timed + [x for x in found if _p50(x[0]) is None]
    return [x[0] for x in found]


def _p50(item: Listing) -> Decimal | None:
    return None if item.measured is None else item.measured.latency_ms_p50
