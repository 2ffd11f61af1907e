"""The provider's side of publishing over HTTP: pack a package folder and upload it with the provider's own key
(``POST /api/packages``), then follow the gate's stages (``GET /api/packages/{id}``) until the submission ends.

Nothing here reads ``MODELMARKET_HOME`` or a database: a provider has no shell on the platform's machine, only its
URL and a key. Errors are the server's own messages (``RemoteError``, a ``DomainError``: the CLI shows
``error: <message>`` and exits 1).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from modelmarket.cli.gate_view import echo_stage, printable
from modelmarket.core.errors import DomainError, InvalidInput
from modelmarket.registry.upload import UploadLimits, pack_package
from modelmarket.settings import Settings

__all__ = [
    "FINAL_STATUSES",
    "RemoteError",
    "fetch",
    "follow",
    "list_submissions",
    "print_stage",
    "publish_remote",
    "upload",
]

FINAL_STATUSES = frozenset({"failed", "rejected", "published", "pending_review"})
"""Where following a submission stops: pending_review waits for a person, not for the gate."""
UPLOAD_TIMEOUT_S = 600.0
"""Most time to send the archive, and then to wait for the answer (the platform validates and stores it first)."""
REQUEST_TIMEOUT_S = 30.0
FOLLOW_TIMEOUT_S = 1800.0
"""How long ``follow`` waits for a submission to end (a gate run takes seconds to minutes)."""
POLL_FIRST_S = 0.25
POLL_MAX_S = 2.0
MAX_POLL_FAILURES = 5
"""Polls in a row that may fail to connect (a gateway restarting) before following gives up."""

OnStage = Callable[[dict[str, Any]], None]


class RemoteError(DomainError):
    """The platform refused a request (its message), or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _client_limits() -> UploadLimits:
    """The platform's default upload bounds (``MODELMARKET_MAX_PACKAGE_*``), checked before anything is sent."""
    fields = Settings.model_fields
    return UploadLimits(
        max_members=int(fields["max_package_members"].default),
        max_unpacked_bytes=int(fields["max_package_unpacked_bytes"].default),
        max_archive_bytes=int(fields["max_package_bytes"].default),
    )


def _base(url: str) -> str:
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidInput(f"--url: {url[:100]!r} is not the platform's http:// or https:// address")
    return url.strip().rstrip("/")


def _headers(key: str | None) -> dict[str, str]:
    if key is None or not key.strip():
        raise InvalidInput("--key: give the provider's API key (`modelmarket keys create PROVIDER` on the platform)")
    return {"Authorization": f"Bearer {key.strip()}", "Accept": "application/json"}


def _answer(response: httpx.Response, expected: tuple[int, ...]) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if response.status_code in expected and isinstance(doc, dict):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        raise RemoteError(printable(doc["error"], 2000), response.status_code)
    shown = printable(response.text, 200)
    raise RemoteError(f"HTTP {response.status_code} from {response.request.url}: {shown}", response.status_code)


