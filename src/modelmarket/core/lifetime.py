"""Child processes (runners, the metering consumer) end when the process that started them is gone."""

from __future__ import annotations

import os
import signal
import threading


def exit_with_parent(interval_s: float = 1.0) -> None:
    """Send ourselves SIGTERM (a graceful stop) once our parent process has exited."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
