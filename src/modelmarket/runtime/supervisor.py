"""The supervisor: starts one ModelRunner process per served version, waits for readiness, restarts one that
dies (bounded, with backoff), and hands the gateway a pooled connection to each.

Each runner gets an inherited listening socket the supervisor bound on a free loopback port, so there is no
port race. Its artifacts are laid out as read-only symlinks to the content-addressed blobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelmarket.adapters.blobs import BlobStore
from modelmarket.core.errors import NotReady
from modelmarket.registry.service import VersionRecord
from modelmarket.runtime.base import ModelSpec, TensorSpec
from modelmarket.runtime.pool import RunnerPool

log = logging.getLogger(__name__)


def spec_for(version: VersionRecord, artifact_root: Path) -> ModelSpec:
    m = version.manifest
    return ModelSpec(
        name=m.name,
        version=m.version,
        runtime=m.runtime,
        artifact_root=artifact_root,
        artifacts=tuple(a.path for a in version.artifacts),
        inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in m.inputs),
        outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in m.outputs),
        parameters=dict(m.parameters),
    )


def materialize(version: VersionRecord, blobs: BlobStore, runners_dir: Path) -> Path:
    """Write the runner's spec file with its artifacts linked under ``runners_dir/<version id>/artifacts``."""
    base = runners_dir / version.id
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


@dataclass
class RunnerProcess:
    version: VersionRecord
    spec_path: Path | None = None
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    pool: RunnerPool | None = None
    port: int = 0
    ready: bool = False
    restarts: int = 0
    failed: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Supervisor:
    def __init__(
        self,
        blobs: BlobStore,
        runners_dir: Path,
        start_timeout_s: float,
        request_timeout_s: float,
        pool_size: int,
        max_restarts: int,
        max_request_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.blobs = blobs
        self.max_request_bytes = max_request_bytes
        self.runners_dir = runners_dir
        self.start_timeout_s = start_timeout_s
        self.request_timeout_s = request_timeout_s
        self.pool_size = pool_size
        self.max_restarts = max_restarts
        self.runners: dict[str, RunnerProcess] = {}
        self.preloaded: set[str] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = False

    def start_monitor(self, interval_s: float = 0.5) -> None:
        self._monitor = asyncio.create_task(self._watch(interval_s))

    def is_ready(self, version: VersionRecord) -> bool:
        runner = self.runners.get(version.id)
        return runner is not None and runner.ready

    async def pool_for(self, version: VersionRecord) -> RunnerPool:
        """The pool of a ready runner for ``version``, starting the runner on first use."""
        runner = self.runners.get(version.id)
        if runner is not None and runner.ready and runner.pool is not None:
            return runner.pool
        return await self.ensure_started(version)

    def register(self, version: VersionRecord) -> RunnerProcess:
        """The version's runner record (created on first use; its process starts in ``ensure_started``)."""
        runner = self.runners.get(version.id)
        if runner is None:
            runner = self.runners[version.id] = RunnerProcess(version)
        return runner

    async def ensure_started(self, version: VersionRecord) -> RunnerPool:
        # Register before the first await, so concurrent first calls share one runner and one lock.
        runner = self.register(version)
        async with runner.lock:
            if self._stopping:
                raise NotReady("the gateway is shutting down")
            if runner.failed is not None:
                raise NotReady(runner.failed)
            if runner.spec_path is None:
                runner.spec_path = await asyncio.to_thread(materialize, version, self.blobs, self.runners_dir)
                runner.log_path = runner.spec_path.parent / "runner.log"
            if not (runner.ready and runner.pool is not None):
                await self._start(runner)
            assert runner.pool is not None
            return runner.pool

    def preloaded_ready(self) -> bool:
        """Whether every runner preloaded at startup is ready; one that failed for good does not hold this back."""
        runners = [self.runners[v] for v in self.preloaded if v in self.runners]
        return all(r.ready or r.failed is not None for r in runners)

    def _spawn(self, runner: RunnerProcess) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        runner.port = sock.getsockname()[1]
        fd = sock.fileno()
        cmd = [
            sys.executable,
            "-m",
            "modelmarket.cli.main",
            "runner",
            "--spec",
            str(runner.spec_path),
            "--fd",
            str(fd),
            "--max-request-bytes",
            str(self.max_request_bytes),
            "--parent-pid",
            str(os.getpid()),
        ]
        assert runner.log_path is not None
        with open(runner.log_path, "ab") as log_file:
            runner.proc = subprocess.Popen(
                cmd,
                pass_fds=(fd,),
                stdout=log_file,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        sock.close()

    async def _start(self, runner: RunnerProcess) -> None:
        name = f"{runner.version.model_name}@{runner.version.version}"
        await self._kill(runner)  # never two processes for one version
        self._spawn(runner)
        pool = RunnerPool("127.0.0.1", runner.port, self.pool_size, self.request_timeout_s)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert runner.proc is not None
            if runner.proc.poll() is not None:
                await pool.close()
                raise NotReady(
                    f"runner for {name} exited with code {runner.proc.returncode} while starting "
                    f"(see {runner.log_path})"
                )
            try:
                response = await pool.request("GET", "/v2/health/ready")
                if response.status == 200:
                    runner.pool, runner.ready = pool, True
                    log.info("runner %s ready on port %d", name, runner.port)
                    return
            except NotReady:
                pass
            await asyncio.sleep(0.05)
        await pool.close()
        await self._kill(runner)
        raise NotReady(f"runner for {name} was not ready within {self.start_timeout_s}s (see {runner.log_path})")

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for runner in list(self.runners.values()):
                if runner.ready and runner.proc is not None and runner.proc.poll() is not None:
                    try:
                        await self._restart(runner)
                    except Exception:  # one runner's trouble must not end the watch over the others
                        log.exception("restarting %s@%s failed", runner.version.model_name, runner.version.version)

    async def _restart(self, runner: RunnerProcess) -> None:
        name = f"{runner.version.model_name}@{runner.version.version}"
        code = runner.proc.returncode if runner.proc else None
        runner.ready = False
        if runner.pool is not None:
            await runner.pool.close()
            runner.pool = None
        if runner.restarts >= self.max_restarts:
            runner.failed = f"runner for {name} died {runner.restarts + 1} times; not restarting"
            log.error(runner.failed)
            return
        runner.restarts += 1
        log.warning("runner %s exited with code %s; restart %d", name, code, runner.restarts)
        async with runner.lock:
            if runner.ready:  # a request already started a new one
                return
            await asyncio.sleep(min(0.1 * 2**runner.restarts, 5.0))
            if self._stopping:
                return
            try:
                await self._start(runner)
            except NotReady as exc:
                log.error("restart of %s failed: %s", name, exc)

    async def _kill(self, runner: RunnerProcess, timeout_s: float = 5.0) -> None:
        proc = runner.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, timeout_s)

    async def stop(self) -> None:
        """Stop every runner. No runner starts after this begins."""
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._monitor
        for runner in list(self.runners.values()):
            runner.ready = False
            try:
                if runner.pool is not None:
                    await runner.pool.close()
            finally:
                try:
                    await self._kill(runner)
                except Exception:  # keep going: the other runners must still be stopped
                    log.exception("stopping %s@%s failed", runner.version.model_name, runner.version.version)
