"""Publishing over HTTP, piece by piece and without a platform: the ``/api/packages`` routes over a fake gate (who
may upload, the body's bound, the publish queue's slots, the private folder removed), ``PublishQueue`` itself, and
the provider's client (``cli/remote.py``: following the stages, error messages, what reaches a terminal)."""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
from starlette.requests import Request
from starlette.routing import Router

from modelmarket.accounts import Account
from modelmarket.cli import remote
from modelmarket.core.errors import InvalidInput, NotFound, Unauthenticated
from modelmarket.gateway.api_packages import (
    RETRY_AFTER_S,
    PackageUploads,
    PublishQueue,
    PublishQueueFull,
    package_routes,
)
from modelmarket.gateway.errors import message_for, status_for
from modelmarket.governance.model import StageRecord, Submission
from modelmarket.registry.upload import UploadLimits
from modelmarket.runtime.asgi import Receive, Scope, Send, respond

pytestmark = pytest.mark.anyio
WAIT_S = 10.0
ACCOUNTS = {
    "k-provider": Account("acc_p", "acme", "provider", "2026-01-01T00:00:00+00:00"),
    "k-other": Account("acc_o", "other-co", "provider", "2026-01-01T00:00:00+00:00"),
    "k-consumer": Account("acc_c", "carol", "consumer", "2026-01-01T00:00:00+00:00"),
    "k-operator": Account("acc_x", "ops", "operator", "2026-01-01T00:00:00+00:00"),
}
STORED = StageRecord("store", "passed", "2026-01-01T00:00:00+00:00", 12, "1 artifact(s) stored by sha256")


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


def _submission(sid: str, account_id: str, status: str = "running") -> Submission:
    return Submission(
        id=sid,
        model_name="m",
        version="1.0.0",
        digest="d" * 64,
        provider_account_id=account_id,
        submitted_by=f"account:{account_id}",
        status=cast(Any, status),
        manifest_json="{}",
        artifacts_json="[]",
        created_at="2026-01-01T00:00:00+00:00",
        updated_at="2026-01-01T00:00:00+00:00",
        stages=(STORED,),
    )


