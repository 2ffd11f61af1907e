"""The signed-in account's own pages: its usage (charts per day and per model, and the table per model) and its
invoices. Every read is of the viewer's account only: an id of another account's invoice is not found.

The figures are the platform's own: usage is ``UsageService``'s exact per-day rows (summed per model exactly as
``GET /api/usage`` sums them), invoices are ``InvoiceService``'s documents with their rounded lines. A page view
only reads: one month's drafts are recomputed from the usage metered so far (never stored, no lock taken), the
other months' invoices are shown as stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from base64 import b64encode
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from fractions import Fraction
from typing import Any

from starlette.responses import HTMLResponse

from modelmarket.accounts import Account
from modelmarket.billing.html import render_invoice_html
from modelmarket.billing.lifecycle import InvoiceDoc
from modelmarket.billing.period import Period, parse_period
from modelmarket.billing.render import approx_text, token_line_text
from modelmarket.core.errors import InvalidInput, NotFound, Unauthenticated, ensure
from modelmarket.core.money import decimal_text, exact_text
from modelmarket.dashboard import charts
from modelmarket.dashboard.web import SECURITY_HEADERS, Page, View
from modelmarket.metering.ports import DailyUsage
from modelmarket.metering.usage import parse_day, summarize

QUERY_VALUE_MAX_CHARS = 64
"""Longest query parameter a page reads (a day, a month, an account id); a longer one is refused."""
USAGE_DAYS_MAX = charts.MAX_CATEGORIES
"""Longest usage period the page shows (one column a day)."""
INVOICES_SHOWN_MAX = 120
"""Newest invoices listed (ten years of one currency)."""
INVOICE_ID_MAX_CHARS = 64


def signed_in(view: View) -> Account:
    """The viewer's account (the router lets only signed-in viewers reach these pages)."""
    if view.account is None:
        raise Unauthenticated("sign in to see this page")
    return view.account


def query(view: View, name: str) -> str | None:
    """A query parameter, stripped, None when absent or empty; bounded in length."""
    value = view.request.query_params.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > QUERY_VALUE_MAX_CHARS:
        raise InvalidInput(f"{name}: at most {QUERY_VALUE_MAX_CHARS} characters")
    return value.strip()


def today(view: View) -> date:
    return view.ctx.platform.clock().astimezone(UTC).date()


# -- usage ---------------------------------------------------------------------------------------------------------


def month_start(day: date) -> date:
    return day.replace(day=1)


def usage_period(since: str | None, until: str | None, now: date) -> tuple[date, date]:
    """The days a usage page shows: ``since`` to ``until`` (both included); by default this month to today.
    At most ``USAGE_DAYS_MAX`` days, and ``since`` not after ``until``."""
    last = date.fromisoformat(parse_day(until, "until") or now.isoformat())
    first = date.fromisoformat(parse_day(since, "since") or month_start(min(now, last)).isoformat())
    if first > last:
        raise InvalidInput(f"since: {first} is after until {last}")
    if (last - first).days + 1 > USAGE_DAYS_MAX:
        raise InvalidInput(f"until: a period is at most {USAGE_DAYS_MAX} days ({first} to {last} is longer)")
    return first, last


def period_presets(now: date) -> list[tuple[str, date, date]]:
    """(label, since, until) of the periods offered as links."""
    previous_end = month_start(now) - timedelta(days=1)
    return [
        ("This month", month_start(now), now),
        ("Last month", month_start(previous_end), previous_end),
        ("Last 7 days", now - timedelta(days=6), now),
        ("Last 30 days", now - timedelta(days=29), now),
    ]


@dataclass(frozen=True, slots=True)
class UsageRow:
    model: str
    unit: str
    currency: str
    calls: int
    iu: str
    cost: str


@dataclass(frozen=True, slots=True)
class UsageTotal:
    currency: str
    calls: int
    iu: str
    cost: str


@dataclass(frozen=True, slots=True)
class UsageView:
    rows: tuple[UsageRow, ...]
    totals: tuple[UsageTotal, ...]
    charts: tuple[charts.Chart, ...]


