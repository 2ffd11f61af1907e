"""Routes and providers as declared: the routes file (YAML), its validation, the canonical form and its digest.

A route is a model name callers use that answers with one of several catalogue models (its targets), chosen by a
strategy, with fallbacks tried after them. The routes file is read strictly (``ManifestLoader``: no aliases, no
duplicate keys, plain integers) and every error names the route and the field
(``routes[0].targets[1].weight: ...``). A route's version is the SHA-256 of its canonical JSON (``digest``).

A provider is an upstream server (OpenAI-compatible or OIP). Its API key is never stored: only the name of the
environment variable the gateway reads it from when it calls (``Provider.api_key``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelmarket.core.errors import InvalidInput
from modelmarket.registry.manifest import NAME_RE, SEMVER_RE, load_declared_list

MAX_ROUTES_FILE_BYTES = 256 * 1024
MAX_ROUTES = 200
MAX_TARGETS = 16
MAX_FALLBACKS = 8
MAX_WEIGHT = 1_000_000
MAX_RETRY_ATTEMPTS = 5
MAX_BACKOFF_MS = 10_000
MAX_TIMEOUT_S = 600.0
MAX_BREAKER_FAILURES = 100
MAX_COOLDOWN_S = 3600.0
DEFAULT_BACKOFF_MS = 100
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_BREAKER_FAILURES = 3
DEFAULT_COOLDOWN_S = 30.0
MAX_REF_CHARS = 63 + 1 + 63
MIN_SECONDS = 0.001
Strategy = Literal["weighted", "lowest-latency", "lowest-price", "least-busy"]
STRATEGIES: tuple[str, ...] = ("weighted", "lowest-latency", "lowest-price", "least-busy")

PROVIDER_NAME_RE = NAME_RE
API_KEY_ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}\Z")
MAX_BASE_URL_CHARS = 500
ProviderProtocol = Literal["openai", "oip"]
PROTOCOLS: tuple[str, ...] = ("openai", "oip")
_SHOWN = 40


def _shown(value: object) -> str:
    text = str(value)
    return repr(text) if len(text) <= _SHOWN else repr(text[:_SHOWN]) + "..."


def _whole(value: Any, low: int, high: int) -> int:
    """A whole number in [low, high], written as a plain YAML integer (not a float, a bool or text)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number between {low} and {high}, not {_shown(value)}")
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}, got {value}")
    return value


def _seconds(value: Any, high: float) -> float:
    """A number of seconds in [MIN_SECONDS, high] (a millisecond at least: more than 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number of seconds (0 < s <= {high:g}), not {_shown(value)}")
    if not MIN_SECONDS <= value <= high:
        raise ValueError(f"must be more than 0 (at least {MIN_SECONDS}) and at most {high:g} seconds, got {value}")
    return float(value)


def check_model_ref(ref: Any) -> str:
    """``model[@version-or-alias]`` with the catalogue's naming rules; the model name itself is ``model_name``."""
    if not isinstance(ref, str) or not 0 < len(ref) <= MAX_REF_CHARS:
        raise ValueError(f"must be a catalogue reference model[@version-or-alias], not {_shown(ref)}")
    name, at, version = ref.partition("@")
    if not NAME_RE.match(name):
        raise ValueError(f"{_shown(name)} is not a model name (lowercase letters, digits and '-', 1-63)")
    if at and not (SEMVER_RE.match(version) or NAME_RE.match(version)):
        raise ValueError(f"{_shown(ref)}: after '@' write a version (1.0.0) or an alias (stable)")
    return ref


def model_name(ref: str) -> str:
    """The model a reference names: ``smollm2@1.0.0`` -> ``smollm2``."""
    return ref.partition("@")[0]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    model: str
    """A catalogue reference ``model[@version-or-alias]``."""
    weight: int = 1
    """Weighted routes only: this target's share is weight / the sum of the weights."""

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> str:
        return check_model_ref(value)

    @field_validator("weight", mode="before")
    @classmethod
    def _weight(cls, value: Any) -> int:
        return _whole(value, 1, MAX_WEIGHT)


class Retries(_Strict):
    attempts: int = 0
    """Extra attempts on the same target before moving on to the next one."""
    backoff_ms: int = DEFAULT_BACKOFF_MS
    """The wait before the first extra attempt; doubled for each one after it."""

    @field_validator("attempts", mode="before")
    @classmethod
    def _attempts(cls, value: Any) -> int:
        return _whole(value, 0, MAX_RETRY_ATTEMPTS)

    @field_validator("backoff_ms", mode="before")
    @classmethod
    def _backoff(cls, value: Any) -> int:
        return _whole(value, 0, MAX_BACKOFF_MS)


class CircuitBreaker(_Strict):
    failures: int = DEFAULT_BREAKER_FAILURES
    """Consecutive failed calls that open a target's circuit."""
    cooldown_s: float = DEFAULT_COOLDOWN_S
    """How long an open circuit stays open before one trial call is let through."""

    @field_validator("failures", mode="before")
    @classmethod
    def _failures(cls, value: Any) -> int:
        return _whole(value, 1, MAX_BREAKER_FAILURES)

    @field_validator("cooldown_s", mode="before")
    @classmethod
    def _cooldown(cls, value: Any) -> float:
        return _seconds(value, MAX_COOLDOWN_S)


