"""One supervisor for the platform's child processes (model runners, the metering consumer).

A ``ChildProcess`` spawns a command in its own session (so a Ctrl+C aimed at the gateway's terminal does not hit
it first), watches it, and restarts it when it exits, spacing attempts out with exponential backoff and jitter
(``RestartPolicy``). The restart budget is a budget per bad period, not per lifetime: once the child has been
healthy for ``reset_after_s`` the count starts again, so a runner that crashes once a day is never given up on.
Some exit codes mean "restarting cannot help" (a record that breaks an invariant, a model that cannot load); they
end in ``FAILED`` with a reason an operator can read, instead of burning the budget.

An optional probe (an async callable answering "are you serving?") turns a started process into a running one,
and keeps checking it: a child that stops answering is reported unhealthy at once, and killed and restarted
through the policy once it has not answered for ``unresponsive_after_s`` (a hung or SIGSTOPped process never
exits on its own). Stopping sends SIGTERM to the child's process group, then SIGKILL after a bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelmarket.core.aio import wait_event
from modelmarket.core.errors import InvariantViolated, ensure

log = logging.getLogger(__name__)

DEFAULT_MAX_RESTARTS = 5
DEFAULT_BACKOFF_BASE_S = 0.2
DEFAULT_BACKOFF_CAP_S = 10.0
DEFAULT_JITTER_RATIO = 0.2
DEFAULT_RESET_AFTER_S = 60.0
DEFAULT_STOP_TIMEOUT_S = 10.0
"""Grace a child gets after SIGTERM (a runner finishing its calls, the consumer applying what it read)."""
KILL_WAIT_S = 5.0
"""How long to wait for a SIGKILLed child to be reaped; the kernel does not take longer unless it is stuck in I/O."""
DEFAULT_POLL_INTERVAL_S = 0.1
DEFAULT_PROBE_INTERVAL_S = 1.0
LOG_TAIL_BYTES = 4096
"""How much of the end of a child's log is read to quote its last words in a failure reason."""

Probe = Callable[[], Awaitable[bool]]


