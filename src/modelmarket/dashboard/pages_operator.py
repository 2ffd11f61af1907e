"""The pages a consumer does not see: a provider's statements and payouts (an operator sees every provider's,
one or all at a time), and for operators the audit log (``pages_audit.py``) and the runners' health.

Figures are the platform's documents as they are: statements are ``LedgerService.applied_statements`` (the
statements of ``modelmarket statements``, as of the calls metered so far, each line rounded once, provider share
plus platform fee equal to gross), payouts ``LedgerService.recent_payouts``, the runners the gateway's
supervisor snapshot (what ``modelmarket runners`` prints) and the data plane's readiness. A page view reads a
bounded amount: sums per model and price, the newest payouts, a provider's own account.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from starlette.responses import HTMLResponse

from modelmarket.accounts import Account
from modelmarket.accounts.ports import Role
from modelmarket.billing.ledger import ProviderStatement
from modelmarket.billing.period import Period, parse_period
from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import decimal_text, exact_text, sum_exact
from modelmarket.dashboard import charts
from modelmarket.dashboard.pages_account import QUERY_VALUE_MAX_CHARS, query, signed_in, today
from modelmarket.dashboard.pages_audit import audit_page
from modelmarket.dashboard.web import Page, View
from modelmarket.metering.units import UnitKind

PAYOUTS_SHOWN_MAX = 500
"""Newest payouts listed (and totalled: the totals say so when there are more)."""
PROVIDERS_LISTED_MAX = 1000
"""Provider accounts offered in an operator's selector."""
MIB = 1024 * 1024

PROVIDER_AND_OPERATOR: frozenset[Role] = frozenset({"provider", "operator"})
OPERATOR: frozenset[Role] = frozenset({"operator"})


# -- whose statements ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose money a statements or payouts page shows: one provider (``provider_id``) or every one (None)."""

    provider_id: str | None
    names: dict[str, str]
    """Account id -> name, of the providers the page may name."""
    choices: list[Account]
    """The providers an operator may pick (empty for a provider)."""


async def _accounts(view: View) -> list[Account]:
    """The accounts an operator's selector and names need; none for a provider (its page names only itself)."""
    if signed_in(view).role != "operator":
        return []
    return await asyncio.to_thread(view.ctx.platform.accounts.list)


def _scope(view: View, accounts: list[Account]) -> Scope:
    viewer = signed_in(view)
    if viewer.role != "operator":
        return Scope(viewer.id, {viewer.id: viewer.name}, [])
    providers = sorted((a for a in accounts if a.role == "provider"), key=lambda a: a.name)[:PROVIDERS_LISTED_MAX]
    names = {a.id: a.name for a in accounts}
    wanted = query(view, "account")
    if wanted is None or wanted == "all":
        return Scope(None, names, providers)
    if wanted not in {a.id for a in providers}:
        raise InvalidInput(f"account: no provider account {wanted!r}; pick one from the list")
    return Scope(wanted, names, providers)


def echoed(view: View, name: str) -> str:
    """A query parameter as the selector shows it back (cut to its bound; ``query`` refuses it when longer)."""
    return (view.request.query_params.get(name) or "").strip()[:QUERY_VALUE_MAX_CHARS]


def _period(view: View) -> Period | None:
    raw = query(view, "period")
    return None if raw is None else parse_period(raw)


def _refused(
    view: View, template: str, accounts: list[Account], values: dict[str, Any], exc: InvalidInput
) -> HTMLResponse:
    """The page again with what was wrong in its selector (400), the selector still offered."""
    providers = sorted((a for a in accounts if a.role == "provider"), key=lambda a: a.name)
    choices = providers[:PROVIDERS_LISTED_MAX] if signed_in(view).role == "operator" else []
    values.update(error=exc.message, choices=choices, period=None)
    return view.render(template, status_code=400, **values)


# -- statements ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatementLine:
    model: str
    unit: str
    events: int
    iu: str
    gross: str
    provider_amount: str
    platform_fee: str


@dataclass(frozen=True, slots=True)
class StatementView:
    provider: str
    statement: ProviderStatement
    lines: tuple[StatementLine, ...]
    chart: charts.Chart


def statement_view(st: ProviderStatement, provider: str, n: int) -> StatementView:
    lines = tuple(
        StatementLine(
            line["model"],
            line["unit_kind"],
            line["events"],
            exact_text(UnitKind(line["unit_kind"]).iu(line["quantity_base"])),
            line["gross"],
            line["provider_amount"],
            line["platform_fee"],
        )
        for line in st.lines
    )
    share: dict[str, Decimal] = {}
    for line in st.lines:
        share[line["model"]] = sum_exact([share.get(line["model"], Decimal(0)), Decimal(line["provider_amount"])])
    ranked = sorted(share.items(), key=lambda kv: (-kv[1], kv[0]))
    title = f"Provider share per model ({st.currency}), {provider}"
    chart = charts.ranked_bars(f"statement-{n}", title, st.currency, ranked)
    return StatementView(provider, st, lines, chart)