def _request(
    method: str, url: str, key: str | None, *, timeout_s: float = REQUEST_TIMEOUT_S, **kwargs: Any
) -> httpx.Response:
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, REQUEST_TIMEOUT_S))
    try:
        return httpx.request(method, url, headers=_headers(key) | kwargs.pop("headers", {}), timeout=timeout, **kwargs)
    except httpx.TimeoutException:
        raise RemoteError(f"{method} {url}: no answer within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise RemoteError(f"{method} {url}: cannot reach the platform ({type(exc).__name__}: {exc})") from None


def upload(url: str, key: str | None, package_dir: Path, *, timeout_s: float = UPLOAD_TIMEOUT_S) -> dict[str, Any]:
    """Pack ``package_dir`` (``registry.upload.pack_package``) and upload it; the submission as the platform
    answered it (``status`` ``running``: validated and stored, its other stages under way)."""
    endpoint = f"{_base(url)}/api/packages"
    headers = _headers(key)  # a missing key is refused before anything is packed
    with pack_package(package_dir, _client_limits()) as archive:
        response = _request(
            "POST",
            endpoint,
            key,
            timeout_s=timeout_s,
            content=archive,
            headers=headers | {"Content-Type": "application/gzip"},
        )
    return _answer(response, (200, 202))


def fetch(url: str, key: str | None, ref: str) -> dict[str, Any]:
    """One of the caller's submissions (an id, or ``name@version``: its newest) with its stages."""
    quoted = urllib.parse.quote(ref, safe="@")
    return _answer(_request("GET", f"{_base(url)}/api/packages/{quoted}", key), (200,))


def list_submissions(url: str, key: str | None, limit: int = 20) -> list[dict[str, Any]]:
    """The caller's submissions, newest first (without their stages)."""
    doc = _answer(_request("GET", f"{_base(url)}/api/packages", key, params={"limit": limit}), (200,))
    found = doc.get("submissions")
    return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


def follow(
    url: str,
    key: str | None,
    submission_id: str,
    on_stage: OnStage,
    *,
    seen: int = 0,
    timeout_s: float = FOLLOW_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll the submission until its status is final (``FINAL_STATUSES``); return it as it ended.

    ``on_stage`` is called once for each stage record that has finished (any status but ``running``), in order,
    the first ``seen`` records left out (those the caller showed already). Waits at most ``timeout_s``; a few
    failed polls in a row (a gateway restarting) are retried.
    """
    deadline = clock() + timeout_s
    pause, failures, shown = POLL_FIRST_S, 0, seen
    while True:
        try:
            doc = fetch(url, key, submission_id)
            failures = 0
        except RemoteError as exc:
            failures += 1
            if exc.status is not None or failures > MAX_POLL_FAILURES:
                raise
            doc = None
        if doc is not None:
            shown = _report_stages(doc, shown, on_stage)
            if doc.get("status") in FINAL_STATUSES:
                return doc
        if clock() + pause > deadline:
            status = "unknown" if doc is None else doc.get("status")
            raise RemoteError(
                f"submission {submission_id} is still {status} after {timeout_s:g} s; see where it is with "
                f"`modelmarket reviews show {submission_id} --url {_base(url)} --key ...`"
            )
        sleep(pause)
        pause = min(POLL_MAX_S, pause * 2)


def _report_stages(doc: dict[str, Any], shown: int, on_stage: OnStage) -> int:
    """Tell ``on_stage`` of the finished records past the first ``shown``; how many are shown now."""
    stages = doc.get("stages")
    if not isinstance(stages, list):
        return shown
    for record in stages[shown:]:
        if not isinstance(record, dict) or record.get("status") == "running":
            break  # a stage still running: it and those after it are told on a later poll
        on_stage(record)
        shown += 1
    return shown


def print_stage(stage: dict[str, Any]) -> None:
    """One line for a stage a platform reported (``cli/gate_view.stage_line``, on stderr), its text made safe for
    a terminal first."""
    duration_ms = stage.get("duration_ms")
    echo_stage(
        {
            "stage": printable(stage.get("stage", "?"), 40),
            "status": printable(stage.get("status", "?"), 20),
            "duration_ms": duration_ms if isinstance(duration_ms, int) and duration_ms >= 0 else 0,
            "summary": printable(stage.get("summary", "")),
        }
    )


def publish_remote(
    url: str, key: str | None, package_dir: Path, *, wait: bool = True, on_stage: OnStage | None = None
) -> dict[str, Any]:
    """``modelmarket publish DIR --url URL --key KEY``: upload, tell each finished stage (``print_stage`` unless
    ``on_stage``), and with ``wait`` follow the submission until its status is final; the submission as it ended
    (or, without ``wait``, as accepted)."""
    tell = on_stage or print_stage
    doc = upload(url, key, package_dir)
    shown = _report_stages(doc, 0, tell)
    if wait and doc.get("status") not in FINAL_STATUSES:
        doc = follow(url, key, str(doc["id"]), tell, seen=shown)
    return doc
