"""How a version is served, as its package declares it: ``sandbox``, ``batching`` and ``replicas``.

These are requests, not grants: the operator's settings decide the profile a runtime may run under (a floor for
provider code, an allow-list for the in-process profile) and cap the limits. ``runtime/sandbox.py`` turns them
into a command line and a cgroup; ``runtime/batching.py`` and ``runtime/supervisor.py`` act on the other two.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Profile = Literal["inprocess", "process", "bwrap", "gvisor"]
PROFILES: tuple[Profile, ...] = ("inprocess", "process", "bwrap", "gvisor")
"""From least to most confined: an operator's minimum admits its own profile and every one after it."""

MAX_MEMORY_MB = 1_048_576
MAX_CPUS = 256
MAX_PIDS = 65_536
MAX_TIMEOUT_S = 3_600
MAX_BATCH_SIZE = 1_024
MAX_BATCH_DELAY_MS = 1_000
MAX_REPLICAS = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class SandboxDecl(_Strict):
    """``sandbox: {profile, memory_mb, cpus, pids, timeout_s}``; a limit left out takes the operator's default."""

    profile: Profile | None = None
    memory_mb: int | None = Field(default=None, ge=16, le=MAX_MEMORY_MB)
    cpus: float | None = Field(default=None, gt=0, le=MAX_CPUS)
    pids: int | None = Field(default=None, ge=1, le=MAX_PIDS)
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)


class BatchingDecl(_Strict):
    """``batching: {max_batch_size, max_delay_ms}``: concurrent calls joined along the first dimension."""

    max_batch_size: int = Field(ge=1, le=MAX_BATCH_SIZE)
    max_delay_ms: float = Field(default=2.0, ge=0, le=MAX_BATCH_DELAY_MS)


class ReplicasDecl(_Strict):
    """``replicas: {min, max}``: ``min: 0`` scales to zero when idle (the next call pays the cold start)."""

    min: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    max: int = Field(default=1, ge=1, le=MAX_REPLICAS)

    @model_validator(mode="after")
    def _ordered(self) -> ReplicasDecl:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be at least min ({self.min})")
        return self


DEFAULT_REPLICAS = ReplicasDecl()


def at_least(profile: Profile, minimum: Profile) -> Profile:
    """``profile``, raised to ``minimum`` when it is less confined."""
    return profile if PROFILES.index(profile) >= PROFILES.index(minimum) else minimum
