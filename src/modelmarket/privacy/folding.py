"""Text folded for analysis: the look-alike forms of characters a pattern is written for, made plain, with a map of
every position back to the text as written (replacements land on the original text; the rest of it is sent as
written).

What is folded (each character on its own, ``docs/privacy.md``):

- compatibility forms (NFKC): full-width letters, digits and signs (U+FF14, U+FF20, U+FF0E), mathematical digits
  (U+1D7D2), ligatures (U+FB01), circled and other decorated forms;
- any Unicode decimal digit (Arabic-Indic, Devanagari, ...) to its ASCII digit;
- every Unicode space (no-break, thin, ideographic, ...) to a space, line and paragraph separators to a newline;
- every dash (hyphens, the non-breaking hyphen, en and em dashes, the minus sign) to ``-``;
- format characters (zero-width spaces and joiners, the soft hyphen, direction marks, tags) removed.

ASCII text is analysed as it is (no copy). Building the tables reads the Unicode database once per process
(about 0.3 s, in ``Redactor``'s construction, off the event loop).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass
from functools import cache

__all__ = ["Folded", "fold"]

_SCANNED = (range(0x80, 0x30000), range(0xE0000, 0xE1000))
"""Code points looked at when building the tables: every plane holding a character that folds (the others are
unassigned or private use)."""
_DASHES = frozenset("\u2212\ufe63\uff0d")


def _plain(c: str) -> str:
    category = unicodedata.category(c)
    if category == "Zs":
        return " "
    if category in ("Zl", "Zp"):
        return "\n"
    if category == "Cf":
        return ""
    if category == "Pd" or c in _DASHES:
        return "-"
    if category == "Nd":
        return str(unicodedata.decimal(c))
    return c


def _folded_char(c: str) -> str:
    plain = _plain(c)
    if plain != c:
        return plain
    return "".join(_plain(x) for x in unicodedata.normalize("NFKC", c))


@dataclass(frozen=True, slots=True)
class _Tables:
    same_length: dict[int, str]
    """Code point -> the one character it folds to (for ``str.translate``)."""
    resizing: dict[int, str]
    """Code point -> what it folds to when that is not one character (removed, or several)."""
    resizing_chars: frozenset[str]


@cache
def _tables() -> _Tables:
    same: dict[int, str] = {}
    resizing: dict[int, str] = {}
    for block in _SCANNED:
        for cp in block:
            c = chr(cp)
            if unicodedata.category(c) in ("Cn", "Co", "Cs"):
                continue
            out = _folded_char(c)
            if out != c:
                (same if len(out) == 1 else resizing)[cp] = out
    return _Tables(same, resizing, frozenset(chr(cp) for cp in resizing))


def warm() -> None:
    """Build the tables now (a constructor's job: never inside a call on the event loop)."""
    _tables()


@dataclass(frozen=True, slots=True)
class Folded:
    """``text`` as analysed, and where each of its positions was in the original."""

    text: str
    folded_starts: tuple[int, ...] = ()
    """Start (in ``text``) of each resized character's output, ascending; empty when positions are unchanged."""
    folded_ends: tuple[int, ...] = ()
    original_starts: tuple[int, ...] = ()
    """Position in the original of each resized character (it is one character long there)."""

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that ``text[start:end]`` came from (``end > start``)."""
        if not self.folded_starts:
            return start, end
        return self._original(start), self._original(end - 1) + 1

    def _original(self, at: int) -> int:
        """Position in the original of the character at ``at`` in ``text``."""
        k = bisect_right(self.folded_starts, at) - 1
        if k < 0:
            return at
        if at < self.folded_ends[k]:  # inside what one character expanded to
            return self.original_starts[k]
        return at - self.folded_ends[k] + self.original_starts[k] + 1


def fold(text: str) -> Folded:
    """``text`` folded for analysis (the module docstring says how), with its map back."""
    if text.isascii():
        return Folded(text)
    tables = _tables()
    same = text.translate(tables.same_length)  # one character for one: positions unchanged
    if tables.resizing_chars.isdisjoint(same):
        return Folded(same)
    present = "".join(re.escape(c) for c in sorted(tables.resizing_chars.intersection(same)))
    places = re.finditer(f"[{present}]", same)
    pieces: list[str] = []
    folded_starts: list[int] = []
    folded_ends: list[int] = []
    original_starts: list[int] = []
    done = 0  # in the original
    length = 0  # of the folded text so far
    for match in places:
        at = match.start()
        pieces.append(same[done:at])
        length += at - done
        out = tables.resizing[ord(same[at])]
        pieces.append(out)
        folded_starts.append(length)
        folded_ends.append(length + len(out))
        original_starts.append(at)
        length += len(out)
        done = at + 1
    pieces.append(same[done:])
    return Folded("".join(pieces), tuple(folded_starts), tuple(folded_ends), tuple(original_starts))
