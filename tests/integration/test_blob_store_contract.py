"""The blob store contract (``registry.ports.BlobStore``) on both adapters: files under the home, and S3 on a real
SeaweedFS server read through a local cache by digest. Then S3's own promises (damaged objects refused and never
cached, one download for several processes missing a digest, refused credentials, the bucket made on first use,
objects kept across a server restart), and a platform on S3 serving `digits` on a second "host" whose artifacts
came from the bucket into its own cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from fixtures_s3 import TEST_BUCKET, S3Server
from modelmarket.adapters.blobs import FsBlobStore, S3BlobStore, open_blobs
from modelmarket.adapters.blobs.s3 import BlobCorrupted, BlobStoreUnavailable, s3_client
from modelmarket.bootstrap import bootstrap
from modelmarket.cluster.engine import free_port
from modelmarket.cluster.seaweed import seaweed_server
from modelmarket.core.errors import Conflict, InvalidInput, NotFound
from modelmarket.demo._digits import build_digits
from modelmarket.gateway.app import GatewayApp
from modelmarket.gateway.compose import bootstrap_gateway
from modelmarket.registry.ports import BlobStore
from modelmarket.settings import Settings

pytestmark = pytest.mark.timeout(240)

ABSENT = "0" * 64


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The AWS credentials in this process's environment, where boto3 looks for them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    return s3_server


def s3_settings(home: Path, server: S3Server, blob_url: str, **more: Any) -> Settings:
    return Settings(home=home, blob_url=blob_url, s3_endpoint=server.endpoint, **more)


def s3_store(home: Path, server: S3Server, blob_url: str) -> S3BlobStore:
    store = open_blobs(s3_settings(home, server, blob_url))
    assert isinstance(store, S3BlobStore)
    return store


@pytest.fixture(params=["fs", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "fs":
        return open_blobs(Settings(home=tmp_path / "home"))
    server = request.getfixturevalue("s3_env")
    return s3_store(tmp_path / "home", server, request.getfixturevalue("s3_blob_url"))


def count_calls(store: S3BlobStore, operation: str) -> list[str]:
    """Every ``operation`` the store's real client makes from now on (a botocore event hook, not a mock)."""
    seen: list[str] = []
    store.client.meta.events.register(f"before-call.s3.{operation}", lambda **kw: seen.append(operation))
    return seen


# -- the contract, on both adapters ------------------------------------------------------------------------


