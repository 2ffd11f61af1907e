"""The supervisor: one ModelRunner process per served version, started on demand (or preloaded), probed, and
restarted through a ``RestartPolicy`` (``core/process.py``); the gateway gets a pooled connection to each.

Runners listen on Unix sockets in a directory only the platform's user can enter (mode 0700), so no other local
process can call a model without a key and without a usage event. The socket is named after this supervisor's
pid: a runner orphaned by a gateway that was SIGKILLed (it exits within a second, see ``core/lifetime.py``) can
never take over the path a new gateway's runner uses, and neither can a second gateway on the same home.

Readiness tells the truth: a runner counts as ready only while it answers ``/v2/health/ready`` within
``probe_timeout_s``; one that stops answering is not ready at the next probe, and is killed and restarted once it
has been silent for ``unresponsive_after_s``. A call that times out recycles its runner, so the next call does
not queue behind work nobody waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmarket.core.aio import wait_event
from modelmarket.core.errors import DomainError, NotReady
from modelmarket.core.process import ChildProcess, ChildState, ProbeSettings, RestartPolicy, pid_alive
from modelmarket.registry import VersionRecord
from modelmarket.registry.ports import BlobStore
from modelmarket.registry.serving import DEFAULT_REPLICAS
from modelmarket.runtime.base import ModelSpec
from modelmarket.runtime.plugins import load_runtime_class
from modelmarket.runtime.pool import (
    DEFAULT_MAX_RESPONSE_BYTES,
    RunnerPool,
    RunnerResponse,
    RunnerTimeout,
    RunnerUnavailable,
    StreamedAnswer,
    probe_ready,
)
from modelmarket.runtime.runner import DEFAULT_MAX_REQUEST_BYTES, EXIT_MODEL_LOAD_FAILED
from modelmarket.runtime.sandbox import (
    MEMORY_LIMIT,
    PIDS_LIMIT,
    Cgroup,
    Confinement,
    Layout,
    SandboxPolicy,
    sandbox_env,
    wrap,
)

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0
"""A ready runner answers its health route in well under a millisecond; one that takes a second is hung or
busy with a long call, and is not ready for the next one."""
RUNNER_STOP_TIMEOUT_S = 10.0
"""Grace after SIGTERM for a runner to finish the calls it has, before SIGKILL."""
UNIX_PATH_MAX_BYTES = 103
"""Longest Unix socket path that binds everywhere we run (sun_path is 108 bytes on Linux, 104 on macOS)."""
PRIVATE_DIR_MODE = 0o700
SOCKET_PREFIX = "runner-"
STATUS_FILE = "status.json"
MONITOR_INTERVAL_S = 1.0
CAUSE_WAIT_S = 1.0
"""How long a call whose runner broke off waits to see the process gone, to name why it died."""
COLD_START_HEADER = b"x-modelmarket-cold-start"
COLD_REPORT_MIN_S = 0.05
COLD_STARTS_KEPT = 20
EXITS_KEPT = 8
WARM_RETRY_S = 10.0
"""A new version whose runner failed to warm is tried again for its alias after this long (calls stay on the
old one meanwhile)."""
QUEUE_RECHECK_S = 0.05
"""While every replica is busy and another is starting, a call rechecks for a free one this often."""


def spec_for(version: VersionRecord, artifact_root: Path, sandbox: str = "process") -> ModelSpec:
    m = version.manifest
    return ModelSpec(
        name=m.name,
        version=m.version,
        runtime=m.runtime,
        artifact_root=artifact_root,
        artifacts=tuple(a.path for a in version.artifacts),
        inputs=version.inputs,
        outputs=version.outputs,
        parameters=dict(m.parameters),
        sandbox=sandbox,
    )


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700), or check and tighten an existing one: a directory, not a symlink, ours."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise NotReady(f"{path} must be a directory owned by this user (uid {os.getuid()}); remove it and retry")
    if stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def materialize(version: VersionRecord, blobs: BlobStore, runners_dir: Path, sandbox: str = "process") -> Path:
    """Write the runner's spec file with its artifacts linked under ``runners_dir/<version id>/artifacts``.

    ``runners_dir/<version id>`` is private (0700). Under ``bwrap`` and ``gvisor`` the runner sees this folder
    and not the blob store, so the artifacts are hard links (copies across file systems) instead of symlinks.
    """
    base = private_dir(runners_dir / version.id)
    root = base / "artifacts"
    sandboxed = sandbox in ("bwrap", "gvisor")
    for art in version.artifacts:
        link = root / art.path
        link.parent.mkdir(parents=True, exist_ok=True)
        target = blobs.path(art.sha256).resolve()
        if sandboxed:
            if link.exists() and not link.is_symlink() and os.path.samestat(os.stat(link), os.stat(target)):
                continue
        elif link.is_symlink() and os.readlink(link) == str(target):
            continue
        # Link under a unique name, then rename over: safe when two processes lay out the same version.
        fd, tmp_link = tempfile.mkstemp(dir=link.parent, prefix=".link-")
        os.close(fd)
        os.unlink(tmp_link)
        if sandboxed:
            try:
                os.link(target, tmp_link)
            except OSError:  # another file system
                shutil.copyfile(target, tmp_link)
        else:
            os.symlink(target, tmp_link)
        os.replace(tmp_link, link)
    spec_path = base / "spec.json"
    fd, tmp = tempfile.mkstemp(dir=base, prefix=".spec-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(spec_for(version, root.absolute(), sandbox).to_json(), indent=2))
    os.replace(tmp, spec_path)
    return spec_path


def socket_path_for(runners_dir: Path, version_id: str, owner_pid: int, replica: int = 0) -> Path:
    """Where replica ``replica`` of ``version_id``'s runner, started by process ``owner_pid``, listens.

    Inside ``runners_dir/<version id>/sockets/`` when the path fits in a Unix socket address; a deep home would
    not, so then in a private per-user directory under the system temp dir, keyed by the runners dir. The
    folder holds sockets only: a sandboxed runner may write there, and nowhere else on the host.
    """
    name = f"{SOCKET_PREFIX}{owner_pid}-{replica}.sock"
    preferred = runners_dir.absolute() / version_id / "sockets" / name
    if len(os.fsencode(preferred)) <= UNIX_PATH_MAX_BYTES:
        return preferred
    key = hashlib.sha256(os.fsencode(runners_dir.absolute())).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"modelmarket-{os.getuid()}" / f"{key}-{version_id}" / name
    if len(os.fsencode(short)) > UNIX_PATH_MAX_BYTES:
        raise NotReady(f"no runner socket path short enough under {tempfile.gettempdir()}; set TMPDIR to /tmp")
    return short


def remove_stale_sockets(directory: Path, owner_pid: int) -> None:
    """Remove runner sockets left by supervisors that are gone (a SIGKILLed gateway cannot clean up)."""
    for path in directory.glob(f"{SOCKET_PREFIX}*.sock"):
        pid_text = path.name.removeprefix(SOCKET_PREFIX).removesuffix(".sock").split("-")[0]
        if not pid_text.isdigit() or int(pid_text) == owner_pid or pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class RunnerCrashed(NotReady):
    """The runner died while it had the call, and the call was not retried elsewhere (503, Retry-After)."""


class RunnerBrokeOff(DomainError):
    """A runner that is still alive answered something the gateway will not read (too large, malformed): a
    502, not retried (the same input would do the same), the runner left running."""


class SandboxLimit(DomainError):
    """The call ran the model into its sandbox's limits (memory, processes): the runner was killed or recycled,
    and the call is answered 5xx naming the limit. Retrying the same input would do the same."""


@dataclass
class Replica:
    """One runner process of a version (its index names its socket, working folder and cgroup)."""

    index: int
    socket_path: Path
    log_path: Path
    child: ChildProcess | None = None
    pool: RunnerPool | None = None
    cgroup: Cgroup | None = None
    outstanding: int = 0
    last_used: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.monotonic)
    cold_start_s: float | None = None
    draining: bool = False
    exits: dict[int, str | None] = field(default_factory=dict)
    """Spawn number -> what ended that process (None: nothing the cgroup saw), recorded by ``explain_exit``."""

    @property
    def serving(self) -> bool:
        """Running (it answered its probe at least once), alive this instant (not only at the watch's last
        look: calls must not pile onto a runner that just died), and not on its way out."""
        child = self.child
        return child is not None and child.running and not self.draining and child.pid is not None

    def rss_bytes(self) -> int | None:
        if self.cgroup is not None:
            found = self.cgroup.rss_bytes()
            if found is not None:
                return found
        pid = self.child.pid if self.child is not None else None
        if pid is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return None


class VersionRunners:
    """The runners of one version: replicas started and stopped within ``replicas: {min, max}``, calls sent to
    the replica with the fewest outstanding (least-outstanding-requests), a call whose runner died retried once
    on another replica when that is safe. It is the ``RunnerConnection`` the data plane calls."""

    def __init__(self, supervisor: Supervisor, version: VersionRecord, confinement: Confinement) -> None:
        self.supervisor = supervisor
        self.version = version
        self.confinement = confinement
        declared = version.manifest.replicas or DEFAULT_REPLICAS
        self.min_replicas = declared.min
        self.max_replicas = declared.max
        self.replicas: list[Replica] = []
        self.lock = asyncio.Lock()
        self.spec_path: Path | None = None
        self.waiting = 0
        self.calls = 0
        self.last_error: str | None = None
        self.cold_starts: list[float] = []
        self.draining = False
        self._changed = asyncio.Event()

    @property
    def name(self) -> str:
        return f"{self.version.model_name}@{self.version.version}"

    @property
    def ready(self) -> bool:
        return any(r.serving and r.child is not None and r.child.healthy for r in self.replicas)

    @property
    def failed(self) -> str | None:
        """Why every replica was given up on (None while one can still serve)."""
        if not self.replicas:
            return None
        reasons = [r.child.failure for r in self.replicas if r.child is not None and r.child.state is ChildState.FAILED]
        return reasons[0] if reasons and len(reasons) == len(self.replicas) else None

    def outstanding(self) -> int:
        return sum(r.outstanding for r in self.replicas)

    # -- the data plane's calls -----------------------------------------------------------------------
    async def request(
        self, method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> RunnerResponse:
        tried: set[int] = set()
        while True:
            replica, cold = await self._acquire(exclude=tried)
            tried.add(replica.index)
            spawn = replica.child.spawns if replica.child is not None else 0
            try:
                answer = await replica.pool.request(method, path, body, headers)  # type: ignore[union-attr]
            except RunnerTimeout:
                cause = replica.cgroup.cause() if replica.cgroup is not None else None
                if cause is not None:  # it did not answer because it ran into a limit (a fork bomb retrying)
                    self.last_error = cause
                    raise SandboxLimit(f"{cause}: model {self.name} was stopped by its sandbox") from None
                self.last_error = f"timeout: a call took longer than {self.confinement.timeout_s:g}s"
                raise RunnerTimeout(
                    f"timeout: model {self.name} did not answer within {self.confinement.timeout_s:g}s "
                    "(its runner was restarted)"
                ) from None
            except RunnerUnavailable as exc:
                died, cause = await self._cause_of_death(replica, spawn)
                if not died:  # alive: it answered something unreadable, which a retry would repeat
                    raise RunnerBrokeOff(f"the runner of {self.name} {exc}") from None
                self.last_error = cause or str(exc)
                if cause in (MEMORY_LIMIT, PIDS_LIMIT):
                    raise SandboxLimit(f"{cause}: model {self.name} was stopped by its sandbox") from None
                if len(tried) < 2 and self._another_could_serve(tried):
                    log.warning(
                        "%s: runner %d died during a call (%s); retrying it once", self.name, replica.index, exc
                    )
                    continue
                raise RunnerCrashed(
                    f"the runner of {self.name} stopped during the call ({cause or exc}); it is restarting, retry"
                ) from None
            finally:
                replica.outstanding -= 1
                replica.last_used = time.monotonic()
                self._changed.set()
            if answer.status >= 500:
                cause = replica.cgroup.cause() if replica.cgroup is not None else None
                if cause is not None:  # a fork refused or memory refused inside a call that then failed
                    self.last_error = cause
                    if replica.child is not None:  # what it forked is still there: start clean
                        replica.child.recycle(cause)
                    raise SandboxLimit(f"{cause}: model {self.name} ran into its sandbox: {_error_text(answer.body)}")
            if cold is not None:
                answer.headers[COLD_START_HEADER] = f"{cold:.3f}".encode()
            return answer

    async def stream(
        self, method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> StreamedAnswer:
        """A streamed call (OpenAI): never retried, since part of an answer may already have been used."""
        replica, _ = await self._acquire(exclude=set())

        def done() -> None:
            replica.outstanding -= 1
            replica.last_used = time.monotonic()
            self._changed.set()

        try:
            answer = await replica.pool.stream(method, path, body, headers)  # type: ignore[union-attr]
        except BaseException:
            done()
            raise
        answer.on_close = done  # busy (for balancing, idle scale-down and drains) until the stream is closed
        return answer

    def _live(self) -> list[Replica]:
        """Replicas that serve or will: not given up on, not on their way out."""
        return [
            r
            for r in self.replicas
            if r.child is not None and r.child.state is not ChildState.FAILED and not r.draining
        ]

    def _starting(self) -> bool:
        return any(
            r.child is not None and r.child.state is ChildState.STARTING and not r.draining for r in self.replicas
        )

    def _another_could_serve(self, tried: set[int]) -> bool:
        return any(r.index not in tried and r.serving for r in self.replicas) or len(self.replicas) < self.max_replicas

    async def _cause_of_death(self, replica: Replica, spawn: int) -> tuple[bool, str | None]:
        """Whether process ``spawn`` of the replica died (waiting briefly for its watch to record the exit), and
        what ended it. Every call that process had reads the same cause: none of them is retried when it was
        the sandbox's limit (one of them was the input that reached it)."""
        child = replica.child
        deadline = time.monotonic() + CAUSE_WAIT_S
        while time.monotonic() < deadline:
            if spawn in replica.exits:
                return True, replica.exits[spawn]
            if child is None or child.spawns != spawn:  # a newer process already: this one is gone
                return True, None
            await asyncio.sleep(0.02)
        return child is None or child.pid is None, replica.exits.get(spawn)

    async def _acquire(self, exclude: set[int]) -> tuple[Replica, float | None]:
        """A serving replica with the fewest calls in flight (counted as one more), and the cold start this
        call waited for (None if a replica was serving)."""
        self.calls += 1
        while True:
            candidates = [r for r in self.replicas if r.serving and r.index not in exclude]
            if not candidates:
                break
            best = min(candidates, key=lambda r: r.outstanding)
            if best.outstanding >= self.supervisor.scale_queue:
                live = self._live()
                if len(live) < self.max_replicas and not self._starting():
                    self.supervisor.spawn_background(self.scale_up(f"{best.outstanding} calls on every replica"))
                if self._starting():  # capacity is coming: wait at the version, not behind one busy replica
                    self.waiting += 1
                    try:
                        self._changed.clear()
                        await wait_event(self._changed, QUEUE_RECHECK_S)
                    finally:
                        self.waiting -= 1
                    continue
            best.outstanding += 1
            return best, None
        if self.failed is not None:
            raise NotReady(f"runner for {self.name} is not available: {self.failed}")
        waited_from = time.monotonic()
        self.waiting += 1
        try:
            if not any(
                r.child is not None
                and r.child.state is not ChildState.FAILED
                and r.index not in exclude
                and not r.draining
                for r in self.replicas
            ):
                await self.scale_up("a call arrived and no replica is running")
            replica = await self._wait_serving(exclude)
        finally:
            self.waiting -= 1
        replica.outstanding += 1
        cold = time.monotonic() - waited_from
        return replica, cold if replica.cold_start_s is not None and cold > COLD_REPORT_MIN_S else None

    async def _wait_serving(self, exclude: set[int]) -> Replica:
        deadline = time.monotonic() + self.supervisor.start_timeout_s
        while True:
            candidates = [r for r in self.replicas if r.serving and r.index not in exclude]
            if candidates:
                return min(candidates, key=lambda r: r.outstanding)
            failed = self.failed
            if failed is not None:
                raise NotReady(f"runner for {self.name} is not available: {failed}")
            if not [r for r in self._live() if r.index not in exclude]:  # the last one stopped meanwhile
                self.supervisor.spawn_background(self.scale_up("a call is waiting and no replica is running"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                states = "; ".join(r.child.describe() for r in self.replicas if r.child is not None) or "not started"
                raise NotReady(f"runner for {self.name} is not ready: {states}")
            self._changed.clear()
            await wait_event(self._changed, min(remaining, 0.05))

    # -- scaling --------------------------------------------------------------------------------------
    async def scale_up(self, why: str) -> Replica | None:
        """Start one more replica (within max) and return it once running (None if at max)."""
        async with self.lock:
            if self.supervisor.stopping:
                raise NotReady("the gateway is shutting down")
            if len(self._live()) + sum(1 for r in self.replicas if r.child is None) >= self.max_replicas:
                return None
            if self.spec_path is None:
                self.spec_path = await asyncio.to_thread(
                    materialize,
                    self.version,
                    self.supervisor.blobs,
                    self.supervisor.runners_dir,
                    self.confinement.profile,
                )
            used = {r.index for r in self.replicas}
            index = next(i for i in range(len(self.replicas) + 1) if i not in used)
            replica = await asyncio.to_thread(self.supervisor.lay_out_replica, self, index)
            if self.supervisor.stopping:  # stop() ran meanwhile and will not see this replica: start none
                if replica.cgroup is not None:
                    await asyncio.to_thread(replica.cgroup.remove)
                raise NotReady("the gateway is shutting down")
            log.info("%s: starting replica %d under %s (%s)", self.name, index, self.confinement.describe(), why)
            try:
                self.supervisor.start_replica(self, replica)
            except Exception as exc:  # a sandbox that cannot run here: say why, leave nothing behind
                if replica.cgroup is not None:
                    await asyncio.to_thread(replica.cgroup.remove)
                self.last_error = str(exc)
                raise NotReady(f"runner for {self.name} cannot start: {exc}") from exc
            self.replicas.append(replica)
        child = replica.child
        assert child is not None
        self._changed.set()
        if await child.wait_running(self.supervisor.start_timeout_s):
            replica.last_used = time.monotonic()  # idle from when it could first serve, not from its layout
            replica.cold_start_s = time.monotonic() - replica.started_at
            self.cold_starts.append(replica.cold_start_s)
            del self.cold_starts[:-COLD_STARTS_KEPT]
        self._changed.set()
        return replica

    async def ensure_min(self) -> None:
        while sum(1 for r in self.replicas if not r.draining) < max(self.min_replicas, 1 if not self.replicas else 0):
            if await self.scale_up("the version's minimum") is None:
                return

    async def stop_replica(self, replica: Replica, why: str) -> None:
        replica.draining = True
        log.info("%s: stopping replica %d (%s)", self.name, replica.index, why)
        while replica.outstanding > 0:  # drain: the calls it has finish first
            await asyncio.sleep(0.02)
        await self.supervisor.stop_process(replica)
        if replica in self.replicas:
            self.replicas.remove(replica)
        self._changed.set()

    async def tick(self, now: float) -> None:
        """Scale down: replicas idle longer than the supervisor's ``idle_s`` above ``min`` (to zero when min is
        0), every replica of a drained version once it has no calls. A replica given up on is dropped while
        another can serve (its reason stays in ``last_error``): a fresh one may start in its place. Stops run
        in the background, so one slow stop holds up no other version."""
        failed = [r for r in self.replicas if r.child is not None and r.child.state is ChildState.FAILED]
        for replica in failed:
            self.last_error = replica.child.failure if replica.child is not None else self.last_error
        if failed and len(failed) < len(self.replicas):
            for replica in failed:
                self.replicas.remove(replica)
                if replica.cgroup is not None:
                    self.supervisor.spawn_background(asyncio.to_thread(replica.cgroup.remove))
        keep = 0 if self.draining else self.min_replicas
        active = [r for r in self.replicas if not r.draining and r not in failed]
        if self.draining:
            idle = [r for r in active if r.outstanding == 0]
        else:
            idle = [
                r
                for r in active
                if r.outstanding == 0
                and not (r.child is not None and r.child.state is ChildState.STARTING)  # still starting: not idle
                and now - r.last_used >= self.supervisor.idle_s
            ]
        for replica in sorted(idle, key=lambda r: -r.index):
            if len(active) <= keep or self.waiting:
                break
            active.remove(replica)
            replica.draining = True  # at once: no call picks it from now on
            self.supervisor.spawn_background(self.stop_replica(replica, "drained" if self.draining else "idle"))

    def describe(self) -> dict[str, object]:
        return {
            "model": self.version.model_name,
            "version": self.version.version,
            "version_id": self.version.id,
            "runtime": self.version.manifest.runtime,
            "profile": self.confinement.profile,
            "limits": {
                "memory_mb": self.confinement.memory_mb,
                "pids": self.confinement.pids,
                "cpus": self.confinement.cpus,
                "timeout_s": self.confinement.timeout_s,
            },
            "replicas": {"min": self.min_replicas, "max": self.max_replicas, "running": len(self.replicas)},
            "state": self.state(),
            "queue_depth": self.waiting + self.outstanding(),
            "calls": self.calls,
            "last_error": self.last_error,
            "cold_start_s": self.cold_starts[-1] if self.cold_starts else None,
            "draining": self.draining,
            "processes": [
                {
                    "replica": r.index,
                    "pid": r.child.pid if r.child is not None else None,
                    "state": r.child.describe() if r.child is not None else "not started",
                    "outstanding": r.outstanding,
                    "rss_bytes": r.rss_bytes(),
                    "restarts": r.child.spawns - 1 if r.child is not None and r.child.spawns else 0,
                    "cold_start_s": r.cold_start_s,
                }
                for r in self.replicas
            ],
        }

    def state(self) -> str:
        if self.failed is not None:
            return "failed"
        if self.ready:
            return "ready"
        if self.replicas:
            return "starting"
        return "stopped" if self.min_replicas == 0 or self.draining else "not started"


class InProcessRunner:
    """A vetted runtime loaded into the gateway itself (profile ``inprocess``): the same OIP handling as a
    runner (``RunnerApp.answer_infer``), with no socket, no second process and no isolation."""

    def __init__(self, version: VersionRecord, app: Any) -> None:
        self.version = version
        self.app = app
        self.calls = 0
        self.cold_start_s: float | None = None

    takes_decoded = True
    """The data plane may hand over the request it already decoded (no second parse in the same process)."""

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        decoded: Any = None,
    ) -> RunnerResponse:
        self.calls += 1
        header_len = None
        for name, value in headers or ():
            if name.lower() == b"inference-header-content-length":
                header_len = int(value)
        status, extra, payload = await self.app.answer_infer(body, header_len, decoded)
        return RunnerResponse(status, dict(extra), payload)

    async def stream(self, *args: Any, **kwargs: Any) -> StreamedAnswer:
        raise NotReady(f"model {self.version.model_name} runs in the gateway and has no streamed routes")


class Supervisor:
    def __init__(
        self,
        blobs: BlobStore,
        runners_dir: Path,
        start_timeout_s: float,
        request_timeout_s: float,
        pool_size: int,
        max_restarts: int,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        *,
        policy: RestartPolicy | None = None,
        probe_interval_s: float = PROBE_INTERVAL_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        unresponsive_after_s: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        stop_timeout_s: float = RUNNER_STOP_TIMEOUT_S,
        sandbox_policy: SandboxPolicy | None = None,
        hidden: tuple[Path, ...] = (),
        idle_s: float = 60.0,
        scale_queue: int = 2,
    ) -> None:
        """``policy`` defaults to ``RestartPolicy(max_restarts=max_restarts)``. ``unresponsive_after_s``
        defaults to the version's per-call timeout: a runner busy with one long (but allowed) call may not
        answer probes meanwhile and must not be killed for that. ``hidden`` are places no sandbox may show
        (the platform's home)."""
        self.blobs = blobs
        self.runners_dir = runners_dir
        self.start_timeout_s = start_timeout_s
        self.request_timeout_s = request_timeout_s
        self.pool_size = pool_size
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.policy = policy or RestartPolicy(max_restarts=max_restarts)
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.unresponsive_after_s = unresponsive_after_s
        self.stop_timeout_s = stop_timeout_s
        self.sandbox_policy = sandbox_policy or SandboxPolicy(timeout_s=request_timeout_s)
        self.hidden = tuple(hidden) or (runners_dir.absolute().parent,)
        self.idle_s = idle_s
        self.scale_queue = scale_queue
        self.runners: dict[str, VersionRunners] = {}
        self.inprocess: dict[str, InProcessRunner] = {}
        self._confinements: dict[str, Confinement] = {}
        self._inprocess_lock = asyncio.Lock()
        self.preloaded: set[str] = set()
        self.serving_ids: dict[str, str] = {}
        """alias key ("digits@latest") -> id of the version its calls go to (see ``route``)."""
        self._warming: set[str] = set()
        self._warm_failed: dict[str, float] = {}
        self._pid = os.getpid()
        self.stopping = False
        self._background: set[asyncio.Task[Any]] = set()
        self._monitor: asyncio.Task[None] | None = None

    @property
    def status_path(self) -> Path:
        return self.runners_dir / STATUS_FILE

    def start_monitor(self) -> None:
        """Scale down idle replicas and write ``runners/status.json`` for ``modelmarket runners``, every second;
        first remove the cgroups a SIGKILLed gateway left behind."""
        if self._monitor is None:
            self.spawn_background(asyncio.to_thread(Cgroup.remove_stale, self._pid))
            self._monitor = asyncio.get_running_loop().create_task(self._watch(), name="runner monitor")

    async def _watch(self) -> None:
        while not self.stopping:
            try:
                now = time.monotonic()
                for runners in list(self.runners.values()):
                    await runners.tick(now)
                await asyncio.to_thread(self.write_status, self.snapshot())  # taken on the loop, written off it
            except Exception:  # keep watching: a bad tick must not leave runners unscaled forever
                log.exception("runner monitor tick failed")
            await asyncio.sleep(MONITOR_INTERVAL_S)

    def spawn_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background runner work failed: %s", task.exception())

    # -- the gateway's questions --------------------------------------------------------------------------
    def confinement(self, version: VersionRecord) -> Confinement:
        found = self._confinements.get(version.id)
        if found is None:
            found = self._confinements[version.id] = self._confine(version)
        return found

    async def _confinement_off_loop(self, version: VersionRecord) -> Confinement:
        """``confinement``, worked out in a thread the first time: it imports the version's runtime class (for a
        scikit-learn model, scipy and sklearn: seconds), which must not stall every other request on the loop."""
        found = self._confinements.get(version.id)
        return found if found is not None else await asyncio.to_thread(self.confinement, version)

    def _confine(self, version: VersionRecord) -> Confinement:
        try:
            provider_code = bool(load_runtime_class(version.manifest.runtime).provider_code)
        except Exception:  # not importable here (a plug-in on the runners' PYTHONPATH only): an operator's install
            provider_code = False
        return self.sandbox_policy.confinement(version.manifest.runtime, provider_code, version.manifest.sandbox)

    def is_ready(self, version: VersionRecord) -> bool:
        if version.id in self.inprocess:
            return True
        runners = self.runners.get(version.id)
        return runners is not None and runners.ready

    def preloaded_ready(self) -> bool:
        """Whether every version preloaded at startup can serve (a version scaled to zero can, on demand)."""
        return not self.not_ready_reasons()

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        for version_id in sorted(self.preloaded):
            if version_id in self.inprocess:
                continue
            runners = self.runners.get(version_id)
            if runners is None:
                reasons.append(f"{version_id}: not started")
            elif runners.failed is not None:
                reasons.append(f"{runners.name}: failed: {runners.failed}")
            elif not runners.ready and runners.min_replicas > 0:  # min 0: started on demand, by design
                states = "; ".join(r.child.describe() for r in runners.replicas if r.child is not None)
                reasons.append(f"{runners.name}: {states or 'not started'}")
        return reasons

    def route(self, key: str, resolved: VersionRecord) -> VersionRecord:
        """Zero-downtime swap: the version that calls of alias ``key`` go to. When the catalogue moves ``key``
        to a new version, calls keep going to the old one while the new one's runner warms up; once it is
        ready they switch, and the old one drains (finishes its calls, then stops)."""
        current_id = self.serving_ids.get(key)
        if current_id is None or current_id == resolved.id or not resolved.needs_runner:
            self.serving_ids[key] = resolved.id
            return resolved
        current = self.runners.get(current_id)
        if self.is_ready(resolved) or current is None or not current.ready:
            self._switch(key, current_id, resolved)
            return resolved
        failed_at = self._warm_failed.get(resolved.id)
        if resolved.id not in self._warming and (failed_at is None or time.monotonic() - failed_at > WARM_RETRY_S):
            self._warming.add(resolved.id)
            self.spawn_background(self._warm(resolved))
        return current.version

    def _switch(self, key: str, old_id: str, new: VersionRecord) -> None:
        self.serving_ids[key] = new.id
        self._warming.discard(new.id)
        back = self.runners.get(new.id)
        if back is not None:  # an alias moved back to a version that was draining: it serves again
            back.draining = False
        old = self.runners.get(old_id)
        if old_id in self.preloaded:  # readiness follows what the alias serves now
            self.preloaded.discard(old_id)
            self.preloaded.add(new.id)
        if old is not None and old_id not in self.serving_ids.values():
            log.info("%s now goes to %s; draining %s", key, new.ref, old.name)
            old.draining = True

    async def _warm(self, version: VersionRecord) -> None:
        try:
            await self.ensure_started(version)
        except DomainError as exc:  # the alias stays on the version that works; try again in a while
            self._warm_failed[version.id] = time.monotonic()
            log.error("%s@%s could not be warmed for its alias: %s", version.model_name, version.version, exc)
        finally:
            self._warming.discard(version.id)

    # -- runners ------------------------------------------------------------------------------------------
    def register(self, version: VersionRecord) -> VersionRunners:
        runners = self.runners.get(version.id)
        if runners is None:
            runners = self.runners[version.id] = VersionRunners(self, version, self.confinement(version))
        return runners

    async def pool_for(self, version: VersionRecord) -> VersionRunners | InProcessRunner:
        """What the data plane sends ``version``'s calls to: its replica set (started on demand by its first
        call) or, for a runtime the operator runs in-process, the gateway's own copy of the model."""
        inproc = self.inprocess.get(version.id)
        if inproc is not None:
            return inproc
        if (await self._confinement_off_loop(version)).profile == "inprocess":
            return await self._load_inprocess(version)
        runners = self.runners.get(version.id) or self.register(version)
        if runners.failed is not None:
            raise NotReady(f"runner for {runners.name} is not available: {runners.failed}")
        return runners

    async def ensure_started(self, version: VersionRecord) -> VersionRunners | InProcessRunner:
        """Start ``version``'s minimum of replicas (at least one) and wait until one serves; ``NotReady`` says
        why it does not within ``start_timeout_s``."""
        if (await self._confinement_off_loop(version)).profile == "inprocess":
            return await self._load_inprocess(version)
        runners = self.register(version)
        runners.draining = False  # asked to serve (preload, an alias moving to it): no longer on its way out
        if self.stopping:
            raise NotReady("the gateway is shutting down")
        if not any(r.serving for r in runners.replicas):
            starting = [r for r in runners.replicas if r.child is not None and r.child.state is not ChildState.FAILED]
            if not starting:
                await runners.scale_up("started")
        await runners._wait_serving(set())
        if runners.min_replicas > 1:
            self.spawn_background(runners.ensure_min())
        return runners

    async def _load_inprocess(self, version: VersionRecord) -> InProcessRunner:
        async with self._inprocess_lock:
            found = self.inprocess.get(version.id)
            if found is not None:
                return found
            started = time.monotonic()
            spec_path = await asyncio.to_thread(materialize, version, self.blobs, self.runners_dir, "inprocess")
            from modelmarket.runtime.runner import RunnerApp, load_runtime, read_spec

            try:
                runtime = await asyncio.to_thread(load_runtime, read_spec(spec_path))
            except Exception as exc:
                raise NotReady(f"{version.model_name}@{version.version} failed to load in the gateway: {exc}") from exc
            batching = version.manifest.batching
            app = RunnerApp(runtime, self.max_request_bytes, batching=batching)
            found = self.inprocess[version.id] = InProcessRunner(version, app)
            found.cold_start_s = time.monotonic() - started
            log.info("%s@%s loaded in the gateway in %.2fs", version.model_name, version.version, found.cold_start_s)
            return found

    def lay_out_replica(self, runners: VersionRunners, index: int) -> Replica:
        """Files one replica needs: a private socket directory free of stale sockets, its cgroup."""
        socket_path = socket_path_for(self.runners_dir, runners.version.id, self._pid, index)
        if not socket_path.is_relative_to(self.runners_dir.absolute()):
            # Under the shared temp dir the parent must be ours as well: whoever owns a directory can swap
            # the entries in it, our private one included.
            private_dir(socket_path.parent.parent)
        private_dir(socket_path.parent)
        remove_stale_sockets(socket_path.parent, self._pid)
        assert runners.spec_path is not None
        log_path = runners.spec_path.parent / f"runner-{index}.log"
        cgroup = Cgroup.create(f"{self._pid}-{runners.version.id}-{index}", runners.confinement)
        return Replica(index, socket_path, log_path, cgroup=cgroup)

    def start_replica(self, runners: VersionRunners, replica: Replica) -> None:
        assert runners.spec_path is not None
        confinement = runners.confinement
        socket_path = replica.socket_path
        runner_argv = [
            sys.executable,
            "-m",
            "modelmarket.runtime.runner",
            "--spec",
            str(runners.spec_path.absolute()),
            "--socket",
            str(socket_path),
            "--max-request-bytes",
            str(self.max_request_bytes),
        ]
        batching = runners.version.manifest.batching
        if batching is not None:
            runner_argv += [
                "--batch-size",
                str(batching.max_batch_size),
                "--batch-delay-ms",
                f"{batching.max_delay_ms:g}",
            ]
        if confinement.profile == "process":
            runner_argv += ["--parent-pid", str(self._pid)]
        base = runners.spec_path.parent
        layout = Layout(
            version_dir=base.absolute(),
            socket_dir=socket_path.parent,
            work_dir=base.absolute() / f"work-{replica.index}",
            state_dir=base.absolute() / f"gvisor-{replica.index}",
            hidden=self.hidden,
        )
        command = wrap(
            runner_argv, confinement, layout, replica.cgroup, f"mm-{runners.version.id[:12]}-{replica.index}"
        )

        async def probe() -> bool:
            return await probe_ready(str(socket_path), self.probe_timeout_s)

        def before_spawn() -> None:
            # The previous process (if any) is gone: its socket file and our connections to it are dead.
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            if replica.pool is not None:
                replica.pool.drop_idle()
            if confinement.profile == "process":  # a fresh, empty working directory each time
                shutil.rmtree(layout.work_dir, ignore_errors=True)
                layout.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if confinement.profile == "gvisor":  # runsc's record of the killed sandbox would refuse the same id
                shutil.rmtree(layout.state_dir / "runsc", ignore_errors=True)
                (layout.state_dir / "runsc").mkdir(mode=0o700, parents=True)
            replica.started_at = time.monotonic()

        def explain_exit(code: int) -> str | None:
            cause = replica.cgroup.cause() if replica.cgroup is not None else None
            if replica.cgroup is not None:
                replica.cgroup.kill_all()  # what it forked must not outlive it
            spawn = replica.child.spawns if replica.child is not None else 0
            replica.exits[spawn] = cause
            for old in [s for s in replica.exits if s < spawn - EXITS_KEPT]:
                del replica.exits[old]
            if cause is not None:
                runners.last_error = cause
            return cause

        unresponsive = self.unresponsive_after_s if self.unresponsive_after_s is not None else confinement.timeout_s
        child = ChildProcess(
            f"runner for {runners.name} (replica {replica.index}, {confinement.profile})",
            command,
            policy=self.policy,
            env=sandbox_env(),
            log_path=replica.log_path,
            no_restart_codes={EXIT_MODEL_LOAD_FAILED: "the model failed to load"},
            probe=ProbeSettings(probe, self.probe_interval_s, unresponsive, self.start_timeout_s),
            before_spawn=before_spawn,
            explain_exit=explain_exit,
            free_restart=lambda cause: cause in (MEMORY_LIMIT, PIDS_LIMIT),
            stop_timeout_s=self.stop_timeout_s,
        )
        replica.pool = RunnerPool(
            str(socket_path),
            self.pool_size,
            confinement.timeout_s,
            max_response_bytes=self.max_response_bytes,
            on_timeout=lambda: child.recycle(f"a call took longer than {confinement.timeout_s:g}s"),
        )
        replica.child = child
        child.start()

    def snapshot(self) -> dict[str, Any]:
        """What ``modelmarket runners`` shows."""
        versions = [r.describe() for r in self.runners.values()]
        for inproc in self.inprocess.values():
            versions.append(
                {
                    "model": inproc.version.model_name,
                    "version": inproc.version.version,
                    "version_id": inproc.version.id,
                    "runtime": inproc.version.manifest.runtime,
                    "profile": "inprocess",
                    "replicas": {"min": 1, "max": 1, "running": 1},
                    "state": "ready",
                    "queue_depth": 0,
                    "calls": inproc.calls,
                    "last_error": None,
                    "cold_start_s": inproc.cold_start_s,
                    "draining": False,
                    "processes": [
                        {
                            "replica": 0,
                            "pid": self._pid,
                            "state": "in the gateway",
                            "outstanding": 0,
                            "rss_bytes": None,
                            "restarts": 0,
                            "cold_start_s": inproc.cold_start_s,
                        }
                    ],
                }
            )
        return {"gateway_pid": self._pid, "written_at": time.time(), "runners": versions}

    def write_status(self, snapshot: dict[str, Any] | None = None) -> None:
        self.runners_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.runners_dir, prefix=".status-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(snapshot if snapshot is not None else self.snapshot(), fh, indent=1)
        os.replace(tmp, self.status_path)

    async def stop(self) -> None:
        """Stop every runner (concurrently: each may take ``stop_timeout_s``). No runner starts after this."""
        self.stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        replicas = [(v, r) for v in self.runners.values() for r in list(v.replicas)]
        results = await asyncio.gather(*(self.stop_process(r) for _, r in replicas), return_exceptions=True)
        for (runners, replica), result in zip(replicas, results, strict=True):
            if isinstance(result, BaseException):
                log.error("stopping %s replica %d failed", runners.name, replica.index, exc_info=result)
        with contextlib.suppress(OSError):
            self.status_path.unlink()

    async def stop_process(self, replica: Replica) -> None:
        """Stop one replica's process and remove what it had: connections, cgroup, socket."""
        if replica.pool is not None:
            await replica.pool.close()
        if replica.child is not None:
            await replica.child.stop()
        if replica.cgroup is not None:
            await asyncio.to_thread(replica.cgroup.remove)
        replica.socket_path.unlink(missing_ok=True)
        if not replica.socket_path.is_relative_to(self.runners_dir.absolute()):
            with contextlib.suppress(OSError):  # the short-path directory under TMPDIR, if now empty
                replica.socket_path.parent.rmdir()


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return str(doc.get("error", ""))[:500] if isinstance(doc, dict) else ""
    except ValueError:
        return body[:200].decode("utf-8", "replace")
