"""The pattern recognizers a ``Redactor`` registers with Presidio's analyzer: Presidio's own, except where noted.

- ``EMAIL_ADDRESS``: Presidio's pattern, the domain checked against the public suffix list snapshot bundled with
  ``tldextract`` (never fetched).
- ``PHONE_NUMBER``: Presidio's ``PhoneRecognizer`` (python-phonenumbers), each number found in one region blanked
  out before the next region's pass.
- ``CREDIT_CARD``: every run of 13 to 19 digits, the digits separated by nothing or by up to three of space, tab,
  newline, ``.``, ``-``, ``/`` and ``_`` (so ``4111.1111.1111.1111``, ``4111_1111_1111_1111``,
  ``card4111111111111111``), that passes the Luhn checksum. Presidio's pattern (groups separated by one space or
  ``-``, between word boundaries) finds a subset of these.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CARD_DIGITS_MAX", "CARD_DIGITS_MIN", "CARD_SEPARATORS", "card_spans", "luhn_ok", "recognizer"]

CARD_DIGITS_MIN = 13
CARD_DIGITS_MAX = 19
CARD_SEPARATORS = " \t\n\r.\\-/_"
"""Characters that may stand between a card number's digits (as a regex class body), at most three in a row."""
CARD_SCORE = 0.3
"""The score Presidio gives its own card pattern."""
_DIGIT_RUN = re.compile(rf"[0-9]+(?:[{CARD_SEPARATORS}]{{1,3}}[0-9]+)*")
_GROUP = re.compile(r"[0-9]+")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each card number in ``text``: in each run of digit groups, from the left, the longest
    sequence of whole groups holding 13 to 19 digits that passes the Luhn checksum; the search goes on after it."""
    found: list[tuple[int, int]] = []
    for run in _DIGIT_RUN.finditer(text):
        groups = [(g.start(), g.end()) for g in _GROUP.finditer(text, run.start(), run.end())]
        i = 0
        while i < len(groups):
            hit = _longest_card(text, groups, i)
            if hit is None:
                i += 1
            else:
                found.append((groups[i][0], groups[hit][1]))
                i = hit + 1
    return found


def _longest_card(text: str, groups: list[tuple[int, int]], first: int) -> int | None:
    """The index of the last group of the longest card number starting at group ``first``, if any."""
    digits = ""
    candidates: list[tuple[int, str]] = []
    for j in range(first, len(groups)):
        digits += text[groups[j][0] : groups[j][1]]
        if len(digits) > CARD_DIGITS_MAX:
            break
        if len(digits) >= CARD_DIGITS_MIN:
            candidates.append((j, digits))
    for j, number in reversed(candidates):
        if luhn_ok(number):
            return j
    return None


def _card_recognizer() -> Any:
    from presidio_analyzer import RecognizerResult
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer

    class SeparatedCardRecognizer(CreditCardRecognizer):
        """Card numbers however their digits are grouped (``card_spans``); Presidio's pattern is not run, as
        every number it finds is found here too."""

        def analyze(
            self, text: str, entities: list[str], nlp_artifacts: Any = None, regex_flags: int | None = None
        ) -> list[Any]:
            return [RecognizerResult("CREDIT_CARD", s, e, CARD_SCORE) for s, e in card_spans(text)]

    return SeparatedCardRecognizer()


def _email_recognizer() -> Any:
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    # The bundled snapshot of the public suffix list: no cache directory, no URL, so it is never fetched.
    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return bool(extract(pattern_text).fqdn)

    return OfflineEmailRecognizer()


def _phone_recognizer() -> Any:
    import phonenumbers
    from presidio_analyzer import EntityRecognizer
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class MaskingPhoneRecognizer(PhoneRecognizer):
        """Presidio's phone recognizer (same regions, leniency, score), with each number found in one region
        blanked out before the next region's pass: a number in international form is parsed once, not once per
        region (and the second parse Presidio makes of each match, for its explanation, is skipped)."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            results: list[Any] = []
            masked = text
            leniency = 1 if self.leniency is None else int(self.leniency)
            for region in self.supported_regions:
                found = [
                    self._get_recognizer_result(match, masked, region, nlp_artifacts)  # type: ignore[no-untyped-call]
                    for match in phonenumbers.PhoneNumberMatcher(masked, region, leniency=leniency)
                ]
                for r in found:
                    masked = masked[: r.start] + "x" * (r.end - r.start) + masked[r.end :]
                results += found
            return list(EntityRecognizer.remove_duplicates(results))

    return MaskingPhoneRecognizer()


def recognizer(entity: str) -> Any:
    """A new recognizer of ``entity`` (a ``core.pii.PII_ENTITIES`` name)."""
    from presidio_analyzer import predefined_recognizers as pr

    if entity == "EMAIL_ADDRESS":
        return _email_recognizer()
    if entity == "PHONE_NUMBER":
        return _phone_recognizer()
    if entity == "CREDIT_CARD":
        return _card_recognizer()
    classes: dict[str, Any] = {
        "IBAN_CODE": pr.IbanRecognizer,
        "US_SSN": pr.UsSsnRecognizer,
        "IP_ADDRESS": pr.IpRecognizer,
        "CRYPTO": pr.CryptoRecognizer,
        "URL": pr.UrlRecognizer,
        "US_BANK_NUMBER": pr.UsBankRecognizer,
        "US_ITIN": pr.UsItinRecognizer,
        "US_PASSPORT": pr.UsPassportRecognizer,
        "US_DRIVER_LICENSE": pr.UsLicenseRecognizer,
        "UK_NHS": pr.NhsRecognizer,
        "MEDICAL_LICENSE": pr.MedicalLicenseRecognizer,
    }
    found = classes[entity]()
    if list(found.supported_entities) != [entity]:  # a Presidio upgrade renamed an entity: fail loudly
        raise RuntimeError(f"Presidio's recognizer for {entity} now reports {found.supported_entities}")
    return found
