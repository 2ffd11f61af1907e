"""Routes applied from a file and upstream providers: stored, listed, removed, every change audited.

``apply`` is whole-file: every route in the file is created or updated (a route whose canonical JSON is unchanged
is left as it is), routes not in the file are left alone unless ``prune``. The check against the catalogue (a
route must not shadow a published model; its targets and fallbacks must name published models) is injected: the
composition root passes the registry's catalogue, a test a set of names.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from modelmarket.audit import chain as audit
from modelmarket.core.clock import Clock
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.routing.engine import RouteTable
from modelmarket.routing.ports import RoutingUnitOfWork, StoredRoute
from modelmarket.routing.spec import Provider, RouteSpec, make_provider, model_name, parse_routes

PublishedModels = Collection[str] | Callable[[], Collection[str]]
"""The published model names, or a callable returning them (called once per ``apply``)."""
RouteAction = Literal["created", "changed", "unchanged", "removed"]
ProviderAction = Literal["created", "changed", "unchanged"]


@dataclass(frozen=True, slots=True)
class RouteChange:
    name: str
    action: RouteAction
    revision: int
    """The route's revision after the change (for 'removed': the one it had)."""
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"route": self.name, "action": self.action, "revision": self.revision, "digest": self.digest}


@dataclass(frozen=True, slots=True)
class ProviderChange:
    provider: Provider
    action: ProviderAction
    changed: tuple[tuple[str, str | None, str | None], ...] = ()
    """(field, before, after) of each field that changed."""

    def to_json(self) -> dict[str, Any]:
        return {
            **self.provider.to_json(),
            "action": self.action,
            "changed": {f: {"before": b, "after": a} for f, b, a in self.changed},
        }


def _names(models: PublishedModels) -> Collection[str]:
    return set(models() if callable(models) else models)


def check_against_catalogue(specs: list[RouteSpec], published: Collection[str]) -> None:
    """Refuse a route that would shadow a published model and a reference to a model that is not published."""
    for i, spec in enumerate(specs):
        if spec.name in published:
            raise InvalidInput(
                f"routes[{i}].name: {spec.name!r} is a published model; a route of that name would shadow it "
                "(choose another name)"
            )
        listed = [(f"targets[{j}].model", t.model) for j, t in enumerate(spec.targets)]
        listed += [(f"fallbacks[{j}]", ref) for j, ref in enumerate(spec.fallbacks)]
        for where, ref in listed:
            if model_name(ref) not in published:
                raise InvalidInput(
                    f"routes[{i}].{where}: model {model_name(ref)!r} is not published (route {spec.name!r}); "
                    "publish it first (`modelmarket publish DIR`) or fix the name"
                )


