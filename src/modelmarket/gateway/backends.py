"""Where a version's calls go: its own runner (through the supervisor's pool), or an upstream provider's server
(``runtime: upstream-openai`` / ``upstream-oip``) through a pool per provider.

An upstream's API key is read from the environment variable the provider names, at call time: it is never
stored, logged or echoed in an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelmarket.core.errors import NotFound, NotReady
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.runtime.pool import RunnerPool

UPSTREAM_OPENAI = "upstream-openai"
UPSTREAM_OIP = "upstream-oip"
UPSTREAMS = (UPSTREAM_OPENAI, UPSTREAM_OIP)


class ProviderLike(Protocol):
    name: str
    base_url: str
    protocol: str
    api_key_env: str | None


class Pools(Protocol):
    async def pool_for(self, version: VersionRecord) -> Any: ...


@dataclass(frozen=True, slots=True)
class Backend:
    pool: Any
    """A ``RunnerPool`` (or anything with its ``request``/``stream``)."""
    prefix: str
    """Path prefix of the API on that server: ``/v1`` for an OpenAI server, ``""`` for OIP's ``/v2``."""
    model: str
    """The model's name on that server."""
    headers: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)  # holds the provider's key
    upstream: str | None = None
    """The provider's name for an upstream, None for our own runner."""

    def describe(self) -> str:
        return f"provider {self.upstream!r}" if self.upstream else "its runner"

    def redact(self, text: str) -> str:
        """``text`` with the credentials this backend is sent cut out (an upstream may quote them back)."""
        for _, value in self.headers:
            secret = value.decode("latin-1").removeprefix("Bearer ")
            if secret:
                text = text.replace(secret, "[redacted]")
        return text


def is_upstream(version: VersionRecord) -> bool:
    return version.manifest.runtime in UPSTREAMS


class Backends:
    def __init__(
        self,
        runners: Pools,
        providers: Callable[[], Mapping[str, ProviderLike]],
        *,
        max_connections: int,
        timeout_s: float,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.runners = runners
        self.providers = providers
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.environ = environ
        self._pools: dict[tuple[str, str], tuple[RunnerPool, str]] = {}

    async def backend(self, version: VersionRecord) -> Backend:
        runtime = version.manifest.runtime
        if runtime not in UPSTREAMS:
            pool = await self.runners.pool_for(version)
            return Backend(pool, "/v1", version.model_name)
        params = version.manifest.parameters
        name = str(params.get("provider", ""))
        provider = self.providers().get(name)
        if provider is None:
            raise NotReady(
                f"model {version.ref} is served by provider {name!r}, which is not registered "
                "(modelmarket providers add)"
            )
        pool, prefix = self._pool(provider)
        headers: list[tuple[bytes, bytes]] = []
        if provider.api_key_env:
            key = self.environ.get(provider.api_key_env)
            if not key:
                raise NotReady(
                    f"provider {provider.name!r} needs its API key in the environment variable "
                    f"{provider.api_key_env}, which is not set for the gateway"
                )
            if not key.isascii() or not key.isprintable() or " " in key:
                raise NotReady(
                    f"provider {provider.name!r}: the API key in {provider.api_key_env} is malformed (it must be"
                    " printable ASCII without spaces)"
                )
            headers.append((b"authorization", b"Bearer " + key.encode("ascii")))
        return Backend(pool, prefix, str(params.get("model", version.model_name)), tuple(headers), provider.name)

    def _pool(self, provider: ProviderLike) -> tuple[RunnerPool, str]:
        key = (provider.name, provider.base_url)
        found = self._pools.get(key)
        if found is None:
            try:
                found = RunnerPool.for_url(provider.base_url, self.max_connections, self.timeout_s)
            except ValueError as exc:
                raise NotFound(f"provider {provider.name!r}: {exc}") from None
            self._pools[key] = found
        return found

    async def close(self) -> None:
        for pool, _ in self._pools.values():
            await pool.close()
        self._pools.clear()
