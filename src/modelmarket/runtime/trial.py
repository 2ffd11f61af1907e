"""A model run for the publish gate: its runner started in the sandbox the operator's policy gives it, called with
OIP JSON requests from synchronous code, then stopped and its files removed.

The gate runs untrusted artifacts here (a pickle that writes a file, a ``predict.py`` that forks): the sandbox is
the gate, the scan only a signal. Each trial has its own supervisor, event loop thread and folder under
``MODELMARKET_HOME/gate/``, so it shares nothing with the gateway's runners.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from modelmarket.core.errors import DomainError, InvalidInput, NotReady
from modelmarket.core.process import RestartPolicy, pid_alive
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.registry.ports import BlobStore
from modelmarket.runtime.sandbox import SandboxPolicy
from modelmarket.runtime.supervisor import InProcessRunner, Supervisor, VersionRunners

_T = TypeVar("_T")
log = logging.getLogger(__name__)
MAX_REASON_CHARS = 500
"""Longest part of a model's error message carried into the gate's report."""
CALL_SLACK_S = 5.0
"""Added to the sandbox's per-call timeout when the gate waits for an answer (the runner's own timeout fires
first)."""


class _LoopThread:
    """An event loop in a daemon thread, for calling async supervisor code from the gate's synchronous stages."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gate-trial", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class SandboxTrial:
    """One model's runner for the gate (``governance.ports.Trial``)."""

    def __init__(self, loop: _LoopThread, target: VersionRunners | InProcessRunner, call_timeout_s: float) -> None:
        self._loop = loop
        self._target = target
        self._call_timeout_s = call_timeout_s
        self.profile = target.confinement.profile if isinstance(target, VersionRunners) else "inprocess"

    def infer(self, request: dict[str, Any], binary: bytes = b"") -> dict[str, Any]:
        version = self._target.version
        header = orjson.dumps(request)
        headers = [(b"content-type", b"application/json")]
        if binary:  # the binary tensor extension: the JSON header, then the raw tensor bytes
            headers = [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(len(header)).encode()),
            ]
        path = f"/v2/models/{version.model_name}/infer"
        try:
            answer = self._loop.run(self._target.request("POST", path, header + binary, headers), self._call_timeout_s)
        except TimeoutError:
            raise DomainError(f"timeout: no answer within {self._call_timeout_s:g}s") from None
        try:
            doc = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            doc = None
        if answer.status != 200 or not isinstance(doc, dict):
            raw = (
                doc.get("error") if isinstance(doc, dict) else answer.body[:MAX_REASON_CHARS].decode("utf-8", "replace")
            )
            reason = str(raw)[:MAX_REASON_CHARS]
            if 400 <= answer.status < 500:
                raise InvalidInput(f"the model refused the request ({answer.status}): {reason}")
            raise DomainError(f"the model failed ({answer.status}): {reason}")
        return doc

    def rss_bytes(self) -> int | None:
        if not isinstance(self._target, VersionRunners):
            return None
        sizes = [r.rss_bytes() for r in self._target.replicas]
        known = [s for s in sizes if s is not None]
        return max(known) if known else None


class SandboxTrialRunner:
    """``governance.ports.TrialRunner``: starts a version's runner as the gateway would, under ``policy``."""

    def __init__(
        self,
        blobs: BlobStore,
        gate_dir: Path,
        policy: SandboxPolicy,
        start_timeout_s: float,
        max_request_bytes: int,
        hidden: tuple[Path, ...] = (),
    ) -> None:
        self.blobs = blobs
        self.gate_dir = gate_dir
        # A package on trial is not approved yet: never loaded inside the process running the gate.
        self.policy = dataclasses.replace(policy, inprocess_runtimes=frozenset())
        self.start_timeout_s = start_timeout_s
        self.max_request_bytes = max_request_bytes
        self.hidden = hidden

    def remove_stale(self) -> None:
        """Remove trial folders left by processes that are gone (a gateway or CLI killed mid-trial)."""
        if not self.gate_dir.is_dir():
            return
        for folder in self.gate_dir.iterdir():
            pid_text = folder.name.split("-", 1)[0]
            if folder.is_dir() and not folder.is_symlink() and pid_text.isdigit() and not pid_alive(int(pid_text)):
                shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def open(self, version: VersionRecord) -> Iterator[SandboxTrial]:
        self.remove_stale()
        runners_dir = self.gate_dir / f"{os.getpid()}-{version.id}"
        supervisor = Supervisor(
            self.blobs,
            runners_dir,
            start_timeout_s=self.start_timeout_s,
            request_timeout_s=self.policy.timeout_s,
            pool_size=4,
            max_restarts=0,
            max_request_bytes=self.max_request_bytes,
            policy=RestartPolicy(max_restarts=0),
            sandbox_policy=self.policy,
            hidden=self.hidden,
            scale_queue=10**6,  # one replica: the benchmark measures one runner
        )
        loop = _LoopThread()
        try:
            try:
                target = loop.run(supervisor.ensure_started(version), self.start_timeout_s + CALL_SLACK_S)
            except TimeoutError:
                raise NotReady(f"the model did not start within {self.start_timeout_s:g}s") from None
            timeout = supervisor.confinement(version).timeout_s + CALL_SLACK_S
            yield SandboxTrial(loop, target, timeout)
        finally:
            try:
                loop.run(supervisor.stop(), supervisor.stop_timeout_s + CALL_SLACK_S)
            except BaseException:
                log.exception("stopping the trial of %s failed; killing what it started", version.id)
            finally:
                _kill_leftovers(supervisor)
                loop.close()
                shutil.rmtree(runners_dir, ignore_errors=True)


def _kill_leftovers(supervisor: Supervisor) -> None:
    """Whatever a trial's runners left (a stop that timed out, an interrupted one): killed, cgroups removed."""
    for runners in supervisor.runners.values():
        for replica in runners.replicas:
            child = replica.child
            if child is not None and child.pid is not None and pid_alive(child.pid):
                with contextlib.suppress(OSError):
                    os.kill(child.pid, signal.SIGKILL)
            if replica.cgroup is not None:
                with contextlib.suppress(Exception):
                    replica.cgroup.kill_all()
                    replica.cgroup.remove()
