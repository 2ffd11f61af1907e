"""``python -I -m modelmarket.runtime.confine [options] -- COMMAND...``: confine this process, then exec COMMAND.

The first step of every sandboxed runner (``runtime/sandbox.py``): join the runner's cgroup (so COMMAND and all
it forks are counted and limited there), set rlimits, change to a private working directory and replace the
environment with a minimal one. It imports nothing of the platform, so it starts fast and cannot leak state.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Sequence

MB = 1024 * 1024
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m modelmarket.runtime.confine")
    parser.add_argument("--cgroup-procs", action="append", default=[], help="cgroup.procs file to join")
    parser.add_argument("--data-mb", type=int, help="RLIMIT_DATA in MiB")
    parser.add_argument("--nofile", type=int, help="RLIMIT_NOFILE")
    parser.add_argument("--fsize-mb", type=int, help="RLIMIT_FSIZE in MiB")
    parser.add_argument("--nproc", type=int, help="RLIMIT_NPROC (not enforced for root: the cgroup is)")
    parser.add_argument("--cwd", help="working directory")
    parser.add_argument("--die-with-parent", action="store_true", help="SIGKILL when our parent process dies")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE kept in the environment")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def _limit(kind: int, value: int) -> None:
    _soft, hard = resource.getrlimit(kind)
    new_hard = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (new_hard, new_hard))


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): kept across exec, so runsc dies with the gateway that started it."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _arguments().error("give the command after --")
    pid = str(os.getpid())
    for procs in args.cgroup_procs:
        with open(procs, "w") as fh:
            fh.write(pid)
    if args.data_mb:
        _limit(resource.RLIMIT_DATA, args.data_mb * MB)
    if args.nofile:
        _limit(resource.RLIMIT_NOFILE, args.nofile)
    if args.fsize_mb:
        _limit(resource.RLIMIT_FSIZE, args.fsize_mb * MB)
    if args.nproc:
        _limit(resource.RLIMIT_NPROC, args.nproc)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if args.die_with_parent:
        _die_with_parent()
    if args.cwd:
        os.chdir(args.cwd)
    env = dict(BASE_ENV)
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    os.execvpe(command[0], command, env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
