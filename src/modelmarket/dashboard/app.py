"""The dashboard's ASGI app: a Starlette router over every page, with sessions, roles, CSRF and static files.

Every page request goes through ``Dashboard._serve``: the session is read (``dashboard/sessions.py``), a page
that needs a sign-in sends a signed-out browser to ``/signin?next=<this path>``, a page whose roles leave the
viewer out answers 403, a POST must carry the session's CSRF token and come from this site, and its body is read
up to the page's ``max_body_bytes``. Domain errors become HTML error pages with the status of the gateway's one
error table (``gateway/errors.py``). Static files are served from this package's ``static/`` folder by exact
name only (a table made at start: no directory listing, no path outside it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route, Router

from modelmarket.accounts.sessions import SessionService
from modelmarket.core.errors import InvalidInput, ensure
from modelmarket.dashboard import pages_account, pages_catalogue, pages_operator, pages_playground
from modelmarket.dashboard.sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    SIGNIN_MAX_BODY_BYTES,
    Sessions,
    SignInBudget,
    clear_session_cookie,
    cross_site,
    safe_next,
    set_session_cookie,
    set_signin_cookie,
    signin_client,
    signin_token,
    tokens_match,
)
from modelmarket.dashboard.web import SECURITY_HEADERS, STATIC_PACKAGE, DashboardContext, Page, Session, View
from modelmarket.gateway.errors import headers_for, message_for, status_for
from modelmarket.observability import note
from modelmarket.runtime.asgi import BodyTooLarge, Receive, Scope, Send, read_body

log = logging.getLogger(__name__)

FORM_MAX_FIELDS = 64
FORM_MAX_FILES = 2
SIGNIN_KEY_MAX_CHARS = 200
STATIC_CACHE_S = 365 * 24 * 3600
"""How long a browser keeps an asset asked for by its digest URL (``static_url``); otherwise an hour."""
CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}
"""The only kinds of file served from ``static/``; any other file there is not served."""
ANY_METHOD = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_STATIC_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    digest: str


def static_files(root: Traversable, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, StaticFile]]:
    """Every servable file under ``root`` by its path (``vendor/htmx.min.js``): regular files with a known suffix
    and a plain name, at most three folders deep."""
    if depth > 3 or not root.is_dir():
        return
    for item in sorted(root.iterdir(), key=lambda x: x.name):
        if not _STATIC_NAME_RE.fullmatch(item.name):
            continue
        if item.is_dir():
            yield from static_files(item, f"{prefix}{item.name}/", depth + 1)
            continue
        suffix = item.name[item.name.rfind(".") :] if "." in item.name else ""
        if item.is_file() and suffix in CONTENT_TYPES:
            body = item.read_bytes()
            digest = hashlib.sha256(body).hexdigest()[:16]
            yield f"{prefix}{item.name}", StaticFile(body, CONTENT_TYPES[suffix], digest)


def bounded(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises ``BodyTooLarge`` once the body passes ``limit`` bytes."""
    seen = 0

    async def limited() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body is larger than the limit of {limit:,} bytes")
        return message

    return limited


def declared_too_large(request: Request, limit: int) -> bool:
    raw = request.headers.get("content-length")
    return raw is not None and (not raw.isdigit() or len(raw) > 15 or int(raw) > limit)