def _days(first: date, last: date) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def usage_view(account_id: str, rows: Sequence[DailyUsage], first: date, last: date) -> UsageView:
    """The page's figures from the exact per-day rows: the table per model (``summarize``, as ``/api/usage``),
    totals per currency, IU per day stacked by model, and per currency the cost per day and per model."""
    summary = summarize(account_id, rows, first.isoformat(), last.isoformat())
    table = tuple(
        UsageRow(m.model, m.unit_kind.value, m.currency, m.events, exact_text(m.iu_exact), exact_text(m.amount_exact))
        for m in summary.models
    )
    totals = []
    for currency, amount in sorted(summary.totals_by_currency().items()):
        of = [m for m in summary.models if m.currency == currency]
        iu = sum((m.iu_exact for m in of), Fraction(0))
        totals.append(UsageTotal(currency, sum(m.events for m in of), exact_text(iu), exact_text(amount)))
    days = _days(first, last)
    models = sorted({r.model_name for r in rows})
    iu_per_day: dict[tuple[str, str], Fraction] = {}
    for r in rows:
        key = (r.day, r.model_name)
        iu_per_day[key] = iu_per_day.get(key, Fraction(0)) + r.unit_kind.iu(r.quantity_base)
    made = [charts.stacked_columns("usage-iu-day", "IU per day", "IU", days, models, iu_per_day, tick=_tick)]
    for n, currency in enumerate(sorted({r.currency for r in rows})):
        cost: dict[tuple[str, str], Fraction] = {}
        for r in rows:
            if r.currency == currency:
                key = (r.day, r.model_name)
                cost[key] = cost.get(key, Fraction(0)) + Fraction(r.amount_numerator) / r.unit_kind.divisor
        title = f"Cost per day ({currency})"
        made.append(charts.stacked_columns(f"usage-cost-day-{n}", title, currency, days, models, cost, tick=_tick))
        per_model: dict[str, Fraction] = {}
        for m in summary.models:
            if m.currency == currency:
                per_model[m.model] = per_model.get(m.model, Fraction(0)) + m.amount_exact
        ranked = sorted(per_model.items(), key=lambda kv: (-kv[1], kv[0]))
        made.append(charts.ranked_bars(f"usage-cost-model-{n}", f"Cost per model ({currency})", currency, ranked))
    return UsageView(table, tuple(totals), tuple(made))


def _tick(day: str) -> str:
    return day[5:]  # MM-DD


async def usage_page(view: View) -> HTMLResponse:
    account = signed_in(view)
    now = today(view)
    values: dict[str, Any] = {"presets": period_presets(now), "error": None, "usage": None}
    try:
        since_raw, until_raw = query(view, "since"), query(view, "until")
        values["since_value"], values["until_value"] = since_raw or "", until_raw or ""
        first, last = usage_period(since_raw, until_raw, now)
    except InvalidInput as exc:
        values.update(error=exc.message, since=None, until=None)
        values.setdefault("since_value", "")
        values.setdefault("until_value", "")
        return view.render("usage.html", status_code=400, **values)
    rows = await asyncio.to_thread(view.ctx.platform.usage.daily, account.id, first.isoformat(), last.isoformat())
    values.update(
        since=first,
        until=last,
        since_value=first.isoformat(),
        until_value=last.isoformat(),
        usage=usage_view(account.id, rows, first, last),
    )
    return view.render("usage.html", **values)


# -- invoices ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineRow:
    kind: str
    """``line`` or ``tokens`` (a line's input or output tokens, under it)."""
    type: str
    description: str
    model: str | None
    unit: str
    events: str
    quantity_iu: str
    amount: str


def invoice_lines(doc: InvoiceDoc) -> list[LineRow]:
    """The invoice's rows as the printable invoice shows them: each line, then its token lines."""
    out: list[LineRow] = []
    for line in doc.lines:
        out.append(
            LineRow(
                "line",
                line.type,
                line.description,
                line.model,
                line.unit_kind or "",
                str(line.events) if line.model else "",
                approx_text(line.quantity_iu) if line.model else "",
                decimal_text(line.amount),
            )
        )
        out.extend(
            LineRow(
                "tokens",
                "",
                token_line_text(part),
                None,
                "",
                str(part.events),
                approx_text(part.quantity_iu),
                decimal_text(part.amount),
            )
            for part in line.tokens
        )
    return out


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    doc: InvoiceDoc
    live: bool
    """A draft recomputed for this view (not stored); else the invoice as stored (a draft as last refreshed)."""
    href: str


def invoice_rows(
    live: Iterable[InvoiceDoc], stored: Iterable[InvoiceDoc], period: Period, current: Period
) -> list[InvoiceRow]:
    """``period``'s invoices as just recomputed, and the stored ones of every other period: newest first. A draft
    of a past month that is not stored is found by its page in the month its link names."""
    rows = []
    for doc in live:
        live_draft = doc.status == "draft"
        rows.append(
            InvoiceRow(doc, live_draft, _href(doc.id, doc.period if live_draft and period != current else None))
        )
    rows.extend(InvoiceRow(d, False, _href(d.id, None)) for d in stored if d.period != period.label)
    rows.sort(key=lambda r: (r.doc.period, r.doc.currency), reverse=True)
    return rows[:INVOICES_SHOWN_MAX]


