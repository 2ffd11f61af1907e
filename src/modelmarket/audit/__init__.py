"""Audit: a SHA-256 hash chain over every state change, appended in the same transaction as the change."""

from modelmarket.audit.chain import append, head, list_records, verify
from modelmarket.audit.records import GENESIS_HASH, AuditRecord, VerifyResult, canonical_json, record_hash
from modelmarket.audit.service import AuditService

__all__ = [
    "GENESIS_HASH",
    "AuditRecord",
    "AuditService",
    "VerifyResult",
    "append",
    "canonical_json",
    "head",
    "list_records",
    "record_hash",
    "verify",
]
