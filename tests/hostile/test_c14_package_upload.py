"""14. Publishing over HTTP under attack: ``POST /api/packages`` against a real gateway (a subprocess on loopback).

A key that is missing, or not a provider's, is refused before the body is read; a body past
``MODELMARKET_MAX_PACKAGE_BYTES`` is refused before it has all been sent; archives with links, ``..`` or devices
are refused naming the member; a manifest naming another provider is refused; a trickled upload is cut by the body
timeout while a steady one is paced; a submission is shown to its provider only. Nothing refused leaves a file in
``MODELMARKET_HOME/uploads`` or a submission behind.

This gateway is the module's own (its upload bound is 1 MiB, so the limits are reached in milliseconds), with no
model published: it serves only what these tests upload.
"""

from __future__ import annotations

import gzip
import io
import os
import select
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import EnvCli, Gateway, start_gateway, stop_gateway
from tests.hostile.support import LiveProbe, RawAnswer, assert_error, assert_error_response, raw_request
from tests.sandbox_packages import PROVIDER, echo_package

from modelmarket.bootstrap import bootstrap
from modelmarket.registry.upload import UploadLimits, pack_package
from modelmarket.settings import Settings

MAX_PACKAGE_BYTES = 1024 * 1024
BODY_TIMEOUT_S = 2.0
TIMEOUT_SLACK_S = 6.0
"""How long past its configured timeout a stalled upload may stay open (generous: the machine is shared)."""
EARLY_ANSWER_S = 5.0
"""An oversize upload must be answered within this long, long before the client could have sent it all."""
GATEWAY_ENV = {
    "MODELMARKET_MAX_PACKAGE_BYTES": str(MAX_PACKAGE_BYTES),
    "MODELMARKET_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "MODELMARKET_HEADER_TIMEOUT_S": "2.0",
    "MODELMARKET_CACHE_REFRESH_S": "1.0",
    "MODELMARKET_GATE_REVIEW": "manual",
}
RIVAL = "rival-co"
PACK_LIMITS = UploadLimits(max_members=100, max_unpacked_bytes=4 * MAX_PACKAGE_BYTES)


