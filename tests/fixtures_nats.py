"""Fixtures: a nats server on a free loopback port in a temp dir, stopped at the end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modelmarket.cluster.engine import EngineUnavailable, ServerProcess, free_port
from modelmarket.cluster.nats import nats_server as start_nats


@dataclass
class NatsServer:
    """A running ``nats-server -js``; ``restart()`` stops it (``kill=True``: SIGKILL) and starts it again on the
    same port and data dir, as the chaos drill does."""

    data_dir: Path
    port: int
    log: Path
    process: ServerProcess = field(repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            self.process.stop()

    def start(self) -> None:
        self.process = start_nats(self.data_dir, self.port, self.log)

    def restart(self, kill: bool = False) -> None:
        self.stop(kill)
        self.start()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    root = tmp_path_factory.mktemp("nats")
    port = free_port()
    try:
        process = start_nats(root / "data", port, root / "nats.log")
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    server = NatsServer(root / "data", port, root / "nats.log", process)
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture
def bus_namespace() -> str:
    """A namespace of streams and subjects of this test's own (one server carries every test)."""
    return "t" + uuid.uuid4().hex[:12]