async def statements_page(view: View) -> HTMLResponse:
    platform = view.ctx.platform
    accounts = await _accounts(view)
    values: dict[str, Any] = {"error": None, "statements": [], "decimal_text": decimal_text}
    current = Period.of(today(view))
    values.update(period_value=echoed(view, "period") or current.label, account_value=echoed(view, "account") or "all")
    try:
        scope, period = _scope(view, accounts), _period(view) or current
    except InvalidInput as exc:
        return _refused(view, "statements.html", accounts, values, exc)
    found = await asyncio.to_thread(platform.ledger.applied_statements, period, scope.provider_id)
    values.update(
        period=period,
        choices=scope.choices,
        statements=[
            statement_view(st, scope.names.get(st.provider_account_id, st.provider_account_id), n)
            for n, st in enumerate(found)
        ],
    )
    return view.render("statements.html", **values)


# -- payouts ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PayoutRow:
    id: str
    provider: str
    period: str
    currency: str
    amount: str
    seq: int
    created_at: str


async def payouts_page(view: View) -> HTMLResponse:
    platform = view.ctx.platform
    accounts = await _accounts(view)
    values: dict[str, Any] = {"error": None, "payouts": [], "totals": [], "more": 0}
    values.update(period_value=echoed(view, "period"), account_value=echoed(view, "account") or "all")
    try:
        scope, period = _scope(view, accounts), _period(view)
    except InvalidInput as exc:
        return _refused(view, "payouts.html", accounts, values, exc)
    shown, count = await asyncio.to_thread(platform.ledger.recent_payouts, scope.provider_id, period, PAYOUTS_SHOWN_MAX)
    totals = [
        (currency, decimal_text(sum_exact(p.amount for p in shown if p.currency == currency)))
        for currency in sorted({p.currency for p in shown})
    ]
    rows = [
        PayoutRow(
            p.id,
            scope.names.get(p.provider_account_id, p.provider_account_id),
            p.period,
            p.currency,
            decimal_text(p.amount),
            p.seq,
            p.created_at,
        )
        for p in shown
    ]
    values.update(choices=scope.choices, period=period, payouts=rows, totals=totals, more=count - len(shown))
    return view.render("payouts.html", **values)


# -- runners ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessRow:
    replica: int
    pid: str
    state: str
    outstanding: int
    rss: str
    restarts: int


@dataclass(frozen=True, slots=True)
class RunnerRow:
    model: str
    version: str
    runtime: str
    profile: str
    limits: str
    state: str
    health: str
    """``ok``, ``warn`` or ``bad``: the badge's colour."""
    replicas: str
    queue_depth: int
    calls: int
    restarts: int
    rss: str
    last_error: str
    processes: tuple[ProcessRow, ...]


def rss_text(value: Any) -> str:
    return "-" if value is None else f"{int(value) / MIB:.1f} MiB"


_LIMITS = {"memory_mb": ("memory", " MB"), "pids": ("pids", ""), "cpus": ("cpus", ""), "timeout_s": ("timeout", " s")}


def _limits_text(limits: Any) -> str:
    """The sandbox's limits in one line (``memory 512 MB, pids 64, cpus 1, timeout 30 s``)."""
    if not isinstance(limits, dict):
        return ""
    return ", ".join(f"{name} {limits[k]}{unit}" for k, (name, unit) in _LIMITS.items() if limits.get(k) is not None)


def runner_rows(snapshot: dict[str, Any]) -> list[RunnerRow]:
    """One row per version from the supervisor's snapshot (``Supervisor.snapshot``), with its processes."""
    out = []
    for r in snapshot.get("runners", []):
        procs = tuple(
            ProcessRow(
                int(p.get("replica", 0)),
                str(p.get("pid") or "-"),
                str(p.get("state", "")),
                int(p.get("outstanding", 0)),
                rss_text(p.get("rss_bytes")),
                int(p.get("restarts", 0)),
            )
            for p in r.get("processes", [])
        )
        state = str(r.get("state", ""))
        restarts = sum(p.restarts for p in procs)
        health = "ok" if state == "ready" and not restarts else "bad" if state == "failed" else "warn"
        if state in ("stopped", "not started"):
            health = "idle"
        rss = [p.get("rss_bytes") for p in r.get("processes", []) if p.get("rss_bytes") is not None]
        replicas = r.get("replicas", {})
        out.append(
            RunnerRow(
                str(r.get("model", "")),
                str(r.get("version", "")),
                str(r.get("runtime", "")),
                str(r.get("profile", "")),
                _limits_text(r.get("limits")),
                state,
                health,
                f"{replicas.get('running', 0)} ({replicas.get('min', 0)}-{replicas.get('max', 0)})",
                int(r.get("queue_depth", 0)),
                int(r.get("calls", 0)),
                restarts,
                rss_text(sum(rss)) if rss else "-",
                str(r.get("last_error") or ""),
                procs,
            )
        )
    return sorted(out, key=lambda row: (row.model, row.version))


async def runners_page(view: View) -> HTMLResponse:
    parts = view.ctx.parts
    readiness = parts.dataplane.ready()
    snapshot = getattr(parts.supervisor, "snapshot", None)
    rows = runner_rows(snapshot()) if callable(snapshot) else []
    return view.render("runners.html", readiness=readiness, runners=rows)


PAGES: list[Page] = [
    Page("/statements", statements_page, label="Statements", roles=PROVIDER_AND_OPERATOR),
    Page("/payouts", payouts_page, label="Payouts", roles=PROVIDER_AND_OPERATOR),
    Page("/audit", audit_page, label="Audit log", roles=OPERATOR, methods=("GET", "POST"), max_body_bytes=4096),
    Page("/runners", runners_page, label="Runners", roles=OPERATOR),
]