class RoutingService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[RoutingUnitOfWork],
        clock: Clock,
        published_models: PublishedModels | None = None,
    ) -> None:
        self.uow = uow
        self.clock = clock
        self.published_models = published_models
        """The default catalogue check of ``apply`` (None: no check unless ``apply`` is given one)."""

    # -- routes ------------------------------------------------------------------------------------------------

    def apply(
        self,
        text: str | bytes,
        *,
        prune: bool = False,
        models: PublishedModels | None = None,
        actor: str = "cli",
        source: str = "routes file",
    ) -> list[RouteChange]:
        """Apply every route in the file (all or nothing): new ones get revision 1, changed ones the next
        revision, identical ones nothing; with ``prune`` the stored routes not in the file are removed."""
        specs = parse_routes(text, source)
        check = models if models is not None else self.published_models
        if check is not None:
            check_against_catalogue(specs, _names(check))
        results: list[RouteChange] = []
        at = self.clock()
        with self.uow.write(Lock.ROUTING) as uow:
            for spec in specs:
                results.append(self._put(uow, spec, at, actor))
            if prune:
                declared = {s.name for s in specs}
                for stored in uow.routing.routes():
                    if stored.name not in declared:
                        results.append(self._remove(uow, stored, at, actor))
        return results

    def _put(self, uow: RoutingUnitOfWork, spec: RouteSpec, at: datetime, actor: str) -> RouteChange:
        current = uow.routing.route(spec.name)
        if current is not None and current.digest == spec.digest:
            return RouteChange(spec.name, "unchanged", current.revision, current.digest)
        revision = 1 if current is None else current.revision + 1
        uow.routing.put_route(StoredRoute(spec, revision, at.isoformat()))
        action: RouteAction = "created" if current is None else "changed"
        audit.append(
            uow.audit,
            actor=actor,
            action=f"route.{action}",
            subject=spec.name,
            payload={"revision": revision, "digest": spec.digest, "spec": _audit_json(spec.to_json())},
            now=at,
        )
        return RouteChange(spec.name, action, revision, spec.digest)

    def _remove(self, uow: RoutingUnitOfWork, stored: StoredRoute, at: datetime, actor: str) -> RouteChange:
        uow.routing.remove_route(stored.name)
        audit.append(
            uow.audit,
            actor=actor,
            action="route.removed",
            subject=stored.name,
            payload={"revision": stored.revision, "digest": stored.digest},
            now=at,
        )
        return RouteChange(stored.name, "removed", stored.revision, stored.digest)

    def set_weights(self, name: str, weights: Mapping[str, int], *, actor: str = "cli") -> RouteChange:
        """Give a weighted route's targets new weights (by their ``model`` reference; every target, each 1 to
        1,000,000), as a new revision of the route, audited like any change (``route.changed``)."""
        with self.uow.write(Lock.ROUTING) as uow:
            stored = uow.routing.route(name)
            if stored is None:
                raise NotFound(f"no route named {name!r}")
            spec = stored.spec
            if spec.strategy != "weighted":
                raise InvalidInput(f"route {name!r} is {spec.strategy}: only a weighted route has weights")
            if set(weights) != {t.model for t in spec.targets}:
                raise InvalidInput(
                    f"route {name!r}: a weight for each of its targets ({', '.join(t.model for t in spec.targets)})"
                )
            doc = spec.to_json()
            doc["targets"] = [{"model": t["model"], "weight": int(weights[t["model"]])} for t in doc["targets"]]
            return self._put(uow, RouteSpec.model_validate(doc), self.clock(), actor)

    def routes(self) -> list[StoredRoute]:
        with self.uow.read() as uow:
            return uow.routing.routes()

    def route(self, name: str) -> StoredRoute:
        with self.uow.read() as uow:
            stored = uow.routing.route(name)
        if stored is None:
            raise NotFound(f"no route named {name!r} (declare it in a routes file: `modelmarket routes apply FILE`)")
        return stored

    def remove_route(self, name: str, *, actor: str = "cli") -> RouteChange:
        with self.uow.write(Lock.ROUTING) as uow:
            stored = uow.routing.route(name)
            if stored is None:
                raise NotFound(f"no route named {name!r} (`modelmarket routes list` shows them)")
            return self._remove(uow, stored, self.clock(), actor)

    def table(self) -> RouteTable:
        """Every stored route, as the gateway's router reads them (``Router.update``)."""
        return RouteTable.from_routes(r.spec for r in self.routes())

    # -- providers ---------------------------------------------------------------------------------------------

    def add_provider(
        self,
        name: str,
        base_url: str,
        *,
        protocol: str = "openai",
        api_key_env: str | None = None,
        actor: str = "cli",
    ) -> ProviderChange:
        """Add a provider, or set an existing one to exactly these values (an omitted ``api_key_env`` clears it);
        the same values change nothing."""
        wanted = make_provider(name, base_url, protocol, api_key_env)
        at = self.clock()
        with self.uow.write(Lock.ROUTING) as uow:
            current = uow.routing.provider(wanted.name)
            if current is not None and current.same_settings(wanted):
                return ProviderChange(current, "unchanged")
            created_at = at.isoformat() if current is None else current.created_at
            provider = replace(wanted, created_at=created_at, updated_at=at.isoformat())
            uow.routing.put_provider(provider)
            changed = _provider_diff(current, provider)
            action: ProviderAction = "created" if current is None else "changed"
            audit.append(
                uow.audit,
                actor=actor,
                action=f"provider.{action}",
                subject=provider.name,
                payload={  # the variable's name only: the key's value is never read here
                    "base_url": provider.base_url,
                    "protocol": provider.protocol,
                    "api_key_env": provider.api_key_env,
                },
                now=at,
            )
        return ProviderChange(provider, action, changed)

    def providers(self) -> list[Provider]:
        with self.uow.read() as uow:
            return uow.routing.providers()

    def provider(self, name: str) -> Provider:
        with self.uow.read() as uow:
            found = uow.routing.provider(name)
        if found is None:
            raise NotFound(f"no provider named {name!r} (add it with `modelmarket providers add NAME --base-url URL`)")
        return found

    def remove_provider(self, name: str, *, actor: str = "cli") -> Provider:
        at = self.clock()
        with self.uow.write(Lock.ROUTING) as uow:
            found = uow.routing.provider(name)
            if found is None:
                raise NotFound(f"no provider named {name!r} (`modelmarket providers list` shows them)")
            uow.routing.remove_provider(name)
            audit.append(
                uow.audit,
                actor=actor,
                action="provider.removed",
                subject=name,
                payload={"base_url": found.base_url, "protocol": found.protocol},
                now=at,
            )
        return found


def _audit_json(value: Any) -> Any:
    """The canonical JSON with its seconds as Decimals (an audit payload holds no floats)."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _audit_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_audit_json(v) for v in value]
    return value


def _provider_diff(before: Provider | None, after: Provider) -> tuple[tuple[str, str | None, str | None], ...]:
    if before is None:
        return ()
    fields = (
        ("base_url", before.base_url, after.base_url),
        ("protocol", before.protocol, after.protocol),
        ("api_key_env", before.api_key_env, after.api_key_env),
    )
    return tuple(f for f in fields if f[1] != f[2])
