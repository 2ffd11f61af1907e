"""The metering consumer as a child process of the gateway.

Rating and aggregating usage is Python work; in the gateway's process it would compete with the request path
for the interpreter lock. As its own process (``modelmarket meter``) it runs on another core, and a crash of it
loses nothing: the consumer's offset moves only with the rows it wrote. The gateway restarts it if it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


class MeteringProcess:
    def __init__(self, log_path: Path, env: dict[str, str], check_interval_s: float = 1.0) -> None:
        self.log_path = log_path
        self.env = env
        self.check_interval_s = check_interval_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "modelmarket.cli.main", "meter", "--parent-pid", str(os.getpid())]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._spawn()
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            if self.proc is not None and self.proc.poll() is not None:
                self.restarts += 1
                log.warning(
                    "metering consumer exited with code %s; restarting (%d)", self.proc.returncode, self.restarts
                )
                await asyncio.sleep(min(0.5 * self.restarts, 10.0))
                self._spawn()

    async def stop(self, timeout_s: float = 15.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # it applies what is in the log, then exits
        try:
            await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
