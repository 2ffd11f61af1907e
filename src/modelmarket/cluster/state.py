"""What ``modelmarket cluster`` keeps under ``HOME/cluster/``: ``cluster.json`` (ports, pids, data dirs, logs),
the S3 credentials (0600), and how a recorded pid is checked to still be the process it started.

A pid alone is not an identity: after a reboot or a long time the number may belong to another process. Each
part is recorded with its pid and the process's start time (``/proc/PID/stat``, field 22, in clock ticks since
boot); ``down`` and ``chaos`` signal a pid only while both match.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_VERSION = 1
STATE_FILE = "cluster.json"
CREDENTIALS_FILE = "s3-credentials.json"
BUCKET = "modelmarket"
DATABASE = "modelmarket"


@dataclass
class PartRecord:
    """One running part: its process (pid and start time), its address and its log."""

    pid: int | None
    start_ticks: int | None
    address: str
    log: str
    data: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClusterState:
    home: str
    replicas: int
    partitions: int
    ports: dict[str, int]
    """postgres, nats, nats_monitor, s3, envoy, envoy_admin, gateway-1 .. gateway-N."""
    parts: dict[str, PartRecord] = field(default_factory=dict)
    version: int = STATE_VERSION

    @property
    def front_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['envoy']}"

    def gateway_names(self) -> list[str]:
        return [f"gateway-{i}" for i in range(1, self.replicas + 1)]

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["front_url"] = self.front_url
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ClusterState:
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"{STATE_FILE}: version {doc.get('version')!r}, this modelmarket reads {STATE_VERSION}")
        parts = {name: PartRecord(**rec) for name, rec in doc.get("parts", {}).items()}
        return cls(doc["home"], doc["replicas"], doc["partitions"], dict(doc["ports"]), parts)


def cluster_dir(home: Path) -> Path:
    return home / "cluster"


def load_state(home: Path) -> ClusterState | None:
    path = cluster_dir(home) / STATE_FILE
    if not path.exists():
        return None
    return ClusterState.from_json(json.loads(path.read_text()))


def save_state(home: Path, state: ClusterState) -> None:
    """Written atomically (temp file, fsync, rename): a reader sees the old state or the new one, whole."""
    folder = cluster_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(state.to_json(), fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / STATE_FILE)


@contextmanager
def cluster_lock(home: Path) -> Iterator[None]:
    """One ``cluster`` command at a time changes a home's processes (``up``, ``down``, ``chaos``)."""
    folder = cluster_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def s3_credentials(home: Path) -> S3Credentials:
    """The cluster's S3 key pair, generated on first use and kept 0600 under HOME/cluster."""
    path = cluster_dir(home) / CREDENTIALS_FILE
    if path.exists():
        doc = json.loads(path.read_text())
        return S3Credentials(doc["access_key"], doc["secret_key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    creds = S3Credentials("mm" + secrets.token_hex(8), secrets.token_urlsafe(30))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"access_key": creds.access_key, "secret_key": creds.secret_key}, fh)
    return creds


# -- process identity --


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if there is no such (live) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped: gone for our purposes
        return None
    return int(fields[19])


def is_same_process(pid: int | None, ticks: int | None) -> bool:
    return pid is not None and ticks is not None and start_ticks(pid) == ticks


def stop_process(pid: int, ticks: int, timeout_s: float, sig: signal.Signals = signal.SIGTERM) -> str:
    """``sig`` to the process, then SIGKILL to its group after ``timeout_s``; only while it is still the process
    that was recorded. Returns what happened ('stopped', 'killed', 'gone')."""
    if not is_same_process(pid, ticks):
        return "gone"
    _signal(pid, sig, group=False)
    if wait_gone(pid, ticks, timeout_s):
        return "stopped"
    _signal(pid, signal.SIGKILL, group=True)
    wait_gone(pid, ticks, 10.0)
    return "killed"


def kill_process(pid: int, ticks: int) -> bool:
    """SIGKILL, no grace (the chaos drill), to the process group it leads; True if it was running."""
    if not is_same_process(pid, ticks):
        return False
    _signal(pid, signal.SIGKILL, group=True)
    wait_gone(pid, ticks, 10.0)
    return True


def wait_gone(pid: int, ticks: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while is_same_process(pid, ticks):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
