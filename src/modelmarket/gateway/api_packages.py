"""Publishing over HTTP: a provider uploads a package (``POST /api/packages``, a ``.tar.gz``) and follows the gate's
stages (``GET /api/packages/{id}``, ``GET /api/packages``). Only a provider account's key may upload, and only
under its own account; a submission is shown to the provider that made it and to nobody else.

An upload is read with its own bound (``MODELMARKET_MAX_PACKAGE_BYTES``: a ``Content-Length`` past it is answered
413 before any of the body is read; without one the body is counted as it arrives) into a fresh private folder
under ``MODELMARKET_HOME/uploads``, unpacked by ``registry/upload.py`` and submitted to the gate (validate and
store) in a worker thread; the folder is removed whatever happens. The answer is 202 with the submission, and
the remaining stages run on the gateway's ``PublishQueue``: one gate run at a time in one worker thread, behind a
bounded number of slots. A slot is taken before the body is read, so a full queue answers 503 (``Retry-After``)
before anything is received or stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelmarket.accounts import Account
from modelmarket.core.errors import DomainError, InvalidInput, NotFound, PermissionDenied, ensure
from modelmarket.governance.gate import GateService
from modelmarket.governance.model import StageRecord, Submission
from modelmarket.registry.upload import UploadLimits, unpack_package
from modelmarket.runtime.asgi import BodyIncomplete, BodyTooLarge
from modelmarket.settings import Settings

__all__ = [
    "LIST_LIMIT_DEFAULT",
    "LIST_LIMIT_MAX",
    "PUBLISH_QUEUE_SLOTS",
    "RETRY_AFTER_S",
    "UPLOAD_PATH",
    "PackageUploads",
    "PublishQueue",
    "PublishQueueFull",
    "package_routes",
]

log = logging.getLogger(__name__)
UPLOAD_PATH = "/api/packages"
PUBLISH_QUEUE_SLOTS = 8
"""Uploads being received, submissions waiting for their gate run, and the one running, together."""
RETRY_AFTER_S = 30
"""What a 503 for a full publish queue tells the provider to wait: gate runs take seconds to minutes."""
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
STOP_WAIT_S = 5.0
"""How long the gateway's shutdown waits for a gate run in progress before leaving its thread behind."""
_WRITE_BATCH_BYTES = 1024 * 1024
_BODY_FILE = "upload.tar.gz"
_PACKAGE_DIR = "package"
_ARCHIVE_TYPES = ("application/gzip", "application/x-gzip", "application/octet-stream", "application/x-tar+gzip")

Authenticate = Callable[[Request], Awaitable[Account]]


class PublishQueueFull(DomainError):
    """Every slot of the publish queue is taken; nothing was received or stored."""


# -- the queue ------------------------------------------------------------------------------------------------------


