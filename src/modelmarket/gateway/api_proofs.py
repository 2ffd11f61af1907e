"""``GET /api/usage/events/{event_id}/proof`` (routed in ``gateway/api.py``): the inclusion proof of one of the
caller's usage events.

The id is the ``x-request-id`` of a billed answer. The answer is the proof document ``modelmarket audit prove``
prints (``audit.proofs.InclusionProof.to_json``), checked offline with the platform's public key by
``modelmarket audit check-proof`` or any RFC 6962 implementation (docs/audit-proofs.md). Another account's event
is not found, exactly like an unknown one. An event not applied yet is applied first (a bounded catch-up of the
event log, as ``/api/usage`` does), so a proof can be asked for right after the answer.
"""

from __future__ import annotations

from typing import Any

from modelmarket.audit import AuditService
from modelmarket.core.errors import NotFound
from modelmarket.metering.usage import CATCH_UP_MAX_RECORDS, UsageService


def usage_event_proof(proofs: AuditService, usage: UsageService, event_id: str, account_id: str) -> dict[str, Any]:
    """The proof document of ``account_id``'s usage event ``event_id`` (blocking: run it in a worker thread)."""
    try:
        return proofs.prove_usage_event(event_id, account_id).to_json()
    except NotFound:
        usage.metering.catch_up(CATCH_UP_MAX_RECORDS)  # perhaps only not applied yet: apply the log, look again
        return proofs.prove_usage_event(event_id, account_id).to_json()
