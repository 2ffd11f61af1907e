"""The metering consumer as a child process of the gateway.

Rating and aggregating usage is Python work; in the gateway's process it would compete with the request path
for the interpreter lock. As its own process it runs on another core, and a crash of it loses nothing: the
consumer's offset moves only with the rows it wrote. The gateway restarts it through a ``RestartPolicy``,
except when it stopped because a record breaks an invariant (exit status ``EXIT_METERING_HALTED``): restarting
would only halt again on the same record, so it stays down and ``failure`` says why (readiness reports it).

The child is started as ``python -m modelmarket.gateway.metering_process --parent-pid N``, never through the CLI.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.core import lifetime
from modelmarket.core.errors import MeteringHalted
from modelmarket.core.process import ChildProcess, ChildState, RestartPolicy
from modelmarket.metering.consumer import CONSUMER_NAME
from modelmarket.metering.partitions import consumer_name
from modelmarket.observability.metrics_metering import SAMPLE_S, LagReading, event_time, start_lag_sampler

EXIT_METERING_HALTED = 3
"""Exit status of a consumer that met a record breaking an invariant: an operator must look; no restart."""
METERING_STOP_TIMEOUT_S = 15.0
"""Grace after SIGTERM: the consumer applies what is left in the log before it exits."""
METERING_POLICY = RestartPolicy(max_restarts=5, backoff_base_s=0.5, backoff_cap_s=10.0, reset_after_s=60.0)


def metering_command(parent_pid: int) -> list[str]:
    return [sys.executable, "-m", "modelmarket.gateway.metering_process", "--parent-pid", str(parent_pid)]


class MeteringProcess:
    """The gateway's metering child. ``command`` replaces the real consumer (tests use a stand-in)."""

    def __init__(
        self,
        log_path: Path,
        env: Mapping[str, str],
        *,
        policy: RestartPolicy = METERING_POLICY,
        command: Sequence[str] | None = None,
        stop_timeout_s: float = METERING_STOP_TIMEOUT_S,
    ) -> None:
        self.log_path = log_path
        self.env = dict(env)
        self.policy = policy
        self.command = list(command) if command is not None else None
        self.stop_timeout_s = stop_timeout_s
        self.child: ChildProcess | None = None

    @property
    def failure(self) -> str | None:
        """Why the consumer is down for good (halted on a record, or out of restarts); None while it is not."""
        child = self.child
        return child.failure if child is not None and child.state is ChildState.FAILED else None

    @property
    def restarts(self) -> int:
        return self.child.restarts if self.child is not None else 0

    def start(self) -> None:
        """Spawn the consumer and watch it. Call from the gateway's event loop."""
        self.child = ChildProcess(
            "metering consumer",
            self.command or metering_command(os.getpid()),
            policy=self.policy,
            env=self.env,
            log_path=self.log_path,
            no_restart_codes={EXIT_METERING_HALTED: "metering halted"},
            stop_timeout_s=self.stop_timeout_s,
        )
        self.child.start()

    def restart_if_resumed(self, halted: str | None) -> bool:
        """Start the consumer again if it stopped on a halt that an operator has since cleared (``halted`` is
        the store's current halt reason: None once `modelmarket meter --resume` ran). True if it restarted."""
        child = self.child
        if child is None or child.state is not ChildState.FAILED or child.returncode != EXIT_METERING_HALTED:
            return False
        if halted is not None:
            return False
        self.start()
        return True

    async def stop(self) -> None:
        """SIGTERM (it applies what is in the log, then exits), SIGKILL after ``stop_timeout_s``."""
        if self.child is not None:
            await self.child.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Follow the event log until SIGTERM/SIGINT (exit 0), or until a record breaks an invariant
    (``metering halted: <reason>`` on stderr, exit ``EXIT_METERING_HALTED``)."""
    parser = argparse.ArgumentParser(prog="python -m modelmarket.gateway.metering_process")
    parser.add_argument("--parent-pid", type=int, help="stop once process PID, our parent, has exited")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.parent_pid is not None:
        lifetime.exit_with_parent(args.parent_pid)
    platform = bootstrap()
    sampler = start_lag_sampler(lambda: _lag_reader(platform), stop)  # its metrics, when the gateway wants them
    try:
        platform.metering.follow(stop)
    except MeteringHalted as exc:
        print(f"metering halted: {exc.reason}", file=sys.stderr, flush=True)
        return EXIT_METERING_HALTED
    finally:
        stop.set()
        if sampler is not None:
            sampler.join(timeout=SAMPLE_S + 5)
        platform.close()
    return 0


def _lag_reader(platform: Platform) -> tuple[Callable[[], LagReading], Callable[[], None]]:
    """(read the metering lag, close): the log's last offset, the applied one, the oldest waiting event's time,
    summed over the partitions (the oldest: the oldest of any). Its logs read without a durable consumer
    (``consumer=None``), so sampling never moves the metering consumers' position."""
    metering = platform.metering
    config = metering.log_config
    logs = [config.open_log(p, None) if config is not None else metering.open_log() for p in range(metering.partitions)]

    def read() -> LagReading:
        last_total = applied_total = 0
        oldest = None
        for p, event_log in enumerate(logs):
            last = event_log.last_offset()
            with platform.store.read() as uow:
                applied = uow.usage.offset(consumer_name(CONSUMER_NAME, p))
            last_total, applied_total = last_total + last, applied_total + applied
            if last > applied:
                waiting = event_log.read(applied, 1)
                at = event_time(waiting[0].payload) if waiting else None
                oldest = at if oldest is None or (at is not None and at < oldest) else oldest
        return LagReading(last_total, applied_total, oldest)

    def close() -> None:
        for event_log in logs:
            event_log.close()

    return read, close


if __name__ == "__main__":
    sys.exit(main())
