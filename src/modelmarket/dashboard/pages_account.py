"""The signed-in account's own pages: its usage (charts per day and per model, and the table per model) and its
invoices. Every read is of the viewer's account only: an id of another account's invoice is not found.

The figures are the platform's own: usage is ``UsageService``'s exact per-day rows (summed per model exactly as
``GET /api/usage`` sums them), invoices are ``InvoiceService``'s documents with their rounded lines.
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


def newest_first(docs: Iterable[InvoiceDoc]) -> list[InvoiceDoc]:
    return sorted(docs, key=lambda d: (d.period, d.currency), reverse=True)[:INVOICES_SHOWN_MAX]


async def invoices_page(view: View) -> HTMLResponse:
    account = signed_in(view)
    docs = await asyncio.to_thread(view.ctx.platform.invoices.invoices, account.id)
    return view.render("invoices.html", invoices=newest_first(docs), decimal_text=decimal_text)


def _wanted_invoice(view: View) -> str:
    wanted = str(view.request.path_params.get("invoice_id", ""))
    if not 0 < len(wanted) <= INVOICE_ID_MAX_CHARS or not re.fullmatch(r"[A-Za-z0-9_-]+", wanted):
        raise NotFound(f"no invoice {wanted[:40]!r}")
    return wanted


async def invoice_page(view: View) -> HTMLResponse:
    account = signed_in(view)
    wanted = _wanted_invoice(view)
    doc = await asyncio.to_thread(view.ctx.platform.invoices.invoice, wanted, account.id)  # another's: NotFound
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
    wanted = _wanted_invoice(view)
    doc = await asyncio.to_thread(view.ctx.platform.invoices.invoice, wanted, account.id)
    document = render_invoice_html(doc, account.name)
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": printable_csp(document)}
    return HTMLResponse(document, headers=headers)


PAGES: list[Page] = [
    Page("/usage", usage_page, label="Usage"),
    Page("/invoices", invoices_page, label="Invoices"),
    Page("/invoices/{invoice_id}", invoice_page),
    Page("/invoices/{invoice_id}/print", invoice_print_page),
]
