"""The dashboard's seams: a page is a path, a nav label, the roles that may open it and an async handler of a
:class:`View`; templates are Jinja2 with autoescaping, from this package's ``templates/``.

``dashboard/app.py`` owns the router, the sessions (sign-in with an API key into an HttpOnly, SameSite=Strict
cookie), CSRF and the static files; page modules only declare :class:`Page` lists and render templates.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from modelmarket.accounts import Account
from modelmarket.accounts.ports import Role

if TYPE_CHECKING:
    from modelmarket.bootstrap import Platform
    from modelmarket.gateway.app import GatewayParts

ALL_ROLES: frozenset[Role] = frozenset({"consumer", "provider", "operator"})


@dataclass
class DashboardContext:
    """What pages read: the platform's services and the running gateway's parts (catalogue snapshot, data plane
    for the playground's calls, supervisor for the runners page)."""

    platform: Platform
    parts: GatewayParts


@dataclass(frozen=True)
class Session:
    id: str
    """The session's id (the cookie holds a secret whose SHA-256 is the stored id; never the API key)."""
    account: Account
    key_id: str
    """The API key the session was signed in with: its calls (the playground's) are made as that key."""
    csrf_token: str
    expires_at: str


@dataclass
class View:
    request: Request
    ctx: DashboardContext
    session: Session | None
    nav: list[tuple[str, str]] = field(default_factory=list)
    """(path, label) of the pages this viewer may open, for the navigation bar."""

    @property
    def account(self) -> Account | None:
        return None if self.session is None else self.session.account

    @property
    def is_htmx(self) -> bool:
        """Whether htmx asked (``HX-Request``): answer with the partial it swaps in, not the whole page (a restore
        of the browser's history asks for the whole page)."""
        headers = self.request.headers
        return headers.get("hx-request") == "true" and headers.get("hx-history-restore-request") != "true"

    def render(self, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        body = TEMPLATES.get_template(template).render(
            view=self,
            account=self.account,
            csrf_token=None if self.session is None else self.session.csrf_token,
            nav=self.nav,
            path=self.request.url.path,
            **values,
        )
        return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


Handler = Callable[[View], Awaitable[Any]]


@dataclass(frozen=True)
class Page:
    path: str
    """A Starlette path (``/models/{name}``)."""
    handler: Handler
    label: str | None = None
    """The navigation label; None: not in the navigation bar (a detail page)."""
    roles: frozenset[Role] | None = ALL_ROLES
    """Who may open it once signed in; None: public (no sign-in needed)."""
    methods: tuple[str, ...] = ("GET",)
    """A POST is CSRF-checked by ``dashboard/app.py`` before its handler runs."""
    max_body_bytes: int = 64 * 1024
    """Largest request body a POST to it may send (its form, read by ``dashboard/app.py``); more: 413."""


SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
"""Every dashboard page: no inline script or style, no framing, nothing cached (pages show account data)."""

STATIC_PACKAGE = ("modelmarket.dashboard", "static")
"""Where the dashboard's assets are: ``static/`` of this package (htmx under ``static/vendor/``)."""


@functools.cache
def static_url(name: str) -> str:
    """The URL of asset ``name`` (``dashboard.css``), with a digest of its bytes so it may be cached for long."""
    source = resources.files(STATIC_PACKAGE[0]).joinpath(STATIC_PACKAGE[1], *name.split("/"))
    if not source.is_file():
        return f"/static/{name}"
    return f"/static/{name}?v={hashlib.sha256(source.read_bytes()).hexdigest()[:16]}"


TEMPLATES = Environment(
    loader=PackageLoader("modelmarket.dashboard", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.globals["static_url"] = static_url