def test_put_then_path_gives_the_bytes_read_only(blobs: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    digest, size = blobs.put_file(write(tmp_path / "a.bin", data))
    assert (digest, size) == (sha256(data), len(data))
    assert blobs.exists(digest)
    stored = blobs.path(digest)
    assert stored.read_bytes() == data
    assert stored.name == digest and stored.parent.name == digest[:2]
    assert stored.stat().st_mode & 0o222 == 0


def test_equal_content_is_stored_once(blobs: BlobStore, tmp_path: Path) -> None:
    data = b"the same bytes twice"
    first = blobs.put_file(write(tmp_path / "one", data))
    second = blobs.put_file(write(tmp_path / "two", data), expected_sha256=sha256(data))
    assert first == second == (sha256(data), len(data))
    assert blobs.path(first[0]).read_bytes() == data


def test_bytes_that_hash_otherwise_are_refused(blobs: BlobStore, tmp_path: Path) -> None:
    data = b"changed after it was checked"
    with pytest.raises(Conflict, match="changed while it was being published"):
        blobs.put_file(write(tmp_path / "c", data), expected_sha256=sha256(b"what was checked"))
    assert not blobs.exists(sha256(data))
    assert not blobs.exists(sha256(b"what was checked"))


def test_an_unknown_digest_is_not_found(blobs: BlobStore) -> None:
    assert not blobs.exists(ABSENT)
    with pytest.raises(NotFound, match=f"sha256:{ABSENT}"):
        blobs.path(ABSENT)


def test_an_empty_file_is_a_blob(blobs: BlobStore, tmp_path: Path) -> None:
    digest, size = blobs.put_file(write(tmp_path / "empty", b""))
    assert (digest, size) == (sha256(b""), 0)
    assert blobs.path(digest).read_bytes() == b""


# -- S3: what only it promises ---------------------------------------------------------------------------


def test_objects_are_keyed_by_digest_with_the_sha256_beside_them(
    s3_env: S3Server, s3_blob_url: str, tmp_path: Path
) -> None:
    store = s3_store(tmp_path / "a", s3_env, s3_blob_url)
    data = os.urandom(10_000)
    digest, _ = store.put_file(write(tmp_path / "x", data))
    prefix = s3_blob_url.removeprefix(f"s3://{TEST_BUCKET}/")
    head = s3_env.client().head_object(Bucket=TEST_BUCKET, Key=f"{prefix}/sha256/{digest[:2]}/{digest}")
    assert head["ContentLength"] == len(data) and head["Metadata"] == {"sha256": digest}
    # the publishing host keeps what it uploaded in its cache
    assert (tmp_path / "a" / "cache" / "blobs" / "sha256" / digest[:2] / digest).read_bytes() == data


def test_a_second_upload_of_a_digest_is_skipped(s3_env: S3Server, s3_blob_url: str, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    s3_store(tmp_path / "a", s3_env, s3_blob_url).put_file(write(tmp_path / "x", data))
    other_host = s3_store(tmp_path / "b", s3_env, s3_blob_url)
    puts = count_calls(other_host, "PutObject")
    assert other_host.put_file(write(tmp_path / "y", data)) == (sha256(data), len(data))
    assert puts == []


def test_an_artifact_over_the_single_put_limit_goes_in_parts(
    s3_env: S3Server, s3_blob_url: str, tmp_path: Path
) -> None:
    """The multipart path, with the limit lowered to 5 MiB (S3's smallest part) instead of 5 GiB."""
    url = s3_blob_url.removeprefix("s3://")
    bucket, prefix = url.split("/", 1)
    store = S3BlobStore(
        s3_client(s3_env.endpoint, "us-east-1"), bucket, prefix, tmp_path / "a", single_put_max_bytes=5 << 20
    )
    creates, puts = count_calls(store, "CreateMultipartUpload"), count_calls(store, "PutObject")
    data = os.urandom(6 << 20)
    digest, _ = store.put_file(write(tmp_path / "big", data))
    assert (len(creates), puts) == (1, [])
    assert s3_env.client().head_object(Bucket=bucket, Key=store.key(digest))["Metadata"] == {"sha256": digest}
    assert s3_store(tmp_path / "b", s3_env, s3_blob_url).path(digest).read_bytes() == data


@pytest.mark.parametrize("damage", ["other bytes", "truncated"])
def test_a_damaged_object_is_refused_and_never_cached(
    s3_env: S3Server, s3_blob_url: str, tmp_path: Path, damage: str
) -> None:
    data = os.urandom(200_000)
    publisher = s3_store(tmp_path / "a", s3_env, s3_blob_url)
    digest, _ = publisher.put_file(write(tmp_path / "x", data))
    bad = os.urandom(len(data)) if damage == "other bytes" else data[:-1000]
    s3_env.client().put_object(Bucket=TEST_BUCKET, Key=publisher.key(digest), Body=bad)

    runner_host = s3_store(tmp_path / "b", s3_env, s3_blob_url)
    for _ in range(2):  # refused every time: nothing was kept from the first try
        with pytest.raises(BlobCorrupted, match=f"blob sha256:{digest} .* is damaged"):
            runner_host.path(digest)
    cache = tmp_path / "b" / "cache" / "blobs"
    assert not (cache / "sha256").exists() or not any(p.is_file() for p in (cache / "sha256").rglob("*"))
    assert list((cache / "tmp").iterdir()) == []

    # publishing the bytes again repairs the object (its size or recorded sha256 no longer match)
    publisher.put_file(write(tmp_path / "again", data))
    assert runner_host.path(digest).read_bytes() == data


def test_processes_missing_one_digest_at_once_download_it_once(
    s3_env: S3Server, s3_blob_url: str, tmp_path: Path
) -> None:
    data = os.urandom(8 * 1024 * 1024)
    digest, _ = s3_store(tmp_path / "a", s3_env, s3_blob_url).put_file(write(tmp_path / "x", data))
    home, go = tmp_path / "b", tmp_path / "go"
    script = textwrap.dedent(
        """
        import hashlib, json, sys, time
        from pathlib import Path
        from modelmarket.adapters.blobs import open_blobs
        from modelmarket.settings import Settings

        home, url, endpoint, digest, go = sys.argv[1:]
        store = open_blobs(Settings(home=Path(home), blob_url=url, s3_endpoint=endpoint))
        gets = []
        store.client.meta.events.register("before-call.s3.GetObject", lambda **kw: gets.append(1))
        deadline = time.monotonic() + 30
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        path = store.path(digest)
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        print(json.dumps({"path": str(path), "sha256": got, "gets": len(gets)}))
        """
    )
    argv = [sys.executable, "-c", script, str(home), s3_blob_url, s3_env.endpoint, digest, str(go)]
    env = {**os.environ, **s3_env.env}
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    go.touch()
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        answers.append(json.loads(out))
    cached = home / "cache" / "blobs" / "sha256" / digest[:2] / digest
    assert [a["path"] for a in answers] == [str(cached)] * 2
    assert [a["sha256"] for a in answers] == [digest] * 2
    assert sum(a["gets"] for a in answers) == 1  # the second waited on the digest's lock and found it cached
    assert [p.name for p in cached.parent.iterdir()] == [digest]
    assert list((home / "cache" / "blobs" / "tmp").iterdir()) == []


def test_refused_credentials_are_named(
    s3_env: S3Server, s3_blob_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = s3_store(tmp_path / "a", s3_env, s3_blob_url)
    with pytest.raises(BlobStoreUnavailable, match=r"S3 refused the credentials .*AWS_SECRET_ACCESS_KEY"):
        store.put_file(write(tmp_path / "x", b"bytes"))
    with pytest.raises(BlobStoreUnavailable, match="refused the credentials"):
        store.path(ABSENT)


def test_an_unreachable_store_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = open_blobs(Settings(home=tmp_path, blob_url="s3://nowhere", s3_endpoint=endpoint))
    with pytest.raises(BlobStoreUnavailable, match=f"S3 failed on blob sha256:{ABSENT} in s3://nowhere/ at {endpoint}"):
        store.exists(ABSENT)


def test_the_bucket_is_created_on_the_first_write(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = f"mm-new-{uuid.uuid4().hex[:10]}"
    client = s3_env.client()
    store = s3_store(tmp_path / "a", s3_env, f"s3://{bucket}")
    assert not store.exists(ABSENT)  # reading a missing bucket is just a missing blob
    data = b"first object of a new bucket"
    digest, _ = store.put_file(write(tmp_path / "x", data))
    assert store.key(digest) == f"sha256/{digest[:2]}/{digest}"  # no prefix
    assert client.get_object(Bucket=bucket, Key=store.key(digest))["Body"].read() == data
    client.delete_object(Bucket=bucket, Key=store.key(digest))
    client.delete_bucket(Bucket=bucket)


@pytest.mark.parametrize(
    "url", ["file:///srv/blobs", "s3:///no-bucket", "s3://b/p?x=1", "http://127.0.0.1:8333/bucket"]
)
def test_a_blob_url_that_is_not_s3_names_the_setting(url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"MODELMARKET_BLOB_URL: .*s3://bucket\[/prefix\]"):
        open_blobs(Settings(home=tmp_path, blob_url=url))


@pytest.mark.parametrize("bucket", ["ab", "Upper", "under_score", "-dash"])
def test_a_bucket_name_s3_would_refuse_names_the_setting(bucket: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=f"MODELMARKET_BLOB_URL: '{bucket}' is not an S3 bucket name"):
        open_blobs(Settings(home=tmp_path, blob_url=f"s3://{bucket}/p"))


def test_unset_blob_url_is_files_under_the_home(tmp_path: Path) -> None:
    store = open_blobs(Settings(home=tmp_path, blob_url=None))  # unset, whatever the environment says
    assert isinstance(store, FsBlobStore) and store.root == tmp_path / "blobs"


def test_a_restarted_server_keeps_its_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its own server (the session's is shared): every port on loopback; SIGKILLed, restarted on the same data
    with new ports, it still has the object."""
    keys = {"access_key": "restart-test", "secret_key": uuid.uuid4().hex}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["secret_key"])
    port, data = free_port(), os.urandom(100_000)
    server = seaweed_server(tmp_path / "weed", port, tmp_path / "weed.log", **keys)
    try:
        listening = [c.laddr for c in psutil.Process(server.pid).connections("tcp") if c.status == "LISTEN"]
        assert len(listening) == 8 and {a.ip for a in listening} == {"127.0.0.1"}  # master, volume, filer, s3 x2
        settings = Settings(home=tmp_path / "a", blob_url="s3://kept", s3_endpoint=f"http://127.0.0.1:{port}")
        digest, _ = open_blobs(settings).put_file(write(tmp_path / "x", data))
        server.kill()
        server = seaweed_server(tmp_path / "weed", port, tmp_path / "weed.log", **keys)
        fresh = Settings(home=tmp_path / "b", blob_url="s3://kept", s3_endpoint=f"http://127.0.0.1:{port}")
        assert open_blobs(fresh).path(digest).read_bytes() == data
    finally:
        server.kill()  # nothing here is worth its ~15 s graceful stop
    assert all(not s.exists() for s in server.sockets)  # type: ignore[attr-defined]


# -- a platform on S3 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("digits")
    package = build_digits(out / "digits", out / "examples", lambda _: None)
    return package, json.loads((out / "examples" / "digit.json").read_text())


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_second_host_serves_digits_from_artifacts_it_fetched_from_s3(
    s3_env: S3Server, s3_blob_url: str, tmp_path: Path, digits: tuple[Path, dict[str, Any]]
) -> None:
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    publisher = bootstrap(s3_settings(tmp_path / "host-a", s3_env, s3_blob_url, database_url=database_url))
    try:
        publisher.accounts.create("demo-provider", "provider", actor="tests")
        version = publisher.registry.publish(digits[0], actor="tests").version
        publisher.accounts.create("alice", "consumer", actor="tests")
        key = publisher.accounts.issue_key("alice", actor="tests").secret
    finally:
        publisher.close()
    (artifact,) = version.artifacts
    assert not (tmp_path / "host-a" / "blobs").exists()  # published to the bucket, not to files

    host_b = tmp_path / "host-b"
    platform = bootstrap(s3_settings(host_b, s3_env, s3_blob_url, database_url=database_url))
    app = GatewayApp(bootstrap_gateway(platform, preload=False))
    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60) as c:
            answer = await c.post("/v2/models/digits/infer", json=digits[1], headers={"Authorization": f"Bearer {key}"})
    finally:
        await app.shutdown()
        platform.close()
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["label"]["data"][0] in range(10)
    cached = host_b / "cache" / "blobs" / "sha256" / artifact.sha256[:2] / artifact.sha256
    assert sha256(cached.read_bytes()) == artifact.sha256
    linked = host_b / "runners" / version.id / "artifacts" / artifact.path
    assert linked.resolve() == cached.resolve()  # the runner read the bytes that came from S3
    assert not (host_b / "blobs").exists()


@pytest.fixture(autouse=True)
def _no_stray_temp(tmp_path: Path) -> Iterator[None]:
    yield
    for tmp in tmp_path.glob("*/cache/blobs/tmp"):
        assert list(tmp.iterdir()) == [], f"temp files left in {tmp}"
