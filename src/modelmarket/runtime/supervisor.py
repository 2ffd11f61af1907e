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
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from modelmarket.core.errors import NotReady
from modelmarket.core.process import ChildProcess, ChildState, ProbeSettings, RestartPolicy
from modelmarket.registry import VersionRecord
from modelmarket.registry.ports import BlobStore
from modelmarket.runtime.base import ModelSpec
from modelmarket.runtime.pool import DEFAULT_MAX_RESPONSE_BYTES, RunnerPool, probe_ready
from modelmarket.runtime.runner import DEFAULT_MAX_REQUEST_BYTES, EXIT_MODEL_LOAD_FAILED

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


def spec_for(version: VersionRecord, artifact_root: Path) -> ModelSpec:
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


def materialize(version: VersionRecord, blobs: BlobStore, runners_dir: Path) -> Path:
    """Write the runner's spec file with its artifacts linked under ``runners_dir/<version id>/artifacts``.

    ``runners_dir/<version id>`` is private (0700): the runner's socket lives there too.
    """
    base = private_dir(runners_dir / version.id)
    root = base / "artifacts"
    for art in version.artifacts:
        link = root / art.path
        link.parent.mkdir(parents=True, exist_ok=True)
        target = blobs.path(art.sha256).resolve()
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        # Link under a unique name, then rename over: safe when two processes lay out the same version.
        fd, tmp_link = tempfile.mkstemp(dir=link.parent, prefix=".link-")
        os.close(fd)
        os.unlink(tmp_link)
        os.symlink(target, tmp_link)
        os.replace(tmp_link, link)
    spec_path = base / "spec.json"
    fd, tmp = tempfile.mkstemp(dir=base, prefix=".spec-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(spec_for(version, root).to_json(), indent=2))
    os.replace(tmp, spec_path)
    return spec_path


def socket_path_for(runners_dir: Path, version_id: str, owner_pid: int) -> Path:
    """Where the runner of ``version_id`` started by process ``owner_pid`` listens.

    Inside ``runners_dir/<version id>/`` when the path fits in a Unix socket address; a deep home would not, so
    then in a private per-user directory under the system temp dir, keyed by the runners dir.
    """
    name = f"{SOCKET_PREFIX}{owner_pid}.sock"
    preferred = runners_dir.absolute() / version_id / name
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
        pid_text = path.name.removeprefix(SOCKET_PREFIX).removesuffix(".sock")
        if not pid_text.isdigit() or int(pid_text) == owner_pid or _alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclass
class RunnerProcess:
    """The supervisor's record of one version's runner."""

    version: VersionRecord
    spec_path: Path | None = None
    log_path: Path | None = None
    socket_path: Path | None = None
    child: ChildProcess | None = None
    pool: RunnerPool | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def name(self) -> str:
        return f"runner for {self.version.model_name}@{self.version.version}"

    @property
    def ready(self) -> bool:
        """Running, and answered its latest health probe."""
        return self.child is not None and self.child.healthy

    @property
    def failed(self) -> str | None:
        """Why the runner was given up on, or None."""
        child = self.child
        return child.failure if child is not None and child.state is ChildState.FAILED else None

    def describe(self) -> str:
        return f"{self.version.model_name}@{self.version.version}: " + (
            self.child.describe() if self.child is not None else "not started"
        )


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
    ) -> None:
        """``policy`` defaults to ``RestartPolicy(max_restarts=max_restarts)``. ``unresponsive_after_s``
        defaults to ``request_timeout_s``: a runner's model runs on its event loop, so a runner busy with one
        long (but allowed) call cannot answer probes meanwhile and must not be killed for that."""
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
        self.unresponsive_after_s = unresponsive_after_s if unresponsive_after_s is not None else request_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.runners: dict[str, RunnerProcess] = {}
        self.preloaded: set[str] = set()
        self._pid = os.getpid()
        self._stopping = False

    def start_monitor(self) -> None:
        """Kept for the gateway's startup: each runner's ``ChildProcess`` watches and probes it from its start."""

    # -- the gateway's questions --------------------------------------------------------------------------
    def is_ready(self, version: VersionRecord) -> bool:
        runner = self.runners.get(version.id)
        return runner is not None and runner.ready

    def preloaded_ready(self) -> bool:
        """Whether every runner preloaded at startup answers its probes. A runner given up on, hung or
        restarting holds this back: the gateway cannot serve that model."""
        return all((runner := self.runners.get(v)) is not None and runner.ready for v in self.preloaded)

    def not_ready_reasons(self) -> list[str]:
        """One line per preloaded runner that is not ready, saying why (empty when ``preloaded_ready()``)."""
        reasons = []
        for version_id in sorted(self.preloaded):
            runner = self.runners.get(version_id)
            if runner is None:
                reasons.append(f"{version_id}: not started")
            elif not runner.ready:
                reasons.append(runner.describe())
        return reasons

    # -- runners ------------------------------------------------------------------------------------------
    def register(self, version: VersionRecord) -> RunnerProcess:
        """The version's runner record (created on first use; its process starts in ``ensure_started``)."""
        runner = self.runners.get(version.id)
        if runner is None:
            runner = self.runners[version.id] = RunnerProcess(version)
        return runner

    async def pool_for(self, version: VersionRecord) -> RunnerPool:
        """The pool of ``version``'s running runner, starting the runner on first use.

        A running runner that missed a probe still gets calls: it may just be busy, and a call that then times
        out recycles it.
        """
        runner = self.runners.get(version.id)
        if runner is not None and runner.pool is not None and runner.child is not None and runner.child.running:
            return runner.pool
        return await self.ensure_started(version)

    async def ensure_started(self, version: VersionRecord) -> RunnerPool:
        """Start ``version``'s runner if it is not (concurrent callers share one), and wait up to
        ``start_timeout_s`` for it to run. Raises ``NotReady`` saying why it does not."""
        runner = self.register(version)  # before the first await: concurrent first calls share one record
        async with runner.lock:
            if self._stopping:
                raise NotReady("the gateway is shutting down")
            if runner.child is None:
                await asyncio.to_thread(self._lay_out, runner)
                if self._stopping:  # stop() ran meanwhile and saw no process to stop: start none
                    raise NotReady("the gateway is shutting down")
                self._start(runner)
        child, pool = runner.child, runner.pool
        if child is None or pool is None:
            raise NotReady(f"{runner.name} could not be started (see the gateway log)")
        if not await child.wait_running(self.start_timeout_s):
            if child.state is ChildState.FAILED:
                raise NotReady(f"{runner.name} is not available: {child.failure}")
            raise NotReady(f"{runner.name} is not ready: {child.describe()} (see {runner.log_path})")
        return pool

    def _lay_out(self, runner: RunnerProcess) -> None:
        """Files the runner needs: spec, artifact links, a private socket directory free of stale sockets."""
        runner.spec_path = materialize(runner.version, self.blobs, self.runners_dir)
        runner.log_path = runner.spec_path.parent / "runner.log"
        runner.socket_path = socket_path_for(self.runners_dir, runner.version.id, self._pid)
        if not runner.socket_path.is_relative_to(self.runners_dir.absolute()):
            # Under the shared temp dir the parent must be ours as well: whoever owns a directory can swap
            # the entries in it, our private one included.
            private_dir(runner.socket_path.parent.parent)
        private_dir(runner.socket_path.parent)
        remove_stale_sockets(runner.socket_path.parent, self._pid)

    def _start(self, runner: RunnerProcess) -> None:
        assert runner.spec_path is not None and runner.socket_path is not None  # set by _lay_out
        socket_path = runner.socket_path
        command = [
            sys.executable,
            "-m",
            "modelmarket.runtime.runner",
            "--spec",
            str(runner.spec_path),
            "--socket",
            str(socket_path),
            "--parent-pid",
            str(self._pid),
            "--max-request-bytes",
            str(self.max_request_bytes),
        ]

        async def probe() -> bool:
            return await probe_ready(str(socket_path), self.probe_timeout_s)

        def before_spawn() -> None:
            # The previous process (if any) is gone: its socket file and our connections to it are dead.
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            if runner.pool is not None:
                runner.pool.drop_idle()

        child = ChildProcess(
            runner.name,
            command,
            policy=self.policy,
            log_path=runner.log_path,
            no_restart_codes={EXIT_MODEL_LOAD_FAILED: "the model failed to load"},
            probe=ProbeSettings(probe, self.probe_interval_s, self.unresponsive_after_s, self.start_timeout_s),
            before_spawn=before_spawn,
            stop_timeout_s=self.stop_timeout_s,
        )
        runner.pool = RunnerPool(
            str(socket_path),
            self.pool_size,
            self.request_timeout_s,
            max_response_bytes=self.max_response_bytes,
            on_timeout=lambda: child.recycle(f"a call took longer than {self.request_timeout_s:g}s"),
        )
        runner.child = child
        child.start()

    async def stop(self) -> None:
        """Stop every runner (concurrently: each may take ``stop_timeout_s``). No runner starts after this."""
        self._stopping = True
        results = await asyncio.gather(*(self._stop_one(r) for r in self.runners.values()), return_exceptions=True)
        for runner, result in zip(self.runners.values(), results, strict=True):
            if isinstance(result, BaseException):
                log.error("stopping %s failed", runner.name, exc_info=result)

    async def _stop_one(self, runner: RunnerProcess) -> None:
        if runner.pool is not None:
            await runner.pool.close()
        if runner.child is not None:
            await runner.child.stop()
        if runner.socket_path is not None:
            runner.socket_path.unlink(missing_ok=True)
            if not runner.socket_path.is_relative_to(self.runners_dir.absolute()):
                with contextlib.suppress(OSError):  # the short-path directory under TMPDIR, if now empty
                    runner.socket_path.parent.rmdir()
