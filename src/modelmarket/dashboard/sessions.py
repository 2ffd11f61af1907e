"""The dashboard's side of sessions: the cookies, CSRF checks, where a sign-in may send the browser back to, and
the budget of failed sign-ins per client.

A request's session is read from the ``mm_session`` cookie (``accounts.sessions.SessionService``: only the
secret's SHA-256 is stored) and then held against the gateway's key snapshot: a session whose key was revoked
ends there and then, whatever its expiry says. Every POST carries the session's CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``, compared in constant time) and must not come from another site
(``Origin``, ``Sec-Fetch-Site``). The sign-in form, which has no session yet, uses a double-submit token: the
same random value in a cookie of its own and in the form.

Failed sign-ins are budgeted per client (``SignInBudget``: an IPv4 address, or an IPv6 address's /64, which one
host usually holds whole). An attempt is counted as a failure when it arrives, before anything is awaited, and is
given back only when it signs in or no key was looked at (an expired form, a body over the bound): parallel
attempts cannot all pass the check while the first ones are still waiting for their key to be looked up.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from modelmarket.accounts import Account, KeyIndex
from modelmarket.accounts.sessions import SECRET_RE, SessionService
from modelmarket.dashboard.web import Session

SESSION_COOKIE = "mm_session"
SIGNIN_COOKIE = "mm_signin"
"""The sign-in form's double-submit CSRF token (no session exists yet)."""
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SIGNIN_COOKIE_MAX_AGE_S = 3600
SIGNIN_MAX_BODY_BYTES = 4096
"""A sign-in form is a key and a token: a body larger than this is refused unread."""
SIGNIN_FAILURES_MAX = 10
SIGNIN_FAILURE_WINDOW_S = 300.0
"""A client (``signin_client``) may fail ``SIGNIN_FAILURES_MAX`` sign-ins per window; then it waits."""
SIGNIN_CLIENTS_TRACKED_MAX = 10_000
"""Clients whose failures are remembered (the least recent are forgotten first): bounded memory."""
SIGNIN_IPV6_PREFIX = 64
"""IPv6 clients are budgeted by this prefix of their address: a host is usually given a whole /64."""
CLIENT_MAX_CHARS = 100
NEXT_MAX_CHARS = 2000
_SAFE_FETCH_SITES = frozenset({"same-origin", "none"})


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: a path on this site only (never ``//host``, ``/\\host`` or ``scheme:``)."""
    if not raw or len(raw) > NEXT_MAX_CHARS or not raw.startswith("/") or raw.startswith("//"):
        return "/"
    if "\\" in raw or any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        return "/"
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return "/"
    return raw


def tokens_match(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an empty or missing token never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8", "replace"))


def cross_site(request: Request) -> str | None:
    """Why a state-changing request is refused as coming from another site, or None. Browsers send ``Origin``
    on POSTs and ``Sec-Fetch-Site``; clients that send neither (scripts, tests) still need the CSRF token."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in _SAFE_FETCH_SITES:
        return f"Sec-Fetch-Site is {site!r}"
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin == "null" or urlsplit(origin).netloc != host:
            return f"Origin {origin[:100]!r} is not this site"
    return None


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, secret: str, max_age_s: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=max_age_s,
        path="/",
        secure=is_https(request),
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.set_cookie(
        SESSION_COOKIE, "", max_age=0, path="/", secure=is_https(request), httponly=True, samesite="strict"
    )


def signin_token(request: Request) -> tuple[str, bool]:
    """The sign-in form's token: the browser's, when its cookie holds a well-formed one; else a new one (True:
    set it with ``set_signin_cookie``)."""
    held = request.cookies.get(SIGNIN_COOKIE, "")
    if SECRET_RE.fullmatch(held):
        return held, False
    return secrets.token_urlsafe(32), True


def set_signin_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        SIGNIN_COOKIE,
        token,
        max_age=SIGNIN_COOKIE_MAX_AGE_S,
        path="/signin",
        secure=is_https(request),
        httponly=True,
        samesite="strict",
    )


def signin_client(host: str | None) -> str:
    """Whose failure budget a sign-in from ``host`` spends: an IPv4 address as it is; an IPv6 address by its
    /64 (``2001:db8:1:2::/64``), an IPv4-mapped one as its IPv4 address; anything else (a Unix socket's name, no
    address) as given, bounded."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:CLIENT_MAX_CHARS]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, SIGNIN_IPV6_PREFIX), strict=False))
    return str(address)


class SignInBudget:
    """Failed sign-ins per client in a sliding window (in memory, bounded).

    A sign-in is counted when it arrives (``reserve``, called before the request awaits anything) and given back
    when it succeeds or never reached the key check (``give_back``): attempts in flight count, so parallel attempts
    cannot overrun the budget.
    """

    def __init__(
        self,
        failures_max: int = SIGNIN_FAILURES_MAX,
        window_s: float = SIGNIN_FAILURE_WINDOW_S,
        clients_max: int = SIGNIN_CLIENTS_TRACKED_MAX,
    ) -> None:
        self.failures_max = failures_max
        self.window_s = window_s
        self.clients_max = clients_max
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_s(self, client: str) -> float:
        """How long ``client`` must wait before it may try again (0: it may try now)."""
        times = self._failures.get(client)
        if times is None:
            return 0.0
        now = time.monotonic()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) < self.failures_max:
            return 0.0
        return times[0] + self.window_s - now

    def reserve(self, client: str) -> float:
        """Count one attempt of ``client`` as failed, now; returns its stamp for ``give_back``. Call it only when
        ``wait_s`` is 0, with no await between the two."""
        times = self._failures.pop(client, None) or deque(maxlen=self.failures_max)
        stamp = time.monotonic()
        times.append(stamp)
        self._failures[client] = times
        while len(self._failures) > self.clients_max:
            self._failures.popitem(last=False)
        return stamp

    def give_back(self, client: str, stamp: float) -> None:
        """Uncount the attempt ``reserve`` stamped; nothing if it has left the window already."""
        times = self._failures.get(client)
        if times is not None and stamp in times:
            times.remove(stamp)


class KeyAccounts:
    """Active key id -> account, from the gateway's key snapshot (rebuilt when the snapshot object changes)."""

    def __init__(self) -> None:
        self._index: KeyIndex | None = None
        self._by_key_id: Mapping[str, Account] = {}

    def of(self, index: KeyIndex) -> Mapping[str, Account]:
        if index is not self._index:
            self._by_key_id = {key_id: index.by_hash[h] for h, key_id in index.key_ids.items() if h in index.by_hash}
            self._index = index
        return self._by_key_id


class Sessions:
    """Reads a request's session and ends the ones whose key is no longer active."""

    def __init__(self, service: SessionService, key_index: Callable[[], KeyIndex]) -> None:
        self.service = service
        self.keys = KeyAccounts()
        self.key_index = key_index
        """The gateway's current key snapshot (``GatewayState.keys.value``), read on every request."""

    async def of(self, request: Request) -> Session | None:
        secret = request.cookies.get(SESSION_COOKIE)
        if not secret:
            return None
        stored = await asyncio.to_thread(self.service.get, secret)
        if stored is None:
            return None
        account = self.keys.of(self.key_index()).get(stored.key_id)
        if account is None or account.id != stored.account_id:  # the key was revoked: the session ends now
            await asyncio.to_thread(self.service.end, stored.id)
            return None
        return Session(stored.id, account, stored.key_id, stored.csrf_token, stored.expires_at)
