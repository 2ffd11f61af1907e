"""What routing needs from storage: routes and providers (``RoutingRepository``) and the unit of work holding
them with the audit chain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from modelmarket.audit.ports import AuditRepository
from modelmarket.routing.spec import Provider, RouteSpec


@dataclass(frozen=True, slots=True)
class StoredRoute:
    spec: RouteSpec
    revision: int
    """1 when created, +1 for every change."""
    updated_at: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def digest(self) -> str:
        return self.spec.digest

    def to_json(self) -> dict[str, Any]:
        return {**self.spec.to_json(), "digest": self.digest, "revision": self.revision, "updated_at": self.updated_at}


class RoutingRepository(Protocol):
    def routes(self) -> list[StoredRoute]:
        """Every route, by name."""
        ...

    def route(self, name: str) -> StoredRoute | None: ...

    def put_route(self, route: StoredRoute) -> None:
        """Insert or replace by name."""
        ...

    def remove_route(self, name: str) -> bool:
        """Delete it; False when there was none."""
        ...

    def providers(self) -> list[Provider]:
        """Every provider, by name."""
        ...

    def provider(self, name: str) -> Provider | None: ...

    def put_provider(self, provider: Provider) -> None:
        """Insert or replace by name."""
        ...

    def remove_provider(self, name: str) -> bool:
        """Delete it; False when there was none."""
        ...


class RoutingUnitOfWork(Protocol):
    @property
    def routing(self) -> RoutingRepository: ...

    @property
    def audit(self) -> AuditRepository: ...
