"""Dashboard sessions: a sign-in with an API key becomes a random secret held in the browser's cookie.

Only the secret's SHA-256 is stored (with the account, the key it was made with, the CSRF token of its forms and
when it expires): a copy of the store cannot be replayed as a cookie, and the API key itself is never kept. Every
sign-in makes a new secret (a session id planted before sign-in is never adopted); signing out deletes the row, so
the cookie stops working at once. Expired rows are deleted at every sign-in; an account keeps at most
``MAX_SESSIONS_PER_ACCOUNT`` (its oldest are ended first). Sign-in and sign-out are audited: who opened the
dashboard with which key is a question the audit log should answer.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from modelmarket.accounts.ports import Account, SessionsUnitOfWork, StoredSession
from modelmarket.audit import chain as audit
from modelmarket.core.clock import Clock
from modelmarket.core.errors import InvalidInput, NotFound, ensure
from modelmarket.core.uow import UnitOfWorkFactory

SECRET_BYTES = 32
"""Randomness of a session's secret (and of its CSRF token)."""
SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
"""What a cookie's secret looks like (``secrets.token_urlsafe(32)``); anything else is not looked up."""
MAX_SESSIONS_PER_ACCOUNT = 50
"""Sessions one account may hold at once; a sign-in beyond it ends the account's oldest."""
MAX_TTL_S = 30 * 24 * 3600.0


def session_id(secret: str) -> str:
    """The stored id of the session whose cookie holds ``secret``."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def stamp(moment: datetime) -> str:
    """A fixed-width UTC time: stored times compare as text in the same order as in time."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class NewSession:
    secret: str
    """For the cookie only: shown once, never stored."""
    session: StoredSession


class SessionService:
    def __init__(self, uow: UnitOfWorkFactory[SessionsUnitOfWork], clock: Clock, ttl_s: float) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise InvalidInput(f"session_ttl_s: {ttl_s} must be more than 0 and at most {MAX_TTL_S:.0f} seconds")
        self.uow = uow
        self.clock = clock
        self.ttl_s = ttl_s

    def sign_in(self, account: Account, key_id: str, replaces: str | None = None) -> NewSession:
        """A new session of ``account`` made with key ``key_id``; ``replaces``: the secret of the browser's
        previous session, ended in the same transaction."""
        now = self.clock()
        secret = secrets.token_urlsafe(SECRET_BYTES)
        ensure(SECRET_RE.fullmatch(secret) is not None, "a session secret has the shape cookies are checked for")
        session = StoredSession(
            id=session_id(secret),
            account_id=account.id,
            key_id=key_id,
            csrf_token=secrets.token_urlsafe(SECRET_BYTES),
            created_at=stamp(now),
            expires_at=stamp(now + timedelta(seconds=self.ttl_s)),
        )
        with self.uow.write() as uow:
            key = uow.accounts.key(key_id)
            if key is None or key.account_id != account.id or key.revoked_at is not None:
                raise NotFound(f"no active API key {key_id!r} of account {account.name!r}")
            uow.sessions.delete_expired(session.created_at)
            if replaces is not None and SECRET_RE.fullmatch(replaces):
                uow.sessions.delete(session_id(replaces))
            held = uow.sessions.of_account(account.id)
            for old in held[: max(0, len(held) - MAX_SESSIONS_PER_ACCOUNT + 1)]:
                uow.sessions.delete(old.id)
            uow.sessions.add(session)
            audit.append(
                uow.audit,
                actor=f"account:{account.id}",
                action="session.signed_in",
                subject=account.name,
                payload={"key_id": key_id, "expires_at": session.expires_at},
                now=now,
            )
        return NewSession(secret, session)

    def get(self, secret: str) -> StoredSession | None:
        """The live session whose cookie holds ``secret``; None when there is none or it expired."""
        if not SECRET_RE.fullmatch(secret):
            return None
        with self.uow.read() as uow:
            found = uow.sessions.get(session_id(secret))
        if found is None or found.expires_at <= stamp(self.clock()):
            return None
        return found

    def sign_out(self, secret: str, account: Account) -> bool:
        """End the session whose cookie holds ``secret`` (audited); False when there was none."""
        if not SECRET_RE.fullmatch(secret):
            return False
        now = self.clock()
        with self.uow.write() as uow:
            found = uow.sessions.get(session_id(secret))
            if found is None or found.account_id != account.id:
                return False
            uow.sessions.delete(found.id)
            audit.append(
                uow.audit,
                actor=f"account:{account.id}",
                action="session.signed_out",
                subject=account.name,
                payload={"key_id": found.key_id},
                now=now,
            )
        return True

    def end(self, session_id_: str) -> None:
        """Delete a session that may no longer be used (its key was revoked); the revocation is the audited act."""
        with self.uow.write() as uow:
            uow.sessions.delete(session_id_)

    def purge_expired(self) -> int:
        with self.uow.write() as uow:
            return uow.sessions.delete_expired(stamp(self.clock()))
