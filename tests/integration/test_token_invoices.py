"""Input and output tokens on invoices, end to end on SQLite and PostgreSQL: events of a model that prices input and
output tokens apart (``text-split``: 0.01 and 0.03 per 1,000 tokens) appended to the event log, metered and rated;
the row of each event keeps its output tokens and pipeline call; the invoice shows the input and output tokens of
a line at their prices (``billing.token_lines``), as a document, as JSON over ``/api/invoices/{id}``, as text and
as HTML; the ledger agrees; ``billing rebuild`` gives the same invoice.

Every expected number is worked out by hand in the comment beside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from economy_helpers import TOKENS, Economy, make_economy
from sqlalchemy import select
from starlette.testclient import TestClient

from modelmarket.adapters.store import SqlStore
from modelmarket.adapters.store import schema as t
from modelmarket.billing.html import render_invoice_html
from modelmarket.billing.lifecycle import InvoiceDoc
from modelmarket.billing.render import render_invoice_text
from modelmarket.gateway.api import ApiContext, build_router

pytestmark = pytest.mark.timeout(120)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "billing.md").read_text()
PIPELINE_CALL = "pc_0123456789abcdef"


def economy(store: SqlStore, tmp_path: Path, demo_dir: Path) -> Economy:
    return make_economy(store, tmp_path / "home", demo_dir, ["text-split"])


def chat(eco: Economy, consumer: str, tokens: int, out: int, day: str = "2026-01-03", **kw: Any) -> Any:
    """A call of ``text-split``: ``tokens`` in all, ``out`` of them output (the price stamped is the input one)."""
    return eco.event(consumer, "text-split", tokens, day, unit=TOKENS, price="0.01", quantity_out=out, **kw)


def the_line(doc: InvoiceDoc, model: str = "text-split") -> dict[str, Any]:
    """The JSON of the model's billed line (usage or overage)."""
    (line,) = [x for x in doc.to_json()["lines"] if x["model"] == model and x["type"] in ("usage", "overage")]
    return line


def token_lines(doc: InvoiceDoc) -> list[tuple[str, int, str, str, str, str]]:
    """(direction, events, IU, price per IU, exact amount, amount) of each token line of the text-split line."""
    return [
        (p["direction"], p["events"], p["quantity_iu"], p["price_per_iu"], p["amount_exact"], p["amount"])
        for p in the_line(doc).get("tokens", [])
    ]


def documented_token_lines() -> list[dict[str, Any]]:
    """The ``lines`` of the text-split example in docs/billing.md, section 12."""
    found = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOC, flags=re.DOTALL) if '"tokens"' in b]
    assert len(found) == 1, "docs/billing.md has one example of token lines"
    return list(found[0])


def test_input_and_output_tokens_on_the_invoice_the_ledger_and_a_rebuild(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir)
    eco.consumer("chatty")
    calls = [
        chat(eco, "chatty", 3000, 1000),  # 2,000 in x 0.01/1k + 1,000 out x 0.03/1k = 0.02 + 0.03
        replace(chat(eco, "chatty", 4000, 2000), pipeline_call_id=PIPELINE_CALL),  # 0.02 + 0.06
        chat(eco, "chatty", 1000, 0),  # all input: 0.01
        eco.event("chatty", "digits", 10, "2026-01-04"),  # a model without split prices: 10 x 0.0010 = 0.01
    ]
    eco.append(calls)
    eco.clock.set("2026-02-05T00:00:00")

    invoice = eco.invoice("chatty", "2026-01")
    assert token_lines(invoice) == [
        ("input", 3, "5", "0.01", "0.05", "0.05"),  # 2,000 + 2,000 + 1,000 input tokens
        ("output", 2, "3", "0.03", "0.09", "0.09"),  # 1,000 + 2,000 output tokens; the third call has none
    ]
    line = the_line(invoice)
    assert (line["type"], line["events"], line["quantity_iu"], line["amount"]) == ("usage", 3, "8", "0.14")
    assert [line] == documented_token_lines()  # the example of docs/billing.md, section 12, is this invoice's
    assert "tokens" not in the_line(invoice, "digits")  # other models' lines are as they always were
    assert str(invoice.total) == "0.15"  # 0.14 + 0.01
    assert sum(p.amount for p in invoice.lines[1].tokens) + invoice.lines[0].amount == invoice.total

    # The ledger: the consumer owes exactly what rating recorded, which the invoice's lines add up to.
    assert eco.receivable("chatty").exact == Fraction("0.15")
    assert sum((li.amount_exact for li in invoice.lines), Fraction(0)) == Fraction("0.15")
    assert eco.platform.ledger.verify().ok

    # Each event's row keeps its output tokens and pipeline call, and the rated rows read them back.
    with store.engine.connect() as conn:
        e = t.usage_events.c
        stored = dict(conn.execute(select(e.event_id, e.quantity_out)).all())
        pipelines = dict(conn.execute(select(e.event_id, e.pipeline_call_id)).all())
    assert (
        stored
        == {c.id: c.quantity_out for c in calls}
        == {calls[0].id: 1000, calls[1].id: 2000, calls[2].id: 0, calls[3].id: 0}
    )
    assert pipelines == {calls[0].id: None, calls[1].id: PIPELINE_CALL, calls[2].id: None, calls[3].id: None}
    with store.read() as uow:
        rated = {r.event_id: (r.version, r.quantity_out, r.pipeline_call_id) for r in uow.ledger.rated()}
    assert rated[calls[1].id] == ("1.0.0", 2000, PIPELINE_CALL)

    # A rebuild rates the log again, the output tokens at the output price: the same rows, the same invoice.
    report = eco.platform.ledger.rebuild()
    assert report.identical
    assert eco.invoice("chatty", "2026-01").to_json() == invoice.to_json()

    # Rows whose output tokens were lost (as rows written before they were kept) bill every token as input:
    # 8,000 x 0.01/1k = 0.08 (0.14 rated, 0.08 as the rows now say). A rebuild restores them from the log.
    assert eco.sql("UPDATE usage_events SET quantity_out = 0") == 4
    assert token_lines(eco.invoice("chatty", "2026-01")) == [("input", 3, "8", "0.01", "0.14", "0.14")]
    assert not eco.platform.ledger.rebuild().identical  # "repaired"
    assert eco.invoice("chatty", "2026-01").to_json() == invoice.to_json()
    assert eco.receivable("chatty").exact == Fraction("0.15")

    # The finalized invoice keeps its token lines.
    final = eco.platform.invoices.finalize(invoice.id)
    assert final.lines == invoice.lines
    assert eco.platform.invoices.invoice(invoice.id).lines == invoice.lines


