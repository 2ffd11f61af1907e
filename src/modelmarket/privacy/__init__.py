"""Privacy: personal data redacted from model inputs (per model and per key), and calls kept only for accounts that
opt in, redacted of every entity. See docs/privacy.md."""

from modelmarket.privacy.ports import CapturedCall, KeyPolicy
from modelmarket.privacy.redaction import Redacted, RedactionTimedOut, Redactor, RedactorCache, check_entities
from modelmarket.privacy.service import CallToKeep, PrivacyPolicies, PrivacyService

__all__ = [
    "CallToKeep",
    "CapturedCall",
    "KeyPolicy",
    "PrivacyPolicies",
    "PrivacyService",
    "Redacted",
    "RedactionTimedOut",
    "Redactor",
    "RedactorCache",
    "check_entities",
]
