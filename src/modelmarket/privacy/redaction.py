"""Redaction: personal data in text replaced by the name of its kind (``<EMAIL_ADDRESS>``) before a model sees it.

A ``Redactor`` serves one set of entities (``core.pii.PII_ENTITIES`` names). It runs Presidio's analyzer with
pattern recognizers only, over a no-op NLP engine: no spaCy pipeline is loaded and nothing is downloaded, ever.
The recognizers are Presidio's (``privacy/recognizers.py`` says where they differ: the e-mail domain checked
offline, phone numbers parsed once, card numbers however their digits are separated). Text is analysed folded
(``privacy/folding.py``: full-width forms, Unicode digits, spaces and dashes made plain, zero-width characters
dropped) and each finding mapped back to the characters it came from, so the text sent is the original with only
the findings replaced. Presidio's anonymizer replaces every finding; overlapping findings are merged first, so
every character any recognizer flagged is replaced.

Cost and bounds (``docs/privacy.md``): text is analysed in windows of ``WINDOW_CHARS`` (neighbours overlap by
``OVERLAP_CHARS``, so an entity up to that long is never cut), and the deadline is checked between windows: a call
stops within one window's work of it. Per 1,000 characters (``benchmarks/redaction.py``): plain prose about 0.1 ms;
a message with an e-mail address, a phone and a card number about 4 ms (three entities) or 9 ms (all fourteen); text
made of nothing but numbers about 10 ms. Windows without a digit skip the number recognizers, windows without an
``@`` the e-mail one; phone numbers, the costly part, are looked for last with every other finding blanked out.

Thread-safe: construction (which compiles every pattern by running it once) happens under a per-set lock in
``RedactorCache``; analysing and anonymizing keep no state between calls.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from modelmarket.core.errors import InvalidInput
from modelmarket.core.pii import PII_ENTITIES
from modelmarket.privacy import folding
from modelmarket.privacy.recognizers import recognizer

__all__ = [
    "OVERLAP_CHARS",
    "WINDOW_CHARS",
    "Redacted",
    "RedactionTimedOut",
    "Redactor",
    "RedactorCache",
    "check_entities",
]

WINDOW_CHARS = 2048
"""Characters analysed at a time: the deadline is checked between windows."""
OVERLAP_CHARS = 256
"""How far each window reaches into the next, so an entity up to this long is always seen whole."""
LANGUAGE = "en"
MAX_CACHED_REDACTORS = 64
"""Redactors kept (one per distinct set of entities); the least recently used one goes first."""

_NEEDS_DIGIT = frozenset(
    {"PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "US_BANK_NUMBER", "US_ITIN", "UK_NHS", "US_PASSPORT"}
)
"""Entities whose every pattern holds a digit: a window without one cannot contain them."""
_WARM_UP_TEXT = (
    "mail a.b@example.com, call +1 212-555-0187, card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, "
    "SSN 123-45-6789, 192.0.2.1, https://example.com/x, 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2, NHS 401 023 2137"
)


class RedactionTimedOut(InvalidInput):
    """The text took longer to redact than the deadline allows: the call is refused, never sent unredacted."""


@dataclass(frozen=True, slots=True)
class Redacted:
    text: str
    counts: Mapping[str, int] = field(default_factory=dict)
    """Replacements made, per entity (only entities found)."""

    @property
    def changed(self) -> bool:
        return bool(self.counts)


def check_entities(names: Iterable[str], where: str = "redact") -> tuple[str, ...]:
    """The names as a sorted tuple; an unknown or repeated one is refused, naming it."""
    seen: set[str] = set()
    unknown = []
    for name in names:
        if name not in PII_ENTITIES:
            unknown.append(name)
        elif name in seen:
            raise InvalidInput(f"{where}: {name!r} is listed twice")
        seen.add(name)
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:10])
        raise InvalidInput(
            f"{where}: unknown entit{'y' if len(unknown) == 1 else 'ies'} {shown} (known: {', '.join(PII_ENTITIES)})"
        )
    return tuple(sorted(seen))


class Redactor:
    """Finds and replaces ``entities`` in text. Build through ``RedactorCache`` (construction costs milliseconds and
    compiles patterns; a call costs what the module docstring says)."""

    def __init__(self, entities: Iterable[str]) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NoOpNlpEngine
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig

        self.entities = check_entities(entities)
        if not self.entities:
            raise InvalidInput("redact: name at least one entity")
        folding.warm()
        recognizers = [recognizer(e) for e in self.entities]
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANGUAGE])
        nlp = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
        self._analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=[LANGUAGE])
        self._anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
        self._operators = {"DEFAULT": OperatorConfig("replace")}  # "<ENTITY_TYPE>"
        self._digit_free = [e for e in self.entities if e not in _NEEDS_DIGIT]
        self.redact(_WARM_UP_TEXT)  # compiles every pattern now, not inside concurrent calls

    def _entities_for(self, window: str) -> list[str]:
        names = list(self.entities) if any(c.isdigit() for c in window) else list(self._digit_free)
        if "@" not in window and "EMAIL_ADDRESS" in names:
            names.remove("EMAIL_ADDRESS")
        return names

    def find(self, text: str, deadline: float | None = None) -> list[tuple[int, int, str, float]]:
        """(start, end, entity, score) of every finding in ``text`` as written, overlaps merged (sorted, disjoint).
        The text is analysed folded (``privacy/folding.py``: full-width forms, Unicode digits, spaces and dashes
        made plain, zero-width characters dropped); each finding is mapped back to the characters it came from."""
        folded = folding.fold(text)
        analysed = folded.text
        found: list[tuple[int, int, str, float]] = []
        start = 0
        while start < len(analysed):
            if deadline is not None and time.monotonic() > deadline:
                raise RedactionTimedOut(
                    f"redacting this text took longer than allowed (stopped after {start:,} of {len(analysed):,} "
                    "characters); send shorter text"
                )
            window = analysed[start : start + WINDOW_CHARS + OVERLAP_CHARS]
            last = start + WINDOW_CHARS >= len(analysed)
            for s, e, entity, score in self._window(window):
                if last or s < WINDOW_CHARS:
                    found.append((*folded.original_span(start + s, start + e), entity, score))
            start += WINDOW_CHARS
        return _merge(found)

    def _window(self, window: str) -> list[tuple[int, int, str, float]]:
        """Findings in one window. Phone numbers are looked for last, in the window with every other finding
        blanked out: a card or bank number is not parsed again, region by region, as a phone number candidate
        (that halves the cost of number-heavy text)."""
        names = self._entities_for(window)
        phones = "PHONE_NUMBER" in names
        if phones:
            names.remove("PHONE_NUMBER")
        out = []
        if names:
            for r in self._analyzer.analyze(window, language=LANGUAGE, entities=names):
                out.append((r.start, r.end, r.entity_type, float(r.score)))
        if phones:
            masked = window
            for s, e, _, _ in out:
                masked = masked[:s] + "x" * (e - s) + masked[e:]
            for r in self._analyzer.analyze(masked, language=LANGUAGE, entities=["PHONE_NUMBER"]):
                out.append((r.start, r.end, r.entity_type, float(r.score)))
        return out

    def redact(self, text: str, deadline: float | None = None) -> Redacted:
        """``text`` with every finding replaced by ``<ENTITY>``, and the count per entity. ``deadline`` is a
        ``time.monotonic()`` value: past it, ``RedactionTimedOut``."""
        if not text:
            return Redacted(text)
        return self._replace(text, self.find(text, deadline))

    def redact_prefix(self, text: str, limit_chars: int, deadline: float | None = None) -> Redacted:
        """The redacted text of ``text``'s first ``limit_chars`` characters, marked ``…`` when cut. An entity
        starting before the cut (and at most ``OVERLAP_CHARS`` long) is found whole and replaced whole: no part of
        one is left at the end."""
        if len(text) <= limit_chars:
            return self.redact(text, deadline)
        spans = [s for s in self.find(text[: limit_chars + OVERLAP_CHARS], deadline) if s[0] < limit_chars]
        end = max([limit_chars, *(e for _, e, _, _ in spans)])
        done = self._replace(text[:end], spans)
        return Redacted(done.text + "…", done.counts)

    def _replace(self, text: str, spans: list[tuple[int, int, str, float]]) -> Redacted:
        if not spans:
            return Redacted(text)
        from presidio_anonymizer.entities import RecognizerResult

        results = [RecognizerResult(entity, s, e, score) for s, e, entity, score in spans]
        out = self._anonymizer.anonymize(text, results, operators=self._operators)
        counts: dict[str, int] = {}
        for _, _, entity, _ in spans:
            counts[entity] = counts.get(entity, 0) + 1
        return Redacted(out.text, counts)


def _merge(found: list[tuple[int, int, str, float]]) -> list[tuple[int, int, str, float]]:
    """Overlapping findings become one span covering all of them, named by the highest-scoring one."""
    merged: list[tuple[int, int, str, float]] = []
    for s, e, entity, score in sorted(found):
        if merged and s < merged[-1][1]:
            ps, pe, pentity, pscore = merged[-1]
            best = (entity, score) if score > pscore else (pentity, pscore)
            merged[-1] = (ps, max(pe, e), best[0], best[1])
        else:
            merged.append((s, e, entity, score))
    return merged


class RedactorCache:
    """One ``Redactor`` per set of entities, built once and kept (at most ``MAX_CACHED_REDACTORS``, least recently
    used dropped). ``peek`` never waits; building one set (seconds, the first time: it imports Presidio) holds only
    that set's lock, so a caller of another set, or of ``peek``, never waits for it."""

    def __init__(self, max_size: int = MAX_CACHED_REDACTORS) -> None:
        self.max_size = max_size
        self._redactors: OrderedDict[frozenset[str], Redactor] = OrderedDict()
        self._lock = threading.Lock()
        """Guards ``_redactors``' order and ``_building``; held for dictionary operations only."""
        self._building: dict[frozenset[str], threading.Lock] = {}

    def peek(self, entities: Iterable[str]) -> Redactor | None:
        """The redactor for ``entities`` if it is built already: one dictionary read, no lock (safe on the event
        loop, even while another set is being built)."""
        return self._redactors.get(frozenset(entities))

    def get(self, entities: Iterable[str]) -> Redactor:
        """The redactor for ``entities``, built now if need be (blocking: call it off the event loop)."""
        key = frozenset(entities)
        found = self._redactors.get(key)
        if found is not None:
            with self._lock:
                if key in self._redactors:
                    self._redactors.move_to_end(key)
            return found
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one build per set; callers of the same set wait for it, nobody else does
            try:
                found = self._redactors.get(key)
                if found is None:
                    found = Redactor(key)
                    with self._lock:
                        self._redactors[key] = found
                        while len(self._redactors) > self.max_size:
                            self._redactors.popitem(last=False)
            finally:
                with self._lock:
                    self._building.pop(key, None)
        return found