def _href(invoice_id: str, period: str | None) -> str:
    return f"/invoices/{invoice_id}" + ("" if period is None else f"?period={period}")


def _invoices_read(view: View, account_id: str, period: Period) -> dict[str, Any]:
    """What the invoices page shows, read only (no draft is stored, no lock taken): ``period``'s invoices made
    from the usage metered so far, the stored invoices of the other periods, and the months with usage whose
    invoices were never stored (offered as links)."""
    service = view.ctx.platform.invoices
    live = service.preview(account_id, period)
    stored = service.stored_invoices(account_id, INVOICES_SHOWN_MAX)
    known = {d.period for d in stored} | {period.label}
    unstored = [p for p in reversed(service.billed_periods(account_id)) if p not in known]
    return {"live": live, "stored": stored, "unstored": unstored[:INVOICES_SHOWN_MAX]}


def _invoice_period(view: View, now: date) -> Period | None:
    """The ``period`` asked for (YYYY-MM), not after this month; None when absent."""
    raw = query(view, "period")
    if raw is None:
        return None
    period, current = parse_period(raw), Period.of(now)
    if period > current:
        raise InvalidInput(f"period: {period.label} has not started (it is {current.label} now)")
    return period


async def invoices_page(view: View) -> HTMLResponse:
    account = signed_in(view)
    now = today(view)
    current = Period.of(now)
    values: dict[str, Any] = {"decimal_text": decimal_text, "current": current, "rows": [], "unstored": []}
    try:
        period = _invoice_period(view, now) or current
    except InvalidInput as exc:
        return view.render("invoices.html", status_code=400, error=exc.message, period=None, **values)
    read = await asyncio.to_thread(_invoices_read, view, account.id, period)
    rows = invoice_rows(read["live"], read["stored"], period, current)
    values.update(rows=rows, unstored=read["unstored"])
    return view.render("invoices.html", error=None, period=period, **values)


def _wanted_invoice(view: View) -> str:
    wanted = str(view.request.path_params.get("invoice_id", ""))
    if not 0 < len(wanted) <= INVOICE_ID_MAX_CHARS or not re.fullmatch(r"[A-Za-z0-9_-]+", wanted):
        raise NotFound(f"no invoice {wanted[:40]!r}")
    return wanted


async def _read_invoice(view: View, account: Account) -> InvoiceDoc:
    """One of the viewer's invoices, read only: a draft recomputed from the usage metered so far; one not stored
    yet is looked for in the month ``?period=`` names (by default this month). Another's: NotFound."""
    wanted = _wanted_invoice(view)
    now = today(view)
    try:
        period = _invoice_period(view, now) or Period.of(now)
    except InvalidInput:
        raise NotFound(f"no invoice {wanted[:40]!r}") from None
    return await asyncio.to_thread(view.ctx.platform.invoices.read_invoice, wanted, account.id, [period])


async def invoice_page(view: View) -> HTMLResponse:
    account = signed_in(view)
    doc = await _read_invoice(view, account)  # another's: NotFound
    return view.render(
        "invoice.html",
        invoice=doc,
        lines=invoice_lines(doc),
        total=decimal_text(doc.total),
        credit=decimal_text(-doc.total) if doc.status == "void" else None,
    )


def printable_csp(document: str) -> str:
    """The dashboard's policy, but for the printable invoice's one inline stylesheet, allowed by its hash."""
    start, end = document.index("<style>") + len("<style>"), document.index("</style>")
    digest = b64encode(hashlib.sha256(document[start:end].encode()).digest()).decode()
    policy = SECURITY_HEADERS["Content-Security-Policy"]
    ensure("style-src 'self'" in policy, "the dashboard's policy no longer names style-src 'self'")
    return policy.replace("style-src 'self'", f"style-src 'sha256-{digest}'")


async def invoice_print_page(view: View) -> HTMLResponse:
    """The printable invoice (``billing/html.py``): a whole document with its own stylesheet, no script."""
    account = signed_in(view)
    doc = await _read_invoice(view, account)
    document = render_invoice_html(doc, account.name)
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": printable_csp(document)}
    return HTMLResponse(document, headers=headers)


PAGES: list[Page] = [
    Page("/usage", usage_page, label="Usage"),
    Page("/invoices", invoices_page, label="Invoices"),
    Page("/invoices/{invoice_id}", invoice_page),
    Page("/invoices/{invoice_id}/print", invoice_print_page),
]
