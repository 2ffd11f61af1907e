"""The kinds of personal data a redaction policy may name (Presidio's entity names for its pattern recognizers)."""

from __future__ import annotations

PII_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "CRYPTO",
    "URL",
    "US_BANK_NUMBER",
    "US_ITIN",
    "US_PASSPORT",
    "US_DRIVER_LICENSE",
    "UK_NHS",
    "MEDICAL_LICENSE",
)
"""Every entity a ``redact:`` list may name. ``privacy/`` maps each to a pattern recognizer (no NLP model)."""
