"""2. Runners are reachable only by the platform: every supervised runner listens on a Unix socket (mode 0600) in a
directory only the platform's user can enter (0700), and holds no TCP socket at all."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from tests.hostile.conftest import DEMO_MODELS, Market


def children(parent_pid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of the live processes whose parent is ``parent_pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            proc_stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if int(proc_stat.rsplit(")", 1)[1].split()[1]) == parent_pid:
            found.append((int(entry.name), argv))
    return found


def runner_processes(gateway_pid: int) -> list[tuple[int, list[str]]]:
    return [(pid, argv) for pid, argv in children(gateway_pid) if "modelmarket.runtime.runner" in argv]


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def tcp_inodes(pid: int, listening_only: bool = False) -> set[int]:
    """Inodes of the TCP sockets (IPv4 and IPv6) in the network namespace of ``pid``."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            if not listening_only or cols[3] == "0A":  # 0A: TCP_LISTEN
                inodes.add(int(cols[9]))
    return inodes


def test_every_runner_listens_on_a_private_unix_socket_and_no_tcp_port(market: Market) -> None:
    gateway_pid = market.gateway.proc.pid
    runners = runner_processes(gateway_pid)
    assert len(runners) >= len(DEMO_MODELS), f"expected a runner per demo model, found {runners}"
    # the method works: the gateway's own listening port is in the TCP table
    assert socket_inodes(gateway_pid) & tcp_inodes(gateway_pid, listening_only=True)
    private_roots = (
        (market.cli.home / "runners").resolve(),
        Path(tempfile.gettempdir()).resolve() / f"modelmarket-{os.getuid()}",
    )
    for pid, argv in runners:
        assert "--socket" in argv and "--port" not in argv and "--host" not in argv, argv
        path = Path(argv[argv.index("--socket") + 1])
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode), f"{path} is not a socket"
        assert stat.S_IMODE(st.st_mode) == 0o600, f"{path} has mode {stat.S_IMODE(st.st_mode):o}"
        folder = os.stat(path.parent)
        assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid(), path.parent
        assert any(path.resolve().is_relative_to(root) for root in private_roots), path
        tcp = socket_inodes(pid) & tcp_inodes(pid)
        assert not tcp, f"runner {pid} ({' '.join(argv)}) holds TCP sockets {tcp}"
        print(f"[runner] pid {pid}: unix socket {path} (0600 in a 0700 folder), no TCP socket")
