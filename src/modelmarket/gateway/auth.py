"""API key authentication against the gateway's key snapshot (no database read on the hot path)."""

from __future__ import annotations

from modelmarket.accounts import Account
from modelmarket.core.errors import Unauthenticated
from modelmarket.gateway.state import GatewayState
from modelmarket.observability import note
from modelmarket.runtime.asgi import Scope, header

MAX_AUTHORIZATION_BYTES = 512
"""Longest Authorization header read: a key is ~46 characters; anything far longer is refused unread."""


async def authenticate(state: GatewayState, scope: Scope) -> Account:
    return (await authenticate_key(state, scope))[0]


async def authenticate_key(state: GatewayState, scope: Scope) -> tuple[Account, str | None]:
    """The caller's account and the id of the key it used."""
    raw = header(scope, b"authorization")
    if raw is None:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    if len(raw) > MAX_AUTHORIZATION_BYTES:
        raise Unauthenticated(f"malformed Authorization header: longer than {MAX_AUTHORIZATION_BYTES} bytes")
    scheme, _, token = raw.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
    found = await state.authenticate_key(token.strip())
    if found is None:
        raise Unauthenticated("invalid API key")
    note(account_id=found[0].id, key_id=found[1])
    return found