class RouteSpec(_Strict):
    """One route as written in the routes file; ``to_json`` is its canonical form, ``digest`` its version."""

    name: str
    strategy: Strategy = "weighted"
    sticky: bool = True
    targets: tuple[Target, ...]
    fallbacks: tuple[str, ...] = ()
    retries: Retries = Field(default_factory=Retries)
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Per attempt."""
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        if isinstance(value, str) and "@" in value:
            raise ValueError(
                f"{_shown(value)}: a route name is a plain model name without '@' "
                "(callers add @version only to published models)"
            )
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise ValueError(f"{_shown(value)} must be 1-63 lowercase letters, digits and '-' (a model name)")
        return value

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, value: Any) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"{_shown(value)} is not a strategy (one of {', '.join(STRATEGIES)})")
        return str(value)

    @field_validator("sticky", mode="before")
    @classmethod
    def _sticky(cls, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {_shown(value)}")
        return value

    @field_validator("targets", mode="before")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or not 0 < len(value) <= MAX_TARGETS:
            raise ValueError(f"must list 1 to {MAX_TARGETS} targets, each a mapping such as {{model: NAME, weight: 1}}")
        return value

    @field_validator("fallbacks", mode="before")
    @classmethod
    def _fallbacks(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or len(value) > MAX_FALLBACKS:
            raise ValueError(
                f"must be a list of at most {MAX_FALLBACKS} catalogue references, e.g. [smollm2-135m-instruct@1.0.0]"
            )
        return value

    @field_validator("fallbacks", mode="after")
    @classmethod
    def _fallback_refs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, ref in enumerate(value):
            try:
                check_model_ref(ref)
            except ValueError as exc:
                raise ValueError(f"[{i}]: {exc}") from None
        return value

    @field_validator("timeout_s", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        return _seconds(value, MAX_TIMEOUT_S)

    @model_validator(mode="after")
    def _consistent(self) -> RouteSpec:
        if self.strategy != "weighted":
            if "sticky" in self.model_fields_set:
                raise ValueError(f"sticky: only a weighted route is sticky (this one is {self.strategy}); remove it")
            for i, target in enumerate(self.targets):
                if "weight" in target.model_fields_set:
                    raise ValueError(
                        f"targets.{i}.weight: only a weighted route has weights (this one is {self.strategy}); "
                        "remove it"
                    )
        seen: dict[str, int] = {}
        listed = [(f"targets.{i}.model", t.model) for i, t in enumerate(self.targets)]
        listed += [(f"fallbacks.{i}", ref) for i, ref in enumerate(self.fallbacks)]
        for index, (where, ref) in enumerate(listed):
            if model_name(ref) == self.name:
                raise ValueError(f"{where}: a route cannot name itself ({ref!r})")
            if ref in seen:
                raise ValueError(f"{where}: {ref!r} is already listed at {_where(_parts(listed[seen[ref]][0]))[1:]}")
            seen[ref] = index
        return self

    @property
    def refs(self) -> tuple[str, ...]:
        """Every catalogue reference: the targets in declared order, then the fallbacks."""
        return (*(t.model for t in self.targets), *self.fallbacks)

    def backoff_s(self, attempt: int) -> float:
        """The wait before extra attempt ``attempt`` (1-based) on the same target: backoff_ms, doubled per attempt.
        Attempt 0 (the first call) waits nothing; past ``MAX_RETRY_ATTEMPTS`` the wait stops growing."""
        if attempt <= 0:
            return 0.0
        return self.retries.backoff_ms * (1 << (min(attempt, MAX_RETRY_ATTEMPTS) - 1)) / 1000

    def to_json(self) -> dict[str, Any]:
        """The canonical form: every field with its default written out (weights and stickiness only for a
        weighted route), so equal routes have equal digests however they were written."""
        weighted = self.strategy == "weighted"
        return {
            "name": self.name,
            "strategy": self.strategy,
            **({"sticky": self.sticky} if weighted else {}),
            "targets": [{"model": t.model, **({"weight": t.weight} if weighted else {})} for t in self.targets],
            "fallbacks": list(self.fallbacks),
            "retries": {"attempts": self.retries.attempts, "backoff_ms": self.retries.backoff_ms},
            "timeout_s": self.timeout_s,
            "circuit_breaker": {
                "failures": self.circuit_breaker.failures,
                "cooldown_s": self.circuit_breaker.cooldown_s,
            },
        }

    def canonical_json(self) -> bytes:
        return orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RouteSpec:
        return cls.model_validate(dict(doc))


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _parts(dotted: str) -> tuple[int | str, ...]:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


_MESSAGES = {
    "extra_forbidden": "is not a field here (see docs/routing.md for the format)",
    "missing": "is required",
    "model_type": "must be a mapping (field: value, ...)",
    "string_type": "must be text",
}


def _error_text(exc: ValidationError) -> tuple[str, str]:
    """(field path such as ``.targets[1].weight``, message) of the first error, with paths a validator named in
    its message (``targets.1.weight: ...``) folded into the path."""
    err = exc.errors()[0]
    path = _where(tuple(err["loc"]))
    message = _MESSAGES.get(err["type"]) or str(err["msg"]).removeprefix("Value error, ")
    head, sep, rest = message.partition(": ")
    if sep and re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)*", head):
        path, message = path + _where(_parts(head)), rest
    elif message.startswith("[") and sep and re.fullmatch(r"\[\d+\]", head):
        path, message = path + head, rest
    return path, message


def parse_routes(text: str | bytes, source: str = "routes file") -> list[RouteSpec]:
    """Routes from YAML ``{routes: [...]}``; errors name the route and the field
    (``routes[0].targets[1].weight: must be between 1 and 1000000, got 0 (route 'chat')``)."""
    items = load_declared_list(text, "routes", source, MAX_ROUTES_FILE_BYTES)  # `routes: []` removes all (--prune)
    if len(items) > MAX_ROUTES:
        raise InvalidInput(f"{source}: 'routes' lists {len(items)} routes; at most {MAX_ROUTES}")
    routes: list[RouteSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        named = f" (route {name!r})" if isinstance(name, str) else ""
        if not isinstance(item, dict):
            raise InvalidInput(f"routes[{i}]: must be a mapping with a name and targets")
        try:
            route = RouteSpec.model_validate(item)
        except ValidationError as exc:
            path, message = _error_text(exc)
            raise InvalidInput(f"routes[{i}]{path}: {message}{named}") from None
        if route.name in seen:
            raise InvalidInput(
                f"routes[{i}].name: route {route.name!r} is already declared at routes[{seen[route.name]}]"
            )
        seen[route.name] = i
        routes.append(route)
    return routes


# -- providers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Provider:
    """An upstream server. ``api_key_env`` is the NAME of the environment variable holding its API key; the key
    itself is read when a call is made (``api_key``) and is never stored, logged or printed."""

    name: str
    base_url: str
    protocol: ProviderProtocol = "openai"
    api_key_env: str | None = None
    created_at: str = ""
    updated_at: str = ""

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The API key from the environment now (``os.environ`` unless given); None without a variable, or when
        it is unset or empty."""
        if self.api_key_env is None:
            return None
        value = (os.environ if environ is None else environ).get(self.api_key_env)
        return value or None

    def same_settings(self, other: Provider) -> bool:
        return (self.base_url, self.protocol, self.api_key_env) == (other.base_url, other.protocol, other.api_key_env)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_url": self.base_url,
            "protocol": self.protocol,
            "api_key_env": self.api_key_env,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def check_provider_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidInput(f"name: {_shown(name)} must be 1-63 lowercase letters, digits and '-' (like a model name)")
    return name


