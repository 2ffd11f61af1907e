"""``GET /api/usage/events/{event_id}/proof`` (routed in ``gateway/api.py``): the inclusion proof of one of the
caller's usage events.

The id is the ``x-request-id`` of a billed answer. The answer is the proof document ``modelmarket audit prove``
prints (``audit.proofs.InclusionProof.to_json``), checked offline with the platform's public key by
``modelmarket audit check-proof`` or any RFC 6962 implementation (docs/audit-proofs.md). Another account's event
is not found, exactly like an unknown one. An event in the event log but not applied yet is applied first (a
bounded catch-up of the log, as ``/api/usage`` does), so a proof can be asked for right after the answer; an id
that is neither applied nor in the log is answered 404 at once, without taking the metering lock.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from modelmarket.audit import AuditService
from modelmarket.core.errors import NotFound
from modelmarket.metering.ports import KeyLookup
from modelmarket.metering.usage import CATCH_UP_MAX_RECORDS, UsageService


@runtime_checkable
class _LooksUpIds(Protocol):
    """An event log that can say whether an event id is in it (``EventLog.lookup``; a test's stand-in may not)."""

    def lookup(self, event_id: str) -> KeyLookup: ...


def usage_event_proof(proofs: AuditService, usage: UsageService, event_id: str, account_id: str) -> dict[str, Any]:
    """The proof document of ``account_id``'s usage event ``event_id`` (blocking: run it in a worker thread)."""
    try:
        return proofs.prove_usage_event(event_id, account_id).to_json()
    except NotFound:
        if not _logged_not_applied(proofs, usage, event_id):
            raise  # unknown, or applied and another account's: not found either way
        usage.metering.catch_up(CATCH_UP_MAX_RECORDS)  # not applied yet: apply the log, look again
        return proofs.prove_usage_event(event_id, account_id).to_json()


def _logged_not_applied(proofs: AuditService, usage: UsageService, event_id: str) -> bool:
    """True when ``event_id`` is in the event log but not applied yet: only then is catching up worth the
    metering lock. A log that cannot look ids up is caught up as before."""
    if not 0 < len(event_id) <= 64 or proofs.usage_event_applied(event_id):
        return False
    metering = usage.metering
    for partition in range(metering.partitions):  # the id does not name its account: each partition is asked
        event_log = metering.open_partition(partition)
        try:
            if not isinstance(event_log, _LooksUpIds):
                return True
            if event_log.lookup(event_id).billed:
                return True
        finally:
            event_log.close()
    return False
