"""The bwrap command line mounts its tmpfs before everything else it shows: a Python installation, a version
folder or a socket folder under /tmp (a clone in a temp dir, a test's home) would otherwise be hidden by it."""

from __future__ import annotations

import sys
from pathlib import Path

from modelmarket.runtime.sandbox import Layout, bwrap_argv


def test_the_tmpfs_comes_before_every_bind_that_may_live_under_tmp(tmp_path: Path) -> None:
    layout = Layout(
        version_dir=tmp_path / "runners" / "v",
        socket_dir=tmp_path / "runners" / "v" / "sockets",
        work_dir=tmp_path / "work",
        state_dir=tmp_path / "state",
        hidden=(tmp_path / "home",),
    )
    argv = bwrap_argv(layout)
    tmpfs = argv.index("--tmpfs")
    binds = [i for i, arg in enumerate(argv) if arg in ("--ro-bind", "--bind") and argv[i + 1] != "/usr"]
    assert binds and all(i > tmpfs for i in binds), argv
    shown = {argv[i + 1] for i in binds}
    assert str(layout.version_dir) in shown and str(layout.socket_dir) in shown
    assert any(Path(sys.prefix).resolve().is_relative_to(Path(p)) or p == sys.prefix for p in shown), shown