def check_base_url(url: str) -> str:
    """An http(s) URL with a host, no credentials, query or fragment; returned without trailing slashes.

    A refused URL is never quoted back: it may hold a credential (``user:pass@``, ``?api_key=``)."""
    if len(url) > MAX_BASE_URL_CHARS:
        raise InvalidInput(f"base_url: is {len(url)} characters long; at most {MAX_BASE_URL_CHARS}")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidInput("base_url: must not contain spaces or control characters")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise InvalidInput(
            "base_url: must not contain credentials (user:pass@); "
            "put the key in an environment variable and pass --api-key-env"
        )
    if "?" in url or "#" in url:
        raise InvalidInput(
            "base_url: must not have a query (?...) or a fragment (#...); "
            "a key goes in an environment variable named by --api-key-env"
        )
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput("base_url: must start with http:// or https://")
    if not parts.hostname:
        raise InvalidInput("base_url: has no host (write e.g. http://127.0.0.1:8080/v1)")
    try:
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise InvalidInput("base_url: the port is not a number between 0 and 65535") from None
    return url.rstrip("/") if parts.path else url


def check_api_key_env(name: str | None) -> str | None:
    if name is None:
        return None
    if not API_KEY_ENV_RE.match(name):
        raise InvalidInput(  # not quoted back: it may be the key itself, passed by mistake
            "api_key_env: is not an environment variable name (uppercase letters, digits and '_', not starting "
            "with a digit, at most 100); pass the variable's NAME, never the key itself"
        )
    return name


def check_protocol(protocol: str) -> ProviderProtocol:
    if protocol == "openai":
        return "openai"
    if protocol == "oip":
        return "oip"
    raise InvalidInput(f"protocol: {_shown(protocol)} is not a protocol (openai or oip)")


def make_provider(name: str, base_url: str, protocol: str = "openai", api_key_env: str | None = None) -> Provider:
    """A validated provider (timestamps left empty: the service stamps them)."""
    return Provider(
        check_provider_name(name), check_base_url(base_url), check_protocol(protocol), check_api_key_env(api_key_env)
    )