class ChildState(enum.Enum):
    STARTING = "starting"
    """Spawned; its probe has not answered yet."""
    RUNNING = "running"
    """Spawned and (with a probe) answered it at least once since."""
    BACKOFF = "backoff"
    """Exited; waiting out the backoff before the next spawn."""
    FAILED = "failed"
    """Given up on: out of restarts, an exit code that must not be restarted, or a command that cannot start."""
    STOPPED = "stopped"
    """Stopped on purpose (``stop()``)."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart a child that exited, and when to give up.

    ``max_restarts`` restarts are allowed within one bad period; after the child has been healthy for
    ``reset_after_s`` the count goes back to zero. Restart ``n`` (1-based) waits
    ``min(backoff_cap_s, backoff_base_s * 2**(n-1))``, shortened by up to ``jitter_ratio`` of itself so that
    children that died together do not all come back in the same instant.
    """

    max_restarts: int = DEFAULT_MAX_RESTARTS
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S
    jitter_ratio: float = DEFAULT_JITTER_RATIO
    reset_after_s: float = DEFAULT_RESET_AFTER_S

    def __post_init__(self) -> None:
        ensure(self.max_restarts >= 0, f"max_restarts must be >= 0, got {self.max_restarts}")
        ensure(0 <= self.backoff_base_s <= self.backoff_cap_s, "need 0 <= backoff_base_s <= backoff_cap_s")
        ensure(0 <= self.jitter_ratio <= 1, f"jitter_ratio must be within [0, 1], got {self.jitter_ratio}")
        ensure(self.reset_after_s > 0, f"reset_after_s must be > 0, got {self.reset_after_s}")

    def delay_s(self, restart: int, unit: float) -> float:
        """The wait before restart number ``restart`` (1-based); ``unit`` is a random draw from [0, 1)."""
        ensure(restart >= 1, f"restart numbers start at 1, got {restart}")
        ensure(0 <= unit < 1, f"unit must be within [0, 1), got {unit}")
        exponent = min(restart - 1, 62)  # bounded: 2**62 * base already exceeds any cap
        delay = min(self.backoff_cap_s, self.backoff_base_s * 2.0**exponent)
        return delay * (1 - self.jitter_ratio * unit)


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How a child with a probe is watched: probe every ``interval_s``; kill it when it has not answered for
    ``unresponsive_after_s``; kill a child that has not answered at all ``start_timeout_s`` after its spawn."""

    probe: Probe
    interval_s: float = DEFAULT_PROBE_INTERVAL_S
    unresponsive_after_s: float = 60.0
    start_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        ensure(self.interval_s > 0, "probe interval_s must be > 0")
        ensure(self.unresponsive_after_s > 0, "unresponsive_after_s must be > 0")
        ensure(self.start_timeout_s > 0, "start_timeout_s must be > 0")


@dataclass(slots=True)
class _Run:
    """Bookkeeping of one spawned process."""

    proc: subprocess.Popen[bytes]
    spawned_at: float
    log_offset: int = 0
    """Size of the log when this process was spawned: its own words start there."""
    healthy_since: float | None = None
    last_answer_at: float | None = None
    last_probe_at: float = 0.0
    kill_reason: str | None = None
    recycled: bool = False
    """Killed on purpose (``recycle``: a call it could not finish in time), not a crash: no budget is spent."""


@dataclass
class _Changes:
    """Wakes everyone waiting for a state change (``wait_running``)."""

    event: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.event.set()
        self.event = asyncio.Event()


class ChildProcess:
    """A supervised child process. Create it, ``start()`` it inside a running event loop, ``await stop()``.

    ``no_restart_codes`` maps exit codes to what they mean ("metering halted"); such an exit ends in FAILED.
    ``before_spawn`` runs before every spawn (e.g. to remove a dead runner's socket file). ``explain_exit``
    (given the exit code) may name what ended the process ("sandbox: memory limit") and clean up after it;
    a cause for which ``free_restart`` is true restarts at once without using the budget (a call that reached
    its sandbox's limit is the caller's input, not a crash of the runner: nobody can exhaust it for free).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        policy: RestartPolicy | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        pass_fds: Sequence[int] = (),
        no_restart_codes: Mapping[int, str] | None = None,
        probe: ProbeSettings | None = None,
        before_spawn: Callable[[], None] | None = None,
        explain_exit: Callable[[int], str | None] | None = None,
        free_restart: Callable[[str], bool] | None = None,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        rng: random.Random | None = None,
    ) -> None:
        ensure(len(command) > 0, "a child process needs a command")
        self.name = name
        self.command = list(command)
        self.policy = policy or RestartPolicy()
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.pass_fds = tuple(pass_fds)
        self.no_restart_codes = dict(no_restart_codes or {})
        self.probe = probe
        self.before_spawn = before_spawn
        self.explain_exit = explain_exit
        self.free_restart = free_restart
        self.stop_timeout_s = stop_timeout_s
        self.poll_interval_s = poll_interval_s
        self._rng = rng or random.Random()
        self.state = ChildState.STOPPED
        self.restarts = 0
        """Restarts in the current budget (goes back to 0 after a healthy ``policy.reset_after_s``)."""
        self.spawns = 0
        self.failure: str | None = None
        """Why the child is FAILED (None otherwise)."""
        self.last_exit: str | None = None
        """How the most recent process ended, for messages while the next one starts."""
        self._run: _Run | None = None
        self._task: asyncio.Task[None] | None = None
        self._changes: _Changes | None = None
        self._stopping = False

    # -- queries ------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._run.proc.pid if self._run is not None and self._run.proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Spawned and (with a probe) answered once since; it may have missed probes after that."""
        return self.state is ChildState.RUNNING

    @property
    def returncode(self) -> int | None:
        """Exit status of the latest process (negative: killed by that signal); None while it runs."""
        return self._run.proc.poll() if self._run is not None else None

    @property
    def healthy(self) -> bool:
        """Running, and (with a probe) its most recent probe was answered."""
        run = self._run
        return self.state is ChildState.RUNNING and run is not None and run.healthy_since is not None

    def silent_for_s(self) -> float | None:
        """Seconds since the running child last answered its probe (None if it answered the latest one)."""
        run = self._run
        if self.state is not ChildState.RUNNING or run is None or run.healthy_since is not None:
            return None
        return time.monotonic() - (run.last_answer_at or run.spawned_at)

    def describe(self) -> str:
        """One line for an operator: the state and, when it is not healthy, why."""
        if self.state is ChildState.FAILED:
            return f"failed: {self.failure}"
        if self.state is ChildState.RUNNING:
            silent = self.silent_for_s()
            return "running" if silent is None else f"running but not answering its probe for {silent:.1f}s"
        if self.state is ChildState.BACKOFF:
            return f"restarting ({self.restarts}/{self.policy.max_restarts}) after it {self.last_exit}"
        return str(self.state.value)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the child and start watching it. Call from inside the event loop that will supervise it."""
        ensure(self._task is None, f"{self.name} was already started")
        self._changes = _Changes()
        self._stopping = False
        self._spawn()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name=f"watch {self.name}")
        self._task.add_done_callback(self._watch_ended)

    def _watch_ended(self, task: asyncio.Task[None]) -> None:
        """A watch that dies of a bug leaves the child unsupervised: say so loudly instead of losing the error."""
        if not task.cancelled() and task.exception() is not None:
            log.critical("%s: the watch over it crashed", self.name, exc_info=task.exception())

    async def wait_running(self, timeout_s: float) -> bool:
        """Wait until the child is RUNNING (True) or FAILED/STOPPED, or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self.state is not ChildState.RUNNING:
            if self.state in (ChildState.FAILED, ChildState.STOPPED) or self._changes is None:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await wait_event(self._changes.event, remaining)
        return True

    def recycle(self, reason: str) -> None:
        """Kill the running process now (SIGKILL); the watch restarts it through the policy."""
        run = self._run
        if run is None or run.proc.poll() is not None or self._stopping:
            return
        log.warning("%s: recycling (%s)", self.name, reason)
        run.recycled = True
        self._kill(run, reason)

    async def stop(self) -> None:
        """Stop watching, then SIGTERM the child and SIGKILL it if it is still there after ``stop_timeout_s``."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        run = self._run
        if run is not None and run.proc.poll() is None:
            _signal_group(run.proc, signal.SIGTERM)
            if not await _wait_exit(run.proc, self.stop_timeout_s, self.poll_interval_s):
                log.warning("%s ignored SIGTERM for %.1fs; killing it", self.name, self.stop_timeout_s)
                _signal_group(run.proc, signal.SIGKILL)
                await _wait_exit(run.proc, KILL_WAIT_S, self.poll_interval_s)
        if self.state is not ChildState.FAILED:
            self._set(ChildState.STOPPED)

    # -- internals ----------------------------------------------------------------------------------------
    def _set(self, state: ChildState) -> None:
        if state is not self.state:
            self.state = state
            if self._changes is not None:
                self._changes.notify()

    def _spawn(self) -> None:
        if self.before_spawn is not None:
            self.before_spawn()
        log_offset = 0
        try:
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.log_path, "ab") as out:
                    log_offset = out.seek(0, os.SEEK_END)
                    proc = self._popen(out.fileno())
            else:
                proc = self._popen(None)
        except OSError as exc:
            self._fail(f"cannot start {self.name}: {exc}")
            return
        self.spawns += 1
        now = time.monotonic()
        self._run = _Run(proc=proc, spawned_at=now, log_offset=log_offset)
        if self.probe is None:
            self._run.healthy_since = self._run.last_answer_at = now
            self._set(ChildState.RUNNING)
        else:
            self._set(ChildState.STARTING)

    def _popen(self, out: int | None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            pass_fds=self.pass_fds,
            start_new_session=True,
        )

    def _fail(self, reason: str) -> None:
        self.failure = reason
        log.error("%s", reason)
        self._set(ChildState.FAILED)

    async def _watch(self) -> None:
        while self.state not in (ChildState.FAILED, ChildState.STOPPED):
            run = self._run
            if run is None:
                raise InvariantViolated(f"{self.name}: watching without a process")
            code = run.proc.poll()
            if code is not None:
                await self._after_exit(run, code)
                continue
            if run.kill_reason is not None:
                pass  # killed; the next poll sees it gone (until then, no probe may call it RUNNING again)
            elif self.probe is not None:
                await self._check(run, self.probe)
            elif run.healthy_since is not None and time.monotonic() - run.healthy_since >= self.policy.reset_after_s:
                self.restarts = 0
            await asyncio.sleep(self.poll_interval_s)

    async def _check(self, run: _Run, settings: ProbeSettings) -> None:
        now = time.monotonic()
        due = settings.interval_s if self.state is ChildState.RUNNING else self.poll_interval_s
        if now - run.last_probe_at >= due:
            run.last_probe_at = now
            answered = await _probe_safely(settings.probe)
            now = time.monotonic()
            if answered:
                run.last_answer_at = now
                if run.healthy_since is None:
                    run.healthy_since = now
                self._set(ChildState.RUNNING)
            else:
                run.healthy_since = None
        if self.state is ChildState.STARTING:
            if now - run.spawned_at > settings.start_timeout_s:
                self._kill(run, f"it did not answer within {settings.start_timeout_s:g}s of starting")
            return
        if run.healthy_since is not None and now - run.healthy_since >= self.policy.reset_after_s:
            self.restarts = 0
        silent_since = run.last_answer_at or run.spawned_at
        if run.healthy_since is None and now - silent_since > settings.unresponsive_after_s:
            self._kill(run, f"it did not answer for {settings.unresponsive_after_s:g}s")

    def _kill(self, run: _Run, reason: str) -> None:
        """SIGKILL the process; the watch restarts it. It is not RUNNING from this instant: nobody should send
        it more work in the moment before the watch sees it gone."""
        log.warning("%s: killing it: %s", self.name, reason)
        run.kill_reason = reason
        run.healthy_since = None
        _signal_group(run.proc, signal.SIGKILL)
        self.last_exit = f"was killed because {reason}"
        self._set(ChildState.BACKOFF)

    async def _after_exit(self, run: _Run, code: int) -> None:
        how = f"exited with code {code}" if code >= 0 else f"was killed by {_signal_name(-code)}"
        cause = self.explain_exit(code) if self.explain_exit is not None else None
        if cause is not None:
            how += f" ({cause})"
        if run.kill_reason is not None:
            how += f" (killed because {run.kill_reason})"
        elif self.state is ChildState.STARTING:
            how += " while starting"
        tail = _log_tail(self.log_path, run.log_offset)
        self.last_exit = f"{how}{f': {tail}' if tail else ''}"
        if self._stopping:
            self._set(ChildState.STOPPED)
            return
        meaning = self.no_restart_codes.get(code)
        if meaning is not None and run.kill_reason is None:
            self._fail(f"{self.name} {how} ({meaning}); not restarting{f': {tail}' if tail else ''}")
            return
        if run.recycled or (cause is not None and self.free_restart is not None and self.free_restart(cause)):
            # a deliberate restart, or a limit a call reached: neither may use up the budget for crashes
            self._spawn()
            return
        if self.restarts >= self.policy.max_restarts:
            where = f" (see {self.log_path})" if self.log_path is not None else ""
            self._fail(f"{self.name} {self.last_exit}; gave up after {self.restarts} restarts{where}")
            return
        self.restarts += 1
        delay_s = self.policy.delay_s(self.restarts, self._rng.random())
        log.warning("%s %s; restart %d in %.2fs", self.name, self.last_exit, self.restarts, delay_s)
        self._set(ChildState.BACKOFF)
        await asyncio.sleep(delay_s)
        if not self._stopping:
            self._spawn()


async def _probe_safely(probe: Probe) -> bool:
    """A probe that raises counts as unanswered: the probe checks the child, not itself."""
    try:
        return await probe()
    except (OSError, TimeoutError, ValueError) as exc:
        log.debug("probe failed: %r", exc)
        return False


async def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float, interval_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the child's whole process group (it leads one: ``start_new_session``), so helpers it forked go too.

    Only while the child is unreaped: until then its pid, and so its group id, cannot belong to anyone else.
    """
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group is gone and its id taken by another user's process: signal only ours
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's counts: it is not ours to reuse). A number no pid can be,
    as read from a folder's or a file's name, is no process."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _log_tail(path: Path | None, since: int) -> str:
    """The last non-empty line a child wrote to its log after offset ``since`` (a bounded read), quoted in
    reasons; '' if it wrote none."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(since, size - LOG_TAIL_BYTES))
            data = fh.read(LOG_TAIL_BYTES)
    except OSError:
        return ""
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""