class Dashboard:
    """The ASGI app ``GatewayParts.dashboard``."""

    def __init__(self, ctx: DashboardContext, pages: Sequence[Page], sessions: Sessions) -> None:
        self.ctx = ctx
        self.sessions = sessions
        self.ttl_s = int(ctx.platform.settings.session_ttl_s)
        self.budget = SignInBudget()
        self.pages = list(pages)
        self.static = dict(static_files(resources.files(STATIC_PACKAGE[0]).joinpath(STATIC_PACKAGE[1])))
        by_path: dict[str, dict[str, Page]] = {}
        for page in self.pages:
            methods = by_path.setdefault(page.path, {})
            for method in page.methods:
                ensure(method not in methods, f"dashboard: two pages answer {method} {page.path}")
                methods[method] = page
        signout = Page("/signout", self._signout, methods=("POST",), max_body_bytes=SIGNIN_MAX_BODY_BYTES)
        routes = [  # every method reaches the handlers, which answer 405 themselves (as an HTML page)
            Route("/signin", self._signin, methods=ANY_METHOD),
            Route("/signout", self._endpoint({"POST": signout}), methods=ANY_METHOD),
            Route("/static/{name:path}", self._static, methods=ANY_METHOD),
            *(Route(path, self._endpoint(methods), methods=ANY_METHOD) for path, methods in by_path.items()),
        ]
        self.router = Router(routes, redirect_slashes=False, default=self._not_found)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.router(scope, receive, send)

    # -- pages --------------------------------------------------------------------------------------------------
    def nav(self, session: Session | None) -> list[tuple[str, str]]:
        """The pages this viewer may open that have a label (detail pages have none)."""
        role = None if session is None else session.account.role
        return [
            (p.path, p.label)
            for p in self.pages
            if p.label is not None and "{" not in p.path and (p.roles is None or (role is not None and role in p.roles))
        ]

    def _endpoint(self, methods: dict[str, Page]) -> Any:
        async def endpoint(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            page = methods.get(method)
            limit = page.max_body_bytes if page is not None and method != "GET" else 0
            return await self._serve(Request(request.scope, bounded(request.receive, limit)), page)

        return endpoint

    async def _serve(self, request: Request, page: Page | None) -> Response:
        view = View(request, self.ctx, None, self.nav(None))
        try:
            view.session = session = await self.sessions.of(request)
            view.nav = self.nav(session)
            if session is not None:
                note(account_id=session.account.id, key_id=session.key_id)
            if page is None:
                response = self.error(view, 405, "Not allowed", f"{request.method} is not allowed on this page.")
            elif page.roles is not None and session is None:
                response = self.to_signin(view)
            elif page.roles is not None and session is not None and session.account.role not in page.roles:
                response = self.error(view, 403, "Not allowed", "Your account's role cannot open this page.")
            elif request.method not in ("GET", "HEAD"):
                response = await self.check_post(view, page) or await page.handler(view)
            else:
                response = await page.handler(view)
        except Exception as exc:
            response = self.failure(view, exc)
        finally:
            await request.close()  # the form's uploaded files, whoever read it
        if view.session is None and SESSION_COOKIE in request.cookies:  # expired, ended or revoked: forget it
            clear_session_cookie(response, request)
        return response

    async def check_post(self, view: View, page: Page) -> Response | None:
        """A refusal, or None; the form is read within the page's body limit (and kept for the page)."""
        request, session = view.request, view.session
        if session is None:
            return self.to_signin(view)
        why = cross_site(request)
        if why is not None:
            return self.error(view, 403, "Refused", f"This form was sent from another site ({why}).")
        if declared_too_large(request, page.max_body_bytes):
            raise BodyTooLarge(f"request body is larger than the limit of {page.max_body_bytes:,} bytes")
        stale = "This form's security token is missing or stale: reload the page and send it again."
        token = request.headers.get(CSRF_HEADER)  # htmx sends it; checked before the body is read
        if token is not None and not tokens_match(session.csrf_token, token):
            return self.error(view, 403, "Refused", stale)
        try:  # read here, within bounds, whether the token is in it or not: the page gets this form
            form = await request.form(
                max_files=FORM_MAX_FILES, max_fields=FORM_MAX_FIELDS, max_part_size=page.max_body_bytes
            )
        except (MultiPartException, HTTPException) as exc:
            detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
            return self.error(view, 400, "Bad form", f"The form could not be read: {detail}")
        if token is None:
            value = form.get(CSRF_FIELD)
            if not tokens_match(session.csrf_token, value if isinstance(value, str) else None):
                return self.error(view, 403, "Refused", stale)
        return None

    def failure(self, view: View, exc: Exception) -> Response:
        """The error page of an exception: a domain error's status and message, else a logged 500."""
        note(error_type=type(exc).__name__)
        status = status_for(exc)
        if isinstance(exc, ClientDisconnect):  # the browser went away mid-body: nobody reads this answer
            return self.error(view, 400, "Incomplete request", "The request body ended early.")
        if status is None:
            log.exception("dashboard: unhandled error on %s %s", view.request.method, view.request.url.path)
            message = f"Internal error ({type(exc).__name__}); see the gateway log."
            return self.error(view, 500, "Something went wrong", message)
        headers = {k.decode(): v.decode() for k, v in headers_for(exc)}
        return self.error(view, status, "Could not do that", message_for(exc), headers)

    def to_signin(self, view: View) -> Response:
        request = view.request
        here = "/"  # after a POST, the page it came from is not known
        if request.method in ("GET", "HEAD"):
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = "/signin?next=" + quote(safe_next(here), safe="")
        if view.is_htmx:
            return Response(status_code=401, headers={**SECURITY_HEADERS, "HX-Redirect": target})
        return RedirectResponse(target, status_code=303, headers=_NO_STORE)

    def error(
        self, view: View, status: int, title: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        template = "_error.html" if view.is_htmx else "error.html"
        response = view.render(template, status_code=status, title=title, message=message, status=status)
        response.headers.update(headers or {})
        return response

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        session = await self.sessions.of(request)
        view = View(request, self.ctx, session, self.nav(session))
        response = self.error(view, 404, "Not found", f"There is no page at {request.url.path[:200]}.")
        await response(scope, receive, send)

    # -- sign-in and sign-out -----------------------------------------------------------------------------------
    async def _signin(self, request: Request) -> Response:
        session = await self.sessions.of(request)
        view = View(request, self.ctx, session, self.nav(session))
        if request.method == "POST":
            try:
                return await self._signin_post(view)
            except BodyTooLarge as exc:
                return self.signin_form(view, 413, str(exc), "/")
            except Exception as exc:
                return self.failure(view, exc)
        if request.method not in ("GET", "HEAD"):
            return self.error(view, 405, "Not allowed", f"{request.method} is not allowed on this page.")
        return self.signin_form(view, 200, None, safe_next(request.query_params.get("next")))

    def signin_form(self, view: View, status: int, error: str | None, next_path: str) -> Response:
        token, fresh = signin_token(view.request)
        response = view.render("signin.html", status_code=status, error=error, next_path=next_path, form_token=token)
        if fresh:
            set_signin_cookie(response, view.request, token)
        return response

    async def _signin_post(self, view: View) -> Response:
        request = view.request
        why = cross_site(request)
        if why is not None:
            return self.error(view, 403, "Refused", f"This sign-in was sent from another site ({why}).")
        client = signin_client(request.client.host if request.client is not None else None)
        wait_s = self.budget.wait_s(client)
        if wait_s > 0:
            retry_s = int(wait_s) + 1
            message = (
                f"Too many failed sign-ins from your address (at most {self.budget.failures_max} in "
                f"{int(self.budget.window_s) // 60} minutes, counting those still being checked): "
                f"try again in {retry_s} seconds."
            )
            return self.error(view, 429, "Too many attempts", message, {"Retry-After": str(retry_s)})
        stamp = self.budget.reserve(client)  # counted as failed before anything is awaited (parallel attempts)
        try:
            form = await self._signin_fields(view)
        except BaseException:
            self.budget.give_back(client, stamp)  # no key was looked at
            raise
        if isinstance(form, Response):
            self.budget.give_back(client, stamp)
            return form
        next_path, key = form
        found = await self.ctx.parts.state.authenticate_key(key) if 0 < len(key) <= SIGNIN_KEY_MAX_CHARS else None
        account, key_id = found or (None, None)
        if account is None or key_id is None:  # the attempt stays counted
            return self.signin_form(view, 401, "That API key is not valid (or it was revoked).", next_path)
        self.budget.give_back(client, stamp)
        made = await asyncio.to_thread(
            self.sessions.service.sign_in, account, key_id, request.cookies.get(SESSION_COOKIE)
        )
        note(account_id=account.id, key_id=key_id)
        log.info("dashboard sign-in: account %s with key %s", account.id, key_id)
        response = RedirectResponse(next_path, status_code=303, headers=_NO_STORE)
        set_session_cookie(response, request, made.secret, self.ttl_s)
        response.delete_cookie(SIGNIN_COOKIE, path="/signin", httponly=True, samesite="strict")
        return response

    async def _signin_fields(self, view: View) -> tuple[str, str] | Response:
        """The sign-in form's ``next`` and key, read within bounds; or the refusal of a form whose token is not
        the one in this browser's sign-in cookie (no key is looked at then)."""
        request = view.request
        if declared_too_large(request, SIGNIN_MAX_BODY_BYTES):
            raise BodyTooLarge(f"request body is larger than the limit of {SIGNIN_MAX_BODY_BYTES:,} bytes")
        body = await read_body(request.receive, SIGNIN_MAX_BODY_BYTES)
        try:
            fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
        except ValueError:  # more fields than the form has
            raise InvalidInput("the sign-in form has at most 8 fields") from None
        next_path = safe_next(_first(fields, "next"))
        if not tokens_match(request.cookies.get(SIGNIN_COOKIE, ""), _first(fields, CSRF_FIELD)):
            return self.signin_form(view, 403, "The sign-in form expired: send it again.", next_path)
        return next_path, (_first(fields, "key") or "").strip()

    async def _signout(self, view: View) -> Response:
        session = view.session
        if session is not None:
            secret = view.request.cookies.get(SESSION_COOKIE, "")
            await asyncio.to_thread(self.sessions.service.sign_out, secret, session.account)
            log.info("dashboard sign-out: account %s", session.account.id)
        response = RedirectResponse("/signin", status_code=303, headers=_NO_STORE)
        clear_session_cookie(response, view.request)
        return response

    # -- static files -------------------------------------------------------------------------------------------
    async def _static(self, request: Request) -> Response:
        found = self.static.get(request.path_params["name"])
        if found is None or request.method not in ("GET", "HEAD"):
            session = await self.sessions.of(request)
            view = View(request, self.ctx, session, self.nav(session))
            return self.error(view, 404, "Not found", "There is no such file.")
        pinned = request.query_params.get("v") == found.digest
        headers = {
            "Cache-Control": f"public, max-age={STATIC_CACHE_S}, immutable" if pinned else "public, max-age=3600",
            "ETag": f'"{found.digest}"',
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == f'"{found.digest}"':
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.content_type, headers=headers)


def _first(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def build_dashboard(ctx: DashboardContext) -> Dashboard:
    """The dashboard over the platform's services and the running gateway's parts."""
    settings = ctx.platform.settings
    service = SessionService(ctx.platform.store, ctx.platform.clock, settings.session_ttl_s)
    sessions = Sessions(service, lambda: ctx.parts.state.keys.value)
    pages = [
        *pages_catalogue.catalogue_pages(ctx),
        *pages_playground.playground_pages(ctx),
        *pages_account.PAGES,
        *pages_operator.PAGES,
    ]
    return Dashboard(ctx, pages, sessions)
