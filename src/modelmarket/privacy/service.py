"""Privacy policies and call capture: the per-key redaction policy, the account's opt-in to keep its calls, and
the calls kept (redacted of every entity, bounded per call and per account). Every change is audited.

The gateway never reads these per call: it loads ``policies()`` with its key snapshot (``gateway/state.py``), so a
change takes effect within ``MODELMARKET_CACHE_REFRESH_S``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from modelmarket.audit import chain as audit
from modelmarket.core.clock import Clock
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.core.pii import PII_ENTITIES
from modelmarket.core.uow import UnitOfWorkFactory
from modelmarket.privacy.ports import CapturedCall, KeyPolicy, PrivacyUnitOfWork
from modelmarket.privacy.redaction import Redacted, RedactionTimedOut, RedactorCache, check_entities

log = logging.getLogger(__name__)

CAPTURED_LIST_MAX = 1000
"""Most captured calls one ``captured`` call returns."""
CAPTURE_REDACT_TIMEOUT_S = 5.0
"""Longest time redacting one kept input or output may take (off the call's path); longer: not kept."""
NOT_KEPT = "<not kept: redacting it took too long>"


@dataclass(frozen=True, slots=True)
class _Key:
    id: str
    account_id: str


@dataclass(frozen=True, slots=True)
class PrivacyPolicies:
    """What the gateway needs per call, in memory: each key's entities and the accounts that keep their calls."""

    by_key: Mapping[str, frozenset[str]] = field(default_factory=dict)
    capture: frozenset[str] = frozenset()

    def for_key(self, key_id: str | None) -> frozenset[str]:
        if key_id is None:
            return frozenset()
        return self.by_key.get(key_id, frozenset())


@dataclass(frozen=True, slots=True)
class CallToKeep:
    """A served call of an account that opted in, as the gateway hands it over (not yet redacted)."""

    id: str
    account_id: str
    model: str
    version: str
    created_at: str
    input_text: str
    output_text: str


class PrivacyService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[PrivacyUnitOfWork],
        clock: Clock,
        *,
        capture_max_chars: int,
        capture_max_calls: int,
        redactors: RedactorCache | None = None,
    ) -> None:
        self.uow = uow
        self.clock = clock
        self.capture_max_chars = capture_max_chars
        self.capture_max_calls = capture_max_calls
        self.redactors = redactors or RedactorCache()

    # -- key policies -------------------------------------------------------------------------------------------

    def set_key_policy(
        self, key_id: str, entities: Iterable[str], *, account: str | None = None, actor: str = "cli"
    ) -> KeyPolicy:
        """Redact ``entities`` from every call made with key ``key_id``. With ``account``, the key must be one of
        that account's (a caller acting for an account never reaches another's keys)."""
        names = check_entities(list(entities), "redact")
        if not names:
            raise InvalidInput("redact: name at least one entity (or clear the key's policy)")
        now = self.clock()
        with self.uow.write() as uow:
            key, owner = self._key(uow, key_id, account)
            policy = KeyPolicy(key.id, key.account_id, names, now.isoformat())
            uow.privacy.put_key_policy(policy)
            audit.append(
                uow.audit,
                actor=actor,
                action="privacy.key_policy_set",
                subject=owner,
                payload={"key_id": key.id, "redact": list(names)},
                now=now,
            )
        return policy

    def clear_key_policy(self, key_id: str, *, account: str | None = None, actor: str = "cli") -> bool:
        """Remove the key's policy; False when it had none (nothing is audited then)."""
        now = self.clock()
        with self.uow.write() as uow:
            key, owner = self._key(uow, key_id, account)
            if not uow.privacy.remove_key_policy(key.id):
                return False
            audit.append(
                uow.audit,
                actor=actor,
                action="privacy.key_policy_cleared",
                subject=owner,
                payload={"key_id": key.id},
                now=now,
            )
        return True

    def key_policies(self, account: str | None = None) -> list[KeyPolicy]:
        with self.uow.read() as uow:
            policies = uow.privacy.key_policies()
            if account is None:
                return policies
            found = uow.accounts.by_name(account)
            if found is None:
                raise NotFound(f"no account named {account!r}")
            return [p for p in policies if p.account_id == found.id]

    @staticmethod
    def _key(uow: PrivacyUnitOfWork, key_id: str, account: str | None) -> tuple[_Key, str]:
        key = uow.accounts.key(key_id)
        owner = None if key is None else uow.accounts.by_id(key.account_id)
        if key is None or owner is None or (account is not None and owner.name != account):
            where = "" if account is None else f" of account {account!r}"
            raise NotFound(f"no API key with id {key_id!r}{where} (see `modelmarket keys list ACCOUNT`)")
        if key.revoked_at is not None:
            raise InvalidInput(f"API key {key_id!r} is revoked: a policy on it would never apply")
        return _Key(key.id, key.account_id), owner.name

    # -- capture ------------------------------------------------------------------------------------------------

    def set_capture(self, account: str, on: bool, *, actor: str = "cli") -> bool:
        """Opt the account in (``on``) or out of keeping its calls; opting out also deletes what was kept. True
        when something changed."""
        now = self.clock()
        with self.uow.write() as uow:
            found = uow.accounts.by_name(account)
            if found is None:
                raise NotFound(f"no account named {account!r} (see `modelmarket accounts list`)")
            changed = uow.privacy.set_capture(found.id, on, now.isoformat())
            forgotten = 0 if on else uow.privacy.forget_captured(found.id)
            if changed or forgotten:
                audit.append(
                    uow.audit,
                    actor=actor,
                    action="privacy.capture_on" if on else "privacy.capture_off",
                    subject=account,
                    payload={"account_id": found.id, "deleted_calls": forgotten},
                    now=now,
                )
        return changed or bool(forgotten)

    def capturing(self) -> list[str]:
        """The names of the accounts that opted in to keeping their calls."""
        with self.uow.read() as uow:
            names = []
            for account_id in uow.privacy.capture_accounts():
                found = uow.accounts.by_id(account_id)
                names.append(found.name if found is not None else account_id)
        return sorted(names)

    def captured(self, account: str, limit: int = 100) -> list[CapturedCall]:
        if not 1 <= limit <= CAPTURED_LIST_MAX:
            raise InvalidInput(f"limit: must be from 1 to {CAPTURED_LIST_MAX}, not {limit}")
        with self.uow.read() as uow:
            found = uow.accounts.by_name(account)
            if found is None:
                raise NotFound(f"no account named {account!r}")
            return uow.privacy.captured(found.id, limit)

    def keep(self, calls: Sequence[CallToKeep]) -> int:
        """Store the calls of accounts that opted in, each input and output redacted of every entity and cut to
        ``capture_max_chars``; each account keeps its ``capture_max_calls`` latest. CPU-bound: call it off the
        event loop. Returns how many were stored."""
        if not calls:
            return 0
        kept = [
            CapturedCall(
                c.id,
                c.account_id,
                c.model,
                c.version,
                c.created_at,
                self.scrub(c.input_text),
                self.scrub(c.output_text),
            )
            for c in calls
        ]
        try:
            return self._store(kept)
        except Exception as exc:  # one bad call must not lose the others' (of every account): one at a time
            log.warning("storing %d captured calls at once failed (%s); storing them one by one", len(kept), _kind(exc))
        stored = 0
        for call in kept:
            try:
                stored += self._store([call])
            except Exception as exc:  # never the error's text: a database error quotes the values it was given
                log.error("a captured call of account %s was not kept (%s)", call.account_id, _kind(exc))
        return stored

    def _store(self, kept: list[CapturedCall]) -> int:
        with self.uow.write() as uow:
            capturing = set(uow.privacy.capture_accounts())  # opted out since the call: not kept
            kept = [c for c in kept if c.account_id in capturing]
            uow.privacy.add_captured(kept, self.capture_max_calls)
        return len(kept)

    def scrub(self, text: str) -> str:
        """``text`` redacted of every entity, at most about ``capture_max_chars`` of it (an entity that starts
        before the cut is replaced whole). NUL characters are dropped first: a database may refuse them (PostgreSQL
        does), and text spelled with NULs between its letters (UTF-16) is read for what it says."""
        redactor = self.redactors.get(PII_ENTITIES)
        try:
            done: Redacted = redactor.redact_prefix(
                text.replace("\x00", ""), self.capture_max_chars, time.monotonic() + CAPTURE_REDACT_TIMEOUT_S
            )
        except RedactionTimedOut:
            return NOT_KEPT
        return done.text

    def policies(self) -> PrivacyPolicies:
        """Every key's policy and the accounts that keep their calls (what the gateway loads with its keys)."""
        with self.uow.read() as uow:
            by_key = {p.key_id: frozenset(p.entities) for p in uow.privacy.key_policies()}
            capture = frozenset(uow.privacy.capture_accounts())
        return PrivacyPolicies(by_key, capture)


def _kind(exc: BaseException) -> str:
    return type(exc).__name__