class PublishQueue:
    """Gate runs, one at a time, in one worker thread; at most ``slots`` uploads and runs in hand at once, and at
    most half of them (``per_owner``) for one account, so one provider cannot take every slot.

    ``reserve(owner)`` takes a slot for an upload about to be received (``PublishQueueFull`` if none is free); the
    slot is then either ``release()``-d (the upload was refused) or given a submission with ``enqueue()``, and is
    free again once that submission's run has ended.
    """

    def __init__(self, run: Callable[[str], object], slots: int = PUBLISH_QUEUE_SLOTS) -> None:
        ensure(slots > 0, f"slots must be positive, got {slots}")
        self._run = run
        self.slots = slots
        self.per_owner = max(1, slots // 2)
        self._taken = 0
        self._by_owner: dict[str, int] = {}
        self._lock = threading.Lock()
        self._waiting: queue.Queue[tuple[str, str] | None] = queue.Queue(maxsize=slots + 1)  # + the stop marker
        self._thread: threading.Thread | None = None
        self.runs_done = 0

    @property
    def taken(self) -> int:
        return self._taken

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="publish-queue", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop after the run in progress (waiting at most ``STOP_WAIT_S``); submissions still waiting keep their
        status ``running`` in the store."""
        thread = self._thread
        if thread is None:
            return
        self._waiting.put(None)
        thread.join(timeout=STOP_WAIT_S)
        if thread.is_alive():
            log.warning("a gate run is still in progress at shutdown; its thread is left to end with the process")

    def reserve(self, owner: str) -> PublishSlot:
        with self._lock:
            if self._taken >= self.slots:
                raise PublishQueueFull(
                    f"the publish queue is full ({self.slots} packages being received or waiting for the gate): "
                    f"retry in {RETRY_AFTER_S} s"
                )
            if self._by_owner.get(owner, 0) >= self.per_owner:
                raise PublishQueueFull(
                    f"this account has {self.per_owner} packages being received or waiting for the gate, the most "
                    f"one account may: retry in {RETRY_AFTER_S} s"
                )
            self._taken += 1
            self._by_owner[owner] = self._by_owner.get(owner, 0) + 1
        return PublishSlot(self, owner)

    def _free(self, owner: str) -> None:
        with self._lock:
            held = self._by_owner.get(owner, 0)
            ensure(self._taken > 0 and held > 0, "a publish queue slot was freed twice")
            self._taken -= 1
            if held == 1:
                del self._by_owner[owner]
            else:
                self._by_owner[owner] = held - 1

    def _put(self, submission_id: str, owner: str) -> None:
        self.start()
        self._waiting.put_nowait((submission_id, owner))  # never full: one entry per slot at most

    def _work(self) -> None:
        while True:
            item = self._waiting.get()
            if item is None:
                return
            submission_id, owner = item
            try:
                ended = self._run(submission_id)
                log.info("gate run of %s ended: %s", submission_id, getattr(ended, "status", ended))
            except DomainError as exc:
                log.error("gate run of %s stopped: %s", submission_id, exc.message)
            except Exception:  # a bug in a stage: logged with its traceback; the queue goes on with the next
                log.exception("gate run of %s failed", submission_id)
            finally:
                self.runs_done += 1
                self._free(owner)


class PublishSlot:
    """One reserved place in the publish queue: ``enqueue`` or ``release`` it, once."""

    def __init__(self, publish: PublishQueue, owner: str) -> None:
        self._publish = publish
        self._owner = owner
        self._used = False

    def _use(self) -> None:
        ensure(not self._used, "a publish queue slot was used twice")
        self._used = True

    def enqueue(self, submission_id: str) -> None:
        self._use()
        self._publish._put(submission_id, self._owner)

    def release(self) -> None:
        self._use()
        self._publish._free(self._owner)


# -- uploads --------------------------------------------------------------------------------------------------------


@dataclass
class PackageUploads:
    gate: GateService
    uploads_dir: Path
    limits: UploadLimits
    max_package_bytes: int
    queue: PublishQueue

    @classmethod
    def from_settings(cls, gate: GateService, settings: Settings, slots: int = PUBLISH_QUEUE_SLOTS) -> PackageUploads:
        limits = UploadLimits(settings.max_package_members, settings.max_package_unpacked_bytes)
        publish = PublishQueue(lambda submission_id: gate.run(submission_id, _log_stage(submission_id)), slots)
        return cls(gate, settings.uploads_dir, limits, settings.max_package_bytes, publish)

    def start(self) -> None:
        """At the gateway's start: uploads left by a gateway that stopped are removed, and their submissions that
        were still running are marked failed (only a gateway runs uploads, so none is running now); then the
        queue starts."""
        if self.uploads_dir.is_dir():
            for leftover in self.uploads_dir.iterdir():
                if leftover.is_dir() and not leftover.is_symlink():
                    _remove(leftover)
        for submission_id in self.gate.fail_interrupted("account:"):
            log.warning("submission %s was interrupted by a gateway stop; marked failed", submission_id)
        self.queue.start()

    def stop(self) -> None:
        self.queue.stop()

    async def receive_and_submit(self, request: Request, account: Account) -> Submission:
        """Read the body into a private folder, unpack it and submit it; the folder is gone when this returns."""
        folder = await asyncio.to_thread(_private_folder, self.uploads_dir)
        handed_over = False
        try:
            body = folder / _BODY_FILE
            await _receive(request, body, self.max_package_bytes)
            handed_over = True  # from here the worker thread removes the folder, even if this task is cancelled
            return await asyncio.to_thread(self._unpack_and_submit, body, folder, account)
        finally:
            if not handed_over:
                _remove(folder)

    def _unpack_and_submit(self, body: Path, folder: Path, account: Account) -> Submission:
        root: Path | None = None
        try:
            dest = folder / _PACKAGE_DIR
            dest.mkdir(mode=0o700)
            root = unpack_package(body, dest, self.limits)
            body.unlink()
            return self.gate.submit(root, actor=f"account:{account.id}", account_id=account.id)
        except DomainError as exc:
            if root is not None:  # name files as the provider knows them, not by the platform's folders
                exc.message = exc.message.replace(f"{root}/", "").replace(str(root), "package")
            raise
        finally:
            _remove(folder)


def _private_folder(uploads_dir: Path) -> Path:
    uploads_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="up_", dir=uploads_dir))  # 0700, a fresh name


def _remove(folder: Path) -> None:
    def report(_function: Any, path: str, exc_info: Any) -> None:
        log.error("could not remove %s from an upload: %s", path, exc_info[1])

    shutil.rmtree(folder, onerror=report)  # never follows a link out of the folder


async def _receive(request: Request, path: Path, limit: int) -> None:
    """The request body into the new file ``path`` (``0600``), refused past ``limit`` bytes as it arrives."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        size, pending = 0, bytearray()
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise BodyIncomplete(f"the package archive ended after {size:,} bytes: the connection was closed")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(_too_large(limit))
            pending += chunk
            more = message.get("more_body", False)
            if len(pending) >= _WRITE_BATCH_BYTES or (pending and not more):
                await asyncio.to_thread(out.write, bytes(pending))
                pending.clear()
            if not more:
                break
    if size == 0:
        raise InvalidInput("body: empty; send the package folder as a .tar.gz (`modelmarket publish DIR --url ...`)")


def _too_large(limit: int) -> str:
    return f"the package archive is larger than the limit of {limit:,} bytes (MODELMARKET_MAX_PACKAGE_BYTES)"


def _log_stage(submission_id: str) -> Callable[[str, StageRecord | None], None]:
    def tell(stage: str, record: StageRecord | None) -> None:
        if record is not None:
            log.info("%s %s: %s (%s)", submission_id, stage, record.status, record.summary)

    return tell


# -- the routes -----------------------------------------------------------------------------------------------------


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def package_routes(uploads: PackageUploads | None, authenticate: Authenticate) -> list[Route]:
    """``POST /api/packages``, ``GET /api/packages`` and ``GET /api/packages/{submission_id}``; every one needs a
    key. Without ``uploads`` (a gateway that serves no gate) each answers 404."""

    def served() -> PackageUploads:
        if uploads is None:
            raise NotFound("packages are not published through this gateway")
        return uploads

    async def submit(request: Request) -> Response:
        account = await authenticate(request)
        if account.role != "provider":
            raise PermissionDenied(
                f"only a provider account publishes packages; this key belongs to {account.role} account "
                f"{account.name!r}"
            )
        up = served()
        _check_headers(request, up.max_package_bytes)
        try:
            slot = up.queue.reserve(account.id)
        except PublishQueueFull as exc:
            return _JSON({"error": exc.message}, 503, headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            submission = await up.receive_and_submit(request, account)
        except BaseException:
            slot.release()
            raise
        if submission.status == "running":
            slot.enqueue(submission.id)
            status = 202
        else:  # the same bytes as a published version: nothing runs again
            slot.release()
            status = 200
        log.info("package %s submitted by %s as %s", submission.ref, account.name, submission.id)
        return _JSON(submission.to_json(), status, headers={"Location": f"{UPLOAD_PATH}/{submission.id}"})

    async def listed(request: Request) -> Response:
        account = await authenticate(request)
        limit = _limit(request.query_params.get("limit"))
        found = await asyncio.to_thread(served().gate.list, (), account.id, limit)
        return _JSON({"submissions": [s.to_json() for s in found]})

    async def shown(request: Request) -> Response:
        account = await authenticate(request)
        ref = request.path_params["submission_id"]
        return _JSON((await asyncio.to_thread(served().gate.show, ref, account.id)).to_json())

    return [
        Route(UPLOAD_PATH, submit, methods=["POST"]),
        Route(UPLOAD_PATH, listed, methods=["GET"]),
        Route(UPLOAD_PATH + "/{submission_id}", shown, methods=["GET"]),
    ]


def _check_headers(request: Request, limit: int) -> None:
    """413 for a declared length past ``limit`` (before any of the body is read); 400 for a body that is not an
    archive (a form upload)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(_too_large(limit))
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type and content_type not in _ARCHIVE_TYPES:
        raise InvalidInput(
            f"Content-Type: {content_type[:60]!r}; send the package as the raw .tar.gz body (application/gzip)"
        )


def _limit(raw: str | None) -> int:
    if raw is None:
        return LIST_LIMIT_DEFAULT
    if not raw.isdigit() or not 1 <= int(raw) <= LIST_LIMIT_MAX:
        raise InvalidInput(f"limit: a whole number from 1 to {LIST_LIMIT_MAX}, got {raw[:20]!r}")
    return int(raw)