def test_token_lines_over_http_as_text_and_as_html(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir)
    eco.consumer("chatty")
    # 1,500 input and 500 output tokens: 0.015 + 0.015 = 0.03. Each rounded alone (half to even) would be 0.02,
    # 0.04 in all: the line's 0.03 is shared, the cent left over to the first of the equal remainders.
    eco.append([chat(eco, "chatty", 2000, 500)])
    eco.clock.set("2026-02-05T00:00:00")
    invoice = eco.invoice("chatty", "2026-01")
    assert token_lines(invoice) == [
        ("input", 1, "1.5", "0.01", "0.015", "0.02"),
        ("output", 1, "0.5", "0.03", "0.015", "0.01"),
    ]
    assert str(invoice.total) == "0.03"

    account = eco.platform.accounts.get("chatty")

    async def authenticate(request: Any) -> Any:
        return account

    api = build_router(ApiContext(lambda: None, eco.platform.usage, eco.platform.invoices), authenticate)
    with TestClient(api) as client:
        answer = client.get(f"/api/invoices/{invoice.id}")
        assert answer.status_code == 200
        listed = client.get("/api/invoices", params={"period": "2026-01"}).json()["invoices"]
    (line,) = answer.json()["lines"]
    assert line["tokens"] == [
        {
            "direction": "input",
            "events": 1,
            "quantity_iu": "1.5",
            "price_per_iu": "0.01",
            "amount_exact": "0.015",
            "amount": "0.02",
        },
        {
            "direction": "output",
            "events": 1,
            "quantity_iu": "0.5",
            "price_per_iu": "0.03",
            "amount_exact": "0.015",
            "amount": "0.01",
        },
    ]
    assert [d["lines"] for d in listed] == [answer.json()["lines"]]

    text = render_invoice_text(invoice, "chatty").splitlines()
    rows = [row.split() for row in text[4:-2]]
    assert rows == [
        ["usage", "text-split:", "usage", "tokens_1k", "1", "2", "0.03"],
        ["input", "tokens", "at", "0.01", "per", "1k", "1", "1.5", "0.02"],
        ["output", "tokens", "at", "0.03", "per", "1k", "1", "0.5", "0.01"],
    ]
    assert len({len(row) for row in text[2:]}) == 1  # still aligned

    html = render_invoice_html(invoice, "chatty")
    assert '<tr class="tokens tokens-input"><td></td><td>input tokens at 0.01 per 1k</td>' in html
    assert '<td class="num">0.5</td><td class="num">0.01</td></tr>' in html


def test_a_call_without_output_tokens_bills_all_as_input(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir)
    eco.consumer("quiet")
    eco.append([chat(eco, "quiet", 2000, 0)])  # 2,000 input tokens x 0.01/1k = 0.02 (as output it would be 0.06)
    invoice = eco.invoice("quiet", "2026-01")
    assert token_lines(invoice) == [("input", 1, "2", "0.01", "0.02", "0.02")]
    assert eco.receivable("quiet").exact == Fraction("0.02")


def test_included_tokens_cover_input_first_and_a_plan_rate_has_no_token_lines(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir)
    eco.platform.plans.apply(
        """
plans:
- {name: tok, kind: subscription, currency: USD, fee: "1.00", included: {tokens_1k: 2}}
- {name: tok-rate, kind: subscription, currency: USD, fee: "1.00", overage: {tokens_1k: "0.02"}}
"""
    )
    eco.consumer("included", "tok")
    eco.consumer("rated", "tok-rate")
    for consumer in ("included", "rated"):
        eco.append([chat(eco, consumer, 3000, 1000)])

    # 2,000 tokens included (the first of the call: input); the 1,000 left are the output: 1 x 0.03.
    included = eco.invoice("included", "2026-01")
    assert [(li.type, str(li.quantity_iu), str(li.amount)) for li in included.lines] == [
        ("fee", "0", "1.00"),
        ("included", "2", "0.00"),
        ("overage", "1", "0.03"),
    ]
    assert token_lines(included) == [("output", 1, "1", "0.03", "0.03", "0.03")]

    # The plan's own overage rate prices every token alike: 3 x 0.02 = 0.06, and the line has no token lines.
    rated = eco.invoice("rated", "2026-01")
    assert [(li.type, str(li.quantity_iu), str(li.amount), li.tokens) for li in rated.lines] == [
        ("fee", "0", "1.00", ()),
        ("overage", "3", "0.06", ()),
    ]
    assert "tokens" not in the_line(rated)