@dataclass
class Platform:
    gateway: Gateway
    home: Path
    keys: dict[str, str]
    """API key by account name: ``code-co`` and ``rival-co`` (providers), ``carol`` (consumer), ``ops``."""

    @property
    def url(self) -> str:
        return self.gateway.url

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}", "Content-Type": "application/gzip"}

    def upload(self, who: str, body: bytes) -> httpx.Response:
        return httpx.post(f"{self.url}/api/packages", content=body, headers=self.auth(who), timeout=60)

    def submissions(self, who: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/packages", headers=self.auth(who), timeout=30)
        assert r.status_code == 200, r.text
        found: list[dict[str, Any]] = r.json()["submissions"]
        return found

    def leftovers(self) -> list[str]:
        """What is left under MODELMARKET_HOME/uploads, once the gateway is done with a request."""
        uploads = self.home / "uploads"
        deadline = time.monotonic() + 5
        while True:
            found = sorted(str(p.relative_to(uploads)) for p in uploads.rglob("*")) if uploads.exists() else []
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("c14") / "home"
    admin = bootstrap(Settings(home=home, database_url=None))
    keys = {}
    try:
        for name, role in ((PROVIDER, "provider"), (RIVAL, "provider"), ("carol", "consumer"), ("ops", "operator")):
            admin.accounts.create(name, role, actor="hostile-tests")
            keys[name] = admin.accounts.issue_key(name, actor="hostile-tests").secret
    finally:
        admin.close()
    gateway = start_gateway(EnvCli(home, extra_env=GATEWAY_ENV), models=())
    try:
        yield Platform(gateway, home, keys)
    finally:
        stop_gateway(gateway)
        if gateway.proc.stdout is not None:
            gateway.proc.stdout.close()


def _packed(package: Path) -> bytes:
    with pack_package(package, PACK_LIMITS) as archive:
        return archive.read()


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def _with_member(package: Path, name: str, kind: bytes, linkname: str = "") -> bytes:
    """The package's files as a .tar.gz, plus one hostile member."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for path in sorted(package.rglob("*")):
        data = path.read_bytes()
        info = tarfile.TarInfo(str(path.relative_to(package)))
        info.size = len(data)
        members.append((info, data))
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = 4 if kind == tarfile.REGTYPE else 0
    members.append((info, b"evil" if kind == tarfile.REGTYPE else None))
    return _tar_gz(members)


def _head(platform: Platform, who: str | None, extra: str) -> bytes:
    auth = "" if who is None else f"Authorization: Bearer {platform.keys[who]}\r\n"
    return (
        f"POST /api/packages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/gzip\r\n{auth}{extra}\r\n"
    ).encode()


# -- who may upload -------------------------------------------------------------------------------------------------


def test_an_upload_without_a_key_is_401_and_nothing_is_kept(platform: Platform, tmp_path: Path) -> None:
    body = _packed(echo_package(tmp_path / "echo", name="no-key"))
    r = httpx.post(f"{platform.url}/api/packages", content=body, headers={"Content-Type": "application/gzip"})
    assert_error_response(r, 401, "API key")
    bad = httpx.post(f"{platform.url}/api/packages", content=body, headers={"Authorization": "Bearer mm_nope"})
    assert_error_response(bad, 401, "invalid API key")
    assert platform.leftovers() == []
    assert platform.submissions(PROVIDER) == []


@pytest.mark.parametrize("who", ["carol", "ops"])
def test_a_consumer_or_operator_key_is_403_before_the_body_is_read(
    platform: Platform, tmp_path: Path, who: str
) -> None:
    body = _packed(echo_package(tmp_path / "echo", name="not-a-provider"))
    assert_error_response(platform.upload(who, body), 403, "only a provider account publishes packages", who)
    assert platform.leftovers() == []
    # declared far past the bound and never sent: the refusal comes first, unread
    answer = raw_request(platform.gateway.hostport, _head(platform, who, "Content-Length: 900000000\r\n"), 10)
    answer.assert_error(403, "only a provider account")


def test_a_manifest_naming_another_provider_is_403(platform: Platform, tmp_path: Path) -> None:
    echo_package(tmp_path / "echo", name="impostor")
    body = _packed(_renamed_provider(tmp_path / "echo", RIVAL))
    r = platform.upload(PROVIDER, body)
    assert_error_response(r, 403, "provider", repr(RIVAL), "another account")
    assert platform.submissions(PROVIDER) == [] and platform.submissions(RIVAL) == []
    assert platform.leftovers() == []


def _renamed_provider(package: Path, provider: str) -> Path:
    manifest = package / "modelmarket.yaml"
    manifest.write_text(manifest.read_text().replace(f"provider: {PROVIDER}", f"provider: {provider}"))
    assert f"provider: {provider}" in manifest.read_text()
    return package


# -- the body's bound -----------------------------------------------------------------------------------------------


def test_a_declared_oversize_body_is_413_before_it_is_sent_whole(platform: Platform) -> None:
    declared = 50 * MAX_PACKAGE_BYTES
    head = _head(platform, PROVIDER, f"Content-Length: {declared}\r\nConnection: close\r\n")
    with LiveProbe(platform.url, "an oversize package upload"):
        answer, sent = _send_until_answered(platform, head, lambda: os.urandom(64 * 1024), declared)
    answer.assert_error(413, f"{MAX_PACKAGE_BYTES:,} bytes", "MODELMARKET_MAX_PACKAGE_BYTES")
    assert answer.elapsed_s < EARLY_ANSWER_S and sent < declared, f"answered after {sent:,} bytes"
    print(f"[c14] {declared:,} bytes declared: 413 after {sent:,} sent, in {answer.elapsed_s * 1000:.0f} ms")
    assert platform.leftovers() == []


def test_an_undeclared_oversize_body_is_413_once_past_the_bound(platform: Platform) -> None:
    def chunk() -> bytes:
        data = os.urandom(64 * 1024)
        return b"%x\r\n" % len(data) + data + b"\r\n"

    most = 64 * MAX_PACKAGE_BYTES
    head = _head(platform, PROVIDER, "Transfer-Encoding: chunked\r\nConnection: close\r\n")
    answer, sent = _send_until_answered(platform, head, chunk, most)
    answer.assert_error(413, "MODELMARKET_MAX_PACKAGE_BYTES")
    assert MAX_PACKAGE_BYTES < sent < most, f"sent {sent:,} bytes before the answer"
    print(f"[c14] a chunked upload: 413 after {sent:,} bytes sent")
    assert platform.leftovers() == []


def _send_until_answered(
    platform: Platform, head: bytes, chunk: Callable[[], bytes], most: int
) -> tuple[RawAnswer, int]:
    """Send ``head``, then chunks until the server answers (or ``most`` bytes went); the answer, and how many body
    bytes were sent before it came."""
    host, port = platform.gateway.hostport.rsplit(":", 1)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        sent, received = 0, b""
        while sent < most:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sent += sock.send(chunk())
            except OSError:
                break
        sock.settimeout(10)
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _length(received):
            data = sock.recv(65536)
            if not data:
                break
            received += data
    status_line, _, rest = received.partition(b"\r\n")
    head_part, _, body = rest.partition(b"\r\n\r\n")
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.decode("latin-1").partition(":") for line in head_part.split(b"\r\n"))
    }
    status = int(status_line.split(b" ")[1]) if status_line else None
    return RawAnswer(status, headers, body[: _length(received)], False, time.monotonic() - started), sent


def _length(received: bytes) -> int:
    for line in received.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30


# -- hostile archives -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "linkname", "words"),
    [
        ("model.onnx", tarfile.SYMTYPE, "/etc/passwd", ("'model.onnx'", "symbolic link")),
        ("weights", tarfile.LNKTYPE, "predict.py", ("'weights'", "hard link")),
        ("../../../../tmp/c14-escape", tarfile.REGTYPE, "", ("'../../../../tmp/c14-escape'", "'..'")),
        ("/tmp/c14-absolute", tarfile.REGTYPE, "", ("'/tmp/c14-absolute'", "absolute")),
        ("zero", tarfile.CHRTYPE, "", ("'zero'", "character device")),
        ("pipe", tarfile.FIFOTYPE, "", ("'pipe'", "FIFO")),
    ],
    ids=["symlink", "hardlink", "dotdot", "absolute", "device", "fifo"],
)
def test_an_archive_with_a_link_dotdot_or_device_is_400_naming_the_member(
    platform: Platform, tmp_path: Path, name: str, kind: bytes, linkname: str, words: tuple[str, ...]
) -> None:
    package = echo_package(tmp_path / "echo", name="hostile-archive")
    r = platform.upload(PROVIDER, _with_member(package, name, kind, linkname))
    assert_error_response(r, 400, "package archive", *words)
    assert not Path("/tmp/c14-escape").exists() and not Path("/tmp/c14-absolute").exists()
    assert platform.leftovers() == []
    assert all(s["model"] != "hostile-archive" for s in platform.submissions(PROVIDER))


def test_a_gzip_bomb_is_refused_at_the_unpacked_bound(platform: Platform) -> None:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz:
        manifest = tarfile.TarInfo("modelmarket.yaml")
        manifest.size = 10
        gz.write(manifest.tobuf(tarfile.USTAR_FORMAT) + b"name: bomb" + bytes(tarfile.BLOCKSIZE - 10))
        bomb = tarfile.TarInfo("zeros.bin")
        bomb.size = 4 * 1024**3  # 4 GiB declared, past the default unpacked bound of 2 GiB
        gz.write(bomb.tobuf(tarfile.USTAR_FORMAT))
        for _ in range(64):  # the first 64 MiB of its zeros (about 64 KB compressed); the platform reads none
            gz.write(bytes(1024 * 1024))
    body = raw.getvalue()
    assert len(body) < MAX_PACKAGE_BYTES
    r = platform.upload(PROVIDER, body)
    assert_error_response(r, 400, "'zeros.bin'", "4,294,967,296 bytes", "the limit")
    assert platform.leftovers() == []


# -- time -----------------------------------------------------------------------------------------------------------


def test_a_trickled_upload_is_cut_by_the_body_timeout(platform: Platform) -> None:
    head = _head(platform, PROVIDER, "Content-Length: 100000\r\n") + b"\x1f\x8b"
    host, port = platform.gateway.hostport.rsplit(":", 1)
    started = time.monotonic()
    received = b""
    with LiveProbe(platform.url, "a trickled package upload"), socket.create_connection((host, int(port))) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        while time.monotonic() - started < BODY_TIMEOUT_S + TIMEOUT_SLACK_S:
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
                continue
            try:
                sock.send(b"\0")  # one byte every half second: far below any honest upload
            except OSError:
                break
    closed_after_s = time.monotonic() - started
    assert closed_after_s < BODY_TIMEOUT_S + TIMEOUT_SLACK_S, "the trickled upload was never cut"
    head_part, _, body = received.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 408"), received[:300]
    assert_error(408, "application/json", body, 408, "body", f"{BODY_TIMEOUT_S:g} s")
    print(f"[c14] trickled upload cut after {closed_after_s:.1f} s")
    assert platform.leftovers() == []


def test_a_steady_upload_longer_than_the_body_timeout_is_paced_not_cut(platform: Platform, tmp_path: Path) -> None:
    package = echo_package(tmp_path / "echo", name="paced-echo")
    (package / "padding.bin").write_bytes(os.urandom(600 * 1024))  # not compressible: 600 KB on the wire
    body = _packed(package)
    pace_s, piece = 0.2, 24 * 1024  # 120 KB/s: several times the floor, and ~5 s in all, past the body timeout

    def paced() -> Iterator[bytes]:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]
            time.sleep(pace_s)

    started = time.monotonic()
    r = httpx.post(f"{platform.url}/api/packages", content=paced(), headers=platform.auth(PROVIDER), timeout=60)
    took_s = time.monotonic() - started
    assert took_s > BODY_TIMEOUT_S * 1.5, f"the upload took only {took_s:.1f} s: it did not test pacing"
    assert r.status_code == 202, r.text
    assert r.json()["model"] == "paced-echo" and r.headers["location"] == f"/api/packages/{r.json()['id']}"
    print(f"[c14] a {len(body):,}-byte upload paced over {took_s:.1f} s was accepted")


# -- who sees a submission ------------------------------------------------------------------------------------------


def test_another_providers_submission_is_404(platform: Platform, tmp_path: Path) -> None:
    r = platform.upload(PROVIDER, _packed(echo_package(tmp_path / "echo", name="private-echo")))
    assert r.status_code == 202, r.text
    sid = r.json()["id"]
    for who in (RIVAL, "carol", "ops"):
        other = httpx.get(f"{platform.url}/api/packages/{sid}", headers=platform.auth(who))
        assert_error_response(other, 404, sid)
        other = httpx.get(f"{platform.url}/api/packages/private-echo@1.0.0", headers=platform.auth(who))
        assert_error_response(other, 404, "private-echo@1.0.0")
        assert all(s["id"] != sid for s in platform.submissions(who))
    mine = httpx.get(f"{platform.url}/api/packages/{sid}", headers=platform.auth(PROVIDER))
    assert mine.status_code == 200 and [s["stage"] for s in mine.json()["stages"]][:2] == ["validate", "store"]
    assert any(s["id"] == sid for s in platform.submissions(PROVIDER))
