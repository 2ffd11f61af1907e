"""Child processes (runners, the metering consumer) end when the process that started them is gone."""

from __future__ import annotations

import os
import signal
import threading


def exit_with_parent(parent: int, interval_s: float = 1.0) -> None:
    """Send ourselves SIGTERM (a graceful stop) once process ``parent`` is no longer our parent.

    The parent passes its pid on the command line: had the child read ``os.getppid()`` itself, a parent that
    died while the child was still starting would go unnoticed.
    """

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
