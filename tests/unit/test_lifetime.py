"""A child told its parent's pid stops even when that parent died before the child got going."""

from __future__ import annotations

import signal
import subprocess
import sys
import time


def test_child_stops_when_its_parent_is_already_gone() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    code = (
        "import time\nfrom modelmarket.core.lifetime import exit_with_parent\n"
        f"exit_with_parent({dead.pid})\ntime.sleep(30)\n"
    )
    started = time.monotonic()
    child = subprocess.run([sys.executable, "-c", code], timeout=20)
    assert child.returncode == -signal.SIGTERM
    assert time.monotonic() - started < 15


def test_child_keeps_running_while_its_parent_lives() -> None:
    code = (
        "import os, time\nfrom modelmarket.core.lifetime import exit_with_parent\n"
        "exit_with_parent(os.getppid(), interval_s=0.05)\ntime.sleep(0.5)\nprint('finished')\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert child.returncode == 0 and child.stdout.strip() == "finished"
