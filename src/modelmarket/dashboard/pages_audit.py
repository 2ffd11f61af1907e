"""The operator's audit page: the log's records newest first, what can be checked on every view without walking
the log, and the whole verification run on request.

A view reads a few rows: the chain's head, one page of records, and per verifiable tree its size and latest signed
checkpoint (``AuditService.checkpoint_facts``: the signature against this home's key, and the checkpoint against
the copy kept outside the store). Walking the whole chain and both trees (``AuditService.verify_all``, what
``modelmarket audit verify`` does) takes minutes on a large store, so it runs only when an operator presses the
button: in a thread of its own (not the pool the gateway's calls use), one at a time per gateway, and its result
is kept in memory with the sizes it covered and shown on later views.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Any

from starlette.responses import RedirectResponse, Response

from modelmarket.audit.chain import LIST_LIMIT_MAX
from modelmarket.audit.leaves import AUDIT_TREE
from modelmarket.audit.records import AuditRecord
from modelmarket.audit.service import AuditService, CheckpointFacts, FullVerification
from modelmarket.core.clock import Clock
from modelmarket.core.errors import InvalidInput
from modelmarket.dashboard.pages_account import query
from modelmarket.dashboard.web import View

log = logging.getLogger(__name__)

AUDIT_PAGE_SIZE = 50
AUDIT_PAGE_SIZE_MAX = 200
AUDIT_PAGES_MAX = 1_000_000
PAYLOAD_SHOWN_MAX_CHARS = 160
"""Characters of an audit record's payload shown in the table (the CLI's ``audit list --json`` has it whole)."""
VERIFY_WAIT_S = 20.0
"""How long the button's request waits for the full verification before answering; a longer one goes on, and the
page (refreshing itself meanwhile) shows its result when it is done."""
REFRESH_WHILE_RUNNING_S = 5


def _positive(view: View, name: str, default: int, most: int) -> int:
    raw = query(view, name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= most:
        raise InvalidInput(f"{name}: a whole number from 1 to {most}, got {raw!r}")
    return int(raw)


def audit_window(head_seq: int, page: int, size: int) -> tuple[int, int]:
    """(after_seq, limit) of the ``page``-th page of ``size`` records, newest first: page 1 ends at the head."""
    newest = head_seq - (page - 1) * size
    after = max(0, newest - size)
    return after, max(0, newest - after)


def payload_text(record: AuditRecord) -> str:
    text = json.dumps(record.payload, sort_keys=True, separators=(", ", ": "), ensure_ascii=False, default=str)
    return text if len(text) <= PAYLOAD_SHOWN_MAX_CHARS else text[: PAYLOAD_SHOWN_MAX_CHARS - 1] + "\u2026"


def grown_since(last: FullVerification, now: dict[str, int]) -> dict[str, int]:
    """What was added after ``last`` ran (records, and leaves per tree), the sizes that did not change left out."""
    return {name: now[name] - size for name, size in last.sizes.items() if now.get(name, size) != size}


def _head_seq(audit: AuditService, facts: tuple[CheckpointFacts, ...]) -> tuple[int, str | None]:
    """The chain's head seq; when the newest record cannot be read, the audit tree's size (one leaf a record)."""
    try:
        head = audit.head()
    except ValueError as exc:  # its payload edited into something that is not JSON
        leaves = next((f.leaves for f in facts if f.tree == AUDIT_TREE), 0)
        return leaves, f"the newest record cannot be read ({exc}); verify everything to find where the chain breaks"
    return (0 if head is None else head.seq), None


def _read(audit: AuditService, page: int, size: int) -> dict[str, Any]:
    """Everything a view shows, read in a worker thread: a few rows, never the whole log."""
    facts = audit.checkpoint_facts()
    head_seq, unreadable = _head_seq(audit, facts)
    after, limit = audit_window(head_seq, page, size)
    records: list[AuditRecord] = []
    if limit > 0:
        try:
            records = list(reversed(audit.list(min(limit, LIST_LIMIT_MAX), after)))
        except ValueError as exc:  # a payload edited into something that is not JSON
            unreadable = f"the records of this page cannot be read ({exc}); verify everything to find the first"
    last = audit.last_full_verification()
    sizes = {"records": head_seq, **{f.tree: f.leaves for f in facts}}
    return {
        "facts": facts,
        "head_seq": head_seq,
        "records": records,
        "unreadable": unreadable,
        "last": last,
        "grown": None if last is None else grown_since(last, sizes),
        "running_since": audit.full_verification_running(),
        "broken_seq": None if last is None else last.chain.first_broken_seq,
        "newer": page - 1 if page > 1 else None,
        "older": page + 1 if after > 0 else None,
    }


def start_verification(audit: AuditService, clock: Clock) -> asyncio.Future[FullVerification | None]:
    """Run ``audit.verify_all`` in a thread of its own; the future settles when it is done (None: another run was
    going on). A failure is logged here, and reaches whoever still awaits the future."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[FullVerification | None] = loop.create_future()
    done.add_done_callback(lambda f: f.cancelled() or f.exception())  # awaited or not, the outcome is seen

    def settle(result: FullVerification | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def run() -> None:
        result, error = None, None
        try:
            result = audit.verify_all(clock)
        except Exception as exc:
            log.exception("audit: the full verification failed")
            error = exc
        with contextlib.suppress(RuntimeError):  # the gateway stopped meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="audit-verify-all", daemon=True).start()
    return done


async def _verify_now(view: View) -> Response:
    """The button: start a full verification unless one runs, wait for it a while, then show the page (a GET, so
    reloading it does not start another)."""
    platform = view.ctx.platform
    if platform.audit.full_verification_running() is None:
        done = start_verification(platform.audit, platform.clock)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), VERIFY_WAIT_S)
    return RedirectResponse("/audit", status_code=303, headers={"Cache-Control": "no-store"})


async def audit_page(view: View) -> Response:
    if view.request.method == "POST":
        return await _verify_now(view)
    try:
        page = _positive(view, "page", 1, AUDIT_PAGES_MAX)
        size = _positive(view, "size", AUDIT_PAGE_SIZE, AUDIT_PAGE_SIZE_MAX)
    except InvalidInput as exc:
        return view.render("audit.html", status_code=400, error=exc.message)
    values = await asyncio.to_thread(_read, view.ctx.platform.audit, page, size)
    return view.render(
        "audit.html",
        error=None,
        page=page,
        size=size,
        payload_text=payload_text,
        refresh_s=REFRESH_WHILE_RUNNING_S,
        **values,
    )
