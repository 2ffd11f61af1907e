"""Five adversarial provider models under each sandbox profile, through the real gateway.

Under ``bwrap`` and ``gvisor`` every adversary is denied or killed: the caller gets a 5xx naming the cause, no
usage event is written, and a well-behaved model and the platform keep answering between the attacks. Under
``process`` the same drill shows what that profile contains (memory, processes, time: the cgroup and the
per-call timeout) and what it does not (the network and the disk: those two calls succeed and are billed).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.e2e.conftest import Cli, EnvCli, Gateway, start_gateway, stop_gateway
from tests.sandbox_packages import ADVERSARIES, PROVIDER, echo_package

import engines

LIMITS = {"memory_mb": 256, "pids": 48, "timeout_s": 4}
X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@dataclass
class Listener:
    """A TCP server on loopback that records what anyone sends it: the network adversary's target."""

    sock: socket.socket
    received: list[bytes] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    self.received.append(conn.recv(100))


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    found = Listener(sock)
    threading.Thread(target=found.serve, daemon=True).start()
    yield found
    sock.close()


@dataclass
class Platform:
    gw: Gateway
    key: str
    profile: str
    database: Path


def _platform(tmp: Path, profile: str, listener: Listener) -> tuple[Platform, Cli]:
    cli = EnvCli(tmp / "home", extra_env={"MODELMARKET_SANDBOX_MINIMUM": "process"})
    cli.run("accounts", "create", PROVIDER, "--role", "provider")
    sandbox = {"profile": profile, **LIMITS}
    # a private file of the platform the adversary tries to read: the store's file, or (on the real engines, whose
    # store is on its server) the audit checkpoints' signing key
    database = (cli.home / ("keys/audit-checkpoints.ed25519.pem" if engines.REAL else "modelmarket.db")).absolute()
    cli.run("publish", str(echo_package(tmp / "pkg-echo", sandbox=sandbox)))
    for kind, build in ADVERSARIES.items():
        target = listener.address if kind == "network" else str(database) if kind == "file-reader" else None
        cli.run("publish", str(build(tmp / f"pkg-{kind}", target=target, sandbox=sandbox)))
    key = cli.new_consumer("victim")
    return Platform(start_gateway(cli, models=("py-echo",)), key, profile, database), cli


def _events(http: httpx.Client) -> int:
    return int(http.get("/api/usage").json()["total_events"])


def _still_serving(http: httpx.Client) -> None:
    r = http.post("/v2/models/py-echo/infer", json=X)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [2, 4, 6, 8]


def _drill(platform: Platform, listener: Listener) -> dict[str, httpx.Response]:
    """Call each adversary once, with the well-behaved model called before and after each; return the answers
    and check that only the calls that succeeded were billed."""
    answers = {}
    with httpx.Client(
        base_url=platform.gw.url, headers={"Authorization": f"Bearer {platform.key}"}, timeout=60
    ) as http:
        for kind in ADVERSARIES:
            _still_serving(http)
            before = _events(http)
            r = http.post(f"/v2/models/py-{kind}/infer", json=X)
            answers[kind] = r
            billed = _events(http) - before
            assert billed == (1 if r.status_code == 200 else 0), (kind, r.status_code, r.text)
            _still_serving(http)
    return answers


@pytest.mark.parametrize("profile", ["bwrap", "gvisor"])
def test_each_adversary_is_denied_or_killed_and_nothing_is_billed(
    profile: str, tmp_path: Path, listener: Listener
) -> None:
    platform, _ = _platform(tmp_path, profile, listener)
    received_before = len(listener.received)
    try:
        answers = _drill(platform, listener)
        runners = platform.gw.cli.json("runners")
    finally:
        stop_gateway(platform.gw)
    for kind, r in answers.items():
        assert r.status_code >= 500, (kind, r.status_code, r.text)
    assert len(listener.received) == received_before, "a sandboxed model reached the network"
    network = answers["network"].json()["error"]
    # bwrap gives the runner a network namespace with only its own loopback (refused); gVisor none at all
    assert "failed in sandbox" in network and ("Connection refused" in network or "unreachable" in network), network
    reader = answers["file-reader"].json()["error"]
    assert "FileNotFoundError" in reader and "No such file or directory" in reader, reader
    assert answers["memory-hog"].json()["error"].startswith("sandbox: memory limit"), answers["memory-hog"].text
    fork_bomb = answers["fork-bomb"].json()["error"]
    if profile == "bwrap":  # the host's pids cgroup counts the forks it refused
        assert fork_bomb.startswith("sandbox: process limit"), fork_bomb
    else:  # gVisor refuses the forks inside (RLIMIT_NPROC); the bomb retries until the per-call timeout kills
        # it, or its copies' memory (each one's pages live in the sentry) reaches the cgroup's limit first
        assert fork_bomb.startswith(("sandbox: process limit", "sandbox: memory limit", "timeout:")), fork_bomb
    assert answers["never-returns"].status_code == 504
    assert answers["never-returns"].json()["error"].startswith("timeout:"), answers["never-returns"].text
    profiles = {f"{r['model']}": r["profile"] for r in runners["runners"]}
    assert profiles["py-echo"] == profile and profiles["py-memory-hog"] == profile


def test_the_process_profile_contains_memory_processes_and_time_but_not_the_disk_or_network(
    tmp_path: Path, listener: Listener
) -> None:
    platform, _ = _platform(tmp_path, "process", listener)
    received_before = len(listener.received)
    try:
        answers = _drill(platform, listener)
    finally:
        stop_gateway(platform.gw)
    # Not contained: the model phoned home and read the platform's database (both calls succeeded, and billed).
    assert answers["network"].status_code == 200 and listener.received[received_before:] == [b"leak"]
    assert answers["file-reader"].status_code == 200
    assert answers["file-reader"].json()["outputs"][0]["data"][0] == platform.database.stat().st_size or (
        answers["file-reader"].json()["outputs"][0]["data"][0] > 0
    )
    # Contained: memory and processes by the cgroup, time by the per-call timeout.
    assert answers["memory-hog"].json()["error"].startswith("sandbox: memory limit"), answers["memory-hog"].text
    assert answers["fork-bomb"].json()["error"].startswith("sandbox: process limit"), answers["fork-bomb"].text
    assert answers["never-returns"].status_code == 504
