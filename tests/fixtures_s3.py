"""Fixtures: a SeaweedFS S3 server on a free loopback port in a temp dir, stopped at the end of the session, and a
blob URL of each test's own (a unique prefix in one shared bucket: SeaweedFS gives every bucket its own volumes,
so one bucket keeps the server small)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from modelmarket.cluster.engine import EngineUnavailable, ServerProcess, free_port
from modelmarket.cluster.seaweed import seaweed_server

TEST_BUCKET = "modelmarket-blob-tests"


@dataclass
class S3Server:
    """A running ``weed server -s3``; ``restart()`` stops it (``kill=True``: SIGKILL) and starts it again on the
    same data dir and S3 port."""

    data_dir: Path
    port: int
    log: Path
    access_key: str
    secret_key: str = field(repr=False)
    process: ServerProcess = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The variables that point a platform (or a subprocess) at this server; MODELMARKET_BLOB_URL is the test's."""
        return {
            "MODELMARKET_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self) -> Any:
        """A boto3 client with this server's credentials (what a test uses to look at or damage objects)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            self.process.stop()

    def start(self) -> None:
        self.process = _start(self.data_dir, self.port, self.log, self.access_key, self.secret_key)

    def restart(self, kill: bool = False) -> None:
        self.stop(kill)
        self.start()


def _start(data_dir: Path, port: int, log: Path, access_key: str, secret_key: str) -> ServerProcess:
    return seaweed_server(data_dir, port, log, access_key=access_key, secret_key=secret_key)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    root = tmp_path_factory.mktemp("s3")
    port, access_key, secret_key = free_port(), "mm" + secrets.token_hex(8), secrets.token_hex(20)
    try:
        process = _start(root / "data", port, root / "weed.log", access_key, secret_key)
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    server = S3Server(root / "data", port, root / "weed.log", access_key, secret_key, process)
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture
def s3_blob_url(s3_server: S3Server) -> str:
    """``s3://bucket/prefix`` of this test's own: one shared bucket, a unique prefix."""
    return f"s3://{TEST_BUCKET}/t{uuid.uuid4().hex[:12]}"