@dataclass
class FakeGate:
    """Records what the routes ask of the gate; ``run`` waits for ``release`` (a gate run taking its time)."""

    submitted: list[tuple[Path, str, str | None, list[str]]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    status: str = "running"
    known: dict[str, Submission] = field(default_factory=dict)

    def submit(self, package_dir: Path, *, actor: str, account_id: str | None = None) -> Submission:
        files = sorted(str(p.relative_to(package_dir)) for p in package_dir.rglob("*") if p.is_file())
        self.submitted.append((package_dir, actor, account_id, files))
        sub = _submission(f"sub_{len(self.submitted)}", account_id or "", self.status)
        self.known[sub.id] = sub
        return sub

    def run(self, submission_id: str, progress: Any = None) -> Submission:
        self.runs.append(submission_id)
        assert self.release.wait(WAIT_S), "the test never released the gate run"
        return replace(self.known[submission_id], status="pending_review")

    def show(self, ref: str, account_id: str | None = None) -> Submission:
        found = self.known.get(ref)
        if found is None or found.provider_account_id != account_id:
            raise NotFound(f"no submission {ref!r}")
        return found

    def list(self, statuses: tuple[str, ...] = (), provider_account_id: str | None = None, limit: int = 100) -> Any:
        return [s for s in self.known.values() if s.provider_account_id == provider_account_id][:limit]


async def _authenticate(request: Request) -> Account:
    raw = request.headers.get("authorization", "")
    account = ACCOUNTS.get(raw.removeprefix("Bearer "))
    if account is None:
        raise Unauthenticated("missing API key")
    return account


@dataclass
class Rig:
    gate: FakeGate
    uploads: PackageUploads
    client: httpx.AsyncClient

    def leftovers(self) -> list[Path]:
        return list(self.uploads.uploads_dir.iterdir()) if self.uploads.uploads_dir.exists() else []


def _rig(tmp_path: Path, slots: int = 4, max_bytes: int = 64 * 1024) -> tuple[FakeGate, PackageUploads, Any]:
    gate = FakeGate()
    queue = PublishQueue(lambda sid: gate.run(sid), slots)
    uploads = PackageUploads(cast(Any, gate), tmp_path / "uploads", UploadLimits(50, 1024 * 1024), max_bytes, queue)
    router = Router(routes=package_routes(uploads, _authenticate))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # the gateway's error table, as app.py does
        try:
            await router(scope, receive, send)
        except Exception as exc:
            await respond(send, status_for(exc) or 500, orjson.dumps({"error": message_for(exc)}))

    return gate, uploads, app


@pytest.fixture()
async def rig(tmp_path: Path) -> Any:
    gate, uploads, app = _rig(tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield Rig(gate, uploads, client)
    gate.release.set()
    uploads.queue.stop()


def _archive(*members: tuple[str, bytes], symlink: str | None = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink is not None:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return gzip.compress(raw.getvalue())


GOOD = _archive(("pkg/modelmarket.yaml", b"name: m\n"), ("pkg/predict.py", b"print()\n"))


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/gzip"}


async def _wait(condition: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- the routes -----------------------------------------------------------------------------------------------------


async def test_a_provider_upload_is_submitted_from_a_private_folder_that_is_then_removed(rig: Rig) -> None:
    r = await rig.client.post("/api/packages", content=GOOD, headers=_auth("k-provider"))
    assert r.status_code == 202, r.text
    assert r.headers["location"] == "/api/packages/sub_1"
    assert r.json() == rig.gate.known["sub_1"].to_json()
    (package_dir, actor, account_id, files) = rig.gate.submitted[0]
    assert (actor, account_id, files) == ("account:acc_p", "acc_p", ["modelmarket.yaml", "predict.py"])
    assert package_dir.name == "pkg" and package_dir.is_relative_to(rig.uploads.uploads_dir)
    assert rig.leftovers() == []
    await _wait(lambda: rig.gate.runs == ["sub_1"])  # the remaining stages run on the queue
    assert rig.uploads.queue.taken == 1
    rig.gate.release.set()
    await _wait(lambda: rig.uploads.queue.taken == 0)


@pytest.mark.parametrize("key", ["k-consumer", "k-operator"])
async def test_only_a_provider_key_may_upload(rig: Rig, key: str) -> None:
    r = await rig.client.post("/api/packages", content=GOOD, headers=_auth(key))
    assert r.status_code == 403
    assert "only a provider account publishes packages" in r.json()["error"]
    assert ACCOUNTS[key].role in r.json()["error"]
    assert rig.gate.submitted == [] and rig.leftovers() == []
    assert (await rig.client.post("/api/packages", content=GOOD)).status_code == 401


async def test_a_declared_length_past_the_bound_is_413_before_the_body_is_read(tmp_path: Path) -> None:
    gate, uploads, app = _rig(tmp_path, max_bytes=1000)
    received: list[int] = []

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Any:
            message = await receive()
            received.append(len(message.get("body", b"")))
            return message

        await app(scope, counted, send)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=counting), base_url="http://gw") as client:
        r = await client.post("/api/packages", content=b"x" * 5000, headers=_auth("k-provider"))
        assert r.status_code == 413 and "limit of 1,000 bytes" in r.json()["error"]
        assert received == []  # not one message of the body was taken

        async def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"y" * 400

        r = await client.post("/api/packages", content=chunks(), headers=_auth("k-provider"))
        assert r.status_code == 413 and "MODELMARKET_MAX_PACKAGE_BYTES" in r.json()["error"]
    assert gate.submitted == [] and list(uploads.uploads_dir.iterdir()) == []
    assert uploads.queue.taken == 0  # both slots given back


async def test_a_bad_archive_is_400_naming_the_member_and_leaves_nothing(rig: Rig) -> None:
    evil = _archive(("pkg/modelmarket.yaml", b"name: m\n"), symlink="pkg/model.onnx")
    r = await rig.client.post("/api/packages", content=evil, headers=_auth("k-provider"))
    assert r.status_code == 400 and "'pkg/model.onnx' is a symbolic link" in r.json()["error"]
    r = await rig.client.post("/api/packages", content=b"plain text", headers=_auth("k-provider"))
    assert r.status_code == 400 and "not a valid gzip-compressed tar archive" in r.json()["error"]
    r = await rig.client.post("/api/packages", content=b"", headers=_auth("k-provider"))
    assert r.status_code == 400 and "body: empty" in r.json()["error"]
    form = {"Authorization": "Bearer k-provider", "Content-Type": "multipart/form-data; boundary=x"}
    r = await rig.client.post("/api/packages", content=GOOD, headers=form)
    assert r.status_code == 400 and "Content-Type" in r.json()["error"]
    assert rig.gate.submitted == [] and rig.leftovers() == [] and rig.uploads.queue.taken == 0


async def test_a_refusal_from_the_gate_names_files_as_the_provider_knows_them(rig: Rig) -> None:
    def submit_refusing(package_dir: Path, *, actor: str, account_id: str | None = None) -> Submission:
        raise InvalidInput(f"{package_dir}/modelmarket.yaml: card.summary: required; {package_dir}: no artifacts")

    rig.gate.submit = submit_refusing  # type: ignore[method-assign]
    r = await rig.client.post("/api/packages", content=GOOD, headers=_auth("k-provider"))
    assert r.status_code == 400
    assert r.json()["error"] == "modelmarket.yaml: card.summary: required; package: no artifacts"
    assert rig.leftovers() == [] and rig.uploads.queue.taken == 0


async def test_the_same_bytes_as_a_published_version_answer_200_and_run_nothing(rig: Rig) -> None:
    rig.gate.status = "published"
    r = await rig.client.post("/api/packages", content=GOOD, headers=_auth("k-provider"))
    assert r.status_code == 200 and r.json()["status"] == "published"
    await asyncio.sleep(0.05)
    assert rig.gate.runs == [] and rig.uploads.queue.taken == 0


async def test_a_full_publish_queue_answers_503_before_anything_is_received_or_stored(tmp_path: Path) -> None:
    gate, uploads, app = _rig(tmp_path, slots=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        first = await client.post("/api/packages", content=GOOD, headers=_auth("k-provider"))
        assert first.status_code == 202
        busy = await client.post("/api/packages", content=GOOD, headers=_auth("k-provider"))
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == str(RETRY_AFTER_S)
        assert "publish queue is full" in busy.json()["error"]
        assert len(gate.submitted) == 1
        gate.release.set()
        await _wait(lambda: uploads.queue.taken == 0)
        again = await client.post("/api/packages", content=GOOD, headers=_auth("k-provider"))
        assert again.status_code == 202 and len(gate.submitted) == 2
    uploads.queue.stop()


async def test_a_submission_is_shown_to_its_provider_only(rig: Rig) -> None:
    r = await rig.client.post("/api/packages", content=GOOD, headers=_auth("k-provider"))
    sid = r.json()["id"]
    mine = await rig.client.get(f"/api/packages/{sid}", headers=_auth("k-provider"))
    assert mine.status_code == 200 and mine.json()["stages"][0]["stage"] == "store"
    for key in ("k-other", "k-consumer"):
        other = await rig.client.get(f"/api/packages/{sid}", headers=_auth(key))
        assert other.status_code == 404 and sid in other.json()["error"]
        assert (await rig.client.get("/api/packages", headers=_auth(key))).json() == {"submissions": []}
    listed = await rig.client.get("/api/packages", headers=_auth("k-provider"), params={"limit": 5})
    assert [s["id"] for s in listed.json()["submissions"]] == [sid]
    for bad in ("0", "101", "x"):
        r = await rig.client.get("/api/packages", headers=_auth("k-provider"), params={"limit": bad})
        assert r.status_code == 400 and r.json()["error"].startswith("limit:")


async def test_without_a_gate_every_package_route_is_404_after_authentication() -> None:
    router = Router(routes=package_routes(None, _authenticate))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await router(scope, receive, send)
        except Exception as exc:
            await respond(send, status_for(exc) or 500, orjson.dumps({"error": message_for(exc)}))

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        assert (await client.get("/api/packages/sub_1")).status_code == 401
        r = await client.post("/api/packages", content=GOOD, headers=_auth("k-provider"))
        assert r.status_code == 404 and "not published through this gateway" in r.json()["error"]


# -- the queue ------------------------------------------------------------------------------------------------------


def test_the_publish_queue_runs_one_at_a_time_and_frees_a_slot_when_a_run_ends() -> None:
    running: list[str] = []
    overlap: list[int] = []
    gate_open = threading.Event()

    def run(sid: str) -> None:
        running.append(sid)
        overlap.append(len(running))
        gate_open.wait(WAIT_S)
        running.remove(sid)
        if sid == "bad":
            raise RuntimeError("a stage crashed")

    publish = PublishQueue(run, slots=3)
    publish.start()
    slots = [publish.reserve(owner) for owner in ("acme", "other", "third")]
    with pytest.raises(PublishQueueFull, match="full \\(3 packages"):
        publish.reserve("fourth")
    slots[0].enqueue("bad")
    slots[1].enqueue("b")
    slots[2].release()
    with pytest.raises(Exception, match="used twice"):
        slots[2].release()
    assert publish.taken == 2
    gate_open.set()
    deadline = time.monotonic() + WAIT_S
    while publish.runs_done < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert publish.taken == 0 and overlap == [1, 1]  # one run at a time; a crashed run freed its slot too
    publish.stop()


def test_one_account_holds_at_most_half_of_the_slots() -> None:
    publish = PublishQueue(lambda sid: None, slots=4)
    mine = [publish.reserve("acme"), publish.reserve("acme")]
    with pytest.raises(PublishQueueFull, match="this account has 2 packages"):
        publish.reserve("acme")
    other = publish.reserve("other")  # the others still get in
    mine[0].release()
    mine.append(publish.reserve("acme"))
    assert publish.taken == 3
    for slot in (*mine[1:], other):
        slot.release()
    assert publish.taken == 0


# -- the client -----------------------------------------------------------------------------------------------------


def _stage(name: str, status: str = "passed") -> dict[str, Any]:
    return {"stage": name, "status": status, "duration_ms": 30, "summary": f"{name} ok", "report": {}}


class Polls:
    """What successive ``fetch`` calls answer, on a fake clock."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.now = 0.0
        self.calls = 0

    def fetch(self, url: str, key: str | None, ref: str) -> dict[str, Any]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return cast(dict[str, Any], answer)

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_follow_tells_each_finished_stage_once_in_order_and_stops_at_a_final_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = [_stage("validate"), _stage("store")]
    polls = Polls(
        [
            {"status": "running", "stages": base},
            remote.RemoteError("cannot reach the platform"),  # a restart: retried
            {"status": "running", "stages": [*base, _stage("scan"), _stage("smoke_test", "running")]},
            {
                "status": "pending_review",
                "stages": [*base, _stage("scan"), _stage("smoke_test"), _stage("review", "waiting")],
            },
        ]
    )
    monkeypatch.setattr(remote, "fetch", polls.fetch)
    told: list[str] = []
    doc = remote.follow(
        "http://gw",
        "k",
        "sub_1",
        lambda s: told.append(f"{s['stage']}:{s['status']}"),
        seen=1,
        clock=lambda: polls.now,
        sleep=polls.sleep,
    )
    assert doc["status"] == "pending_review"
    assert told == ["store:passed", "scan:passed", "smoke_test:passed", "review:waiting"]


def test_follow_gives_up_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    polls = Polls([{"status": "running", "stages": []}])
    monkeypatch.setattr(remote, "fetch", polls.fetch)
    with pytest.raises(remote.RemoteError, match=r"sub_1 is still running after 60 s; see where it is with"):
        remote.follow(
            "http://gw", "k", "sub_1", lambda s: None, timeout_s=60, clock=lambda: polls.now, sleep=polls.sleep
        )
    assert polls.now <= 60
    refused = Polls([remote.RemoteError("no submission 'sub_1'", 404)])
    monkeypatch.setattr(remote, "fetch", refused.fetch)
    with pytest.raises(remote.RemoteError, match="no submission"):
        remote.follow("http://gw", "k", "sub_1", lambda s: None, clock=lambda: refused.now, sleep=refused.sleep)
    assert refused.calls == 1  # an answer from the platform is not retried


def test_the_client_shows_the_servers_message_and_refuses_bad_arguments_early(tmp_path: Path) -> None:
    request = httpx.Request("GET", "http://gw/api/packages/x")
    with pytest.raises(remote.RemoteError, match=r"^invalid API key$") as caught:
        remote._answer(httpx.Response(401, json={"error": "invalid API key"}, request=request), (200,))
    assert caught.value.status == 401
    with pytest.raises(remote.RemoteError, match=r"HTTP 502 from http://gw/api/packages/x: bad gateway"):
        remote._answer(httpx.Response(502, text="bad gateway\x1b[2J", request=request), (200,))
    with pytest.raises(InvalidInput, match="--url"):
        remote.upload("ftp://gw", "k", tmp_path)
    with pytest.raises(InvalidInput, match="--key"):
        remote.upload("http://127.0.0.1:9", None, tmp_path)
    with pytest.raises(remote.RemoteError, match="cannot reach the platform"):
        remote.fetch("http://127.0.0.1:9", "k", "sub_1")


def test_a_stage_from_a_platform_is_printed_on_one_safe_line(capsys: pytest.CaptureFixture[str]) -> None:
    remote.print_stage({"stage": "scan", "status": "passed", "duration_ms": 30, "summary": "3 files\x1b[31m\nok"})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err
    assert err.split() == ["scan", "passed", "0.03s", "3", "files", "[31m", "ok"]
