"""``modelmarket lineage``: where a version comes from, or which calls an invoice's lines bill."""

from __future__ import annotations

from typing import Any

import click

from modelmarket.cli.common import domain_errors, echo_json, json_option, platform
from modelmarket.core.errors import InvalidInput
from modelmarket.governance.lineage import DEFAULT_LIMIT_PER_LINE, MAX_LIMIT_PER_LINE, LineageService


@click.command("lineage")
@click.argument("ref", required=False)
@click.option("--invoice", "invoice_id", metavar="ID", help="Show invoice ID's lines with the calls they bill.")
@click.option(
    "--limit",
    type=click.IntRange(0, MAX_LIMIT_PER_LINE),
    default=DEFAULT_LIMIT_PER_LINE,
    show_default=True,
    help="With --invoice: most calls listed per line (the count, times and amounts always cover them all).",
)
@json_option
@domain_errors
def lineage(ref: str | None, invoice_id: str | None, limit: int, as_json: bool) -> None:
    """Show the lineage of version REF (NAME@VERSION): its artifacts with their sha256, the datasets and parent
    models it declares, the publish gate's stages and the audit records about it. With --invoice ID: each line of
    the invoice with the usage events it bills (each event id is the x-request-id of its call)."""
    if (ref is None) == (invoice_id is None):
        raise InvalidInput("give either NAME@VERSION or --invoice ID")
    p = platform()
    service = LineageService(p.store)
    if invoice_id is not None:
        p.metering.catch_up()  # a draft is computed from the events as they stand: bring them up to date first
        doc = service.invoice_lineage(invoice_id, limit).to_json()
        render = render_invoice
    else:
        doc = service.version_lineage(ref or "").to_json()
        render = render_version
    if as_json:
        echo_json(doc)
    else:
        click.echo(render(doc))


def _tree(items: list[tuple[str, list[str]]]) -> list[str]:
    """Rows drawn as a tree: each (text, children) under the previous level, the last one closed with a corner."""
    out: list[str] = []
    for i, (text, children) in enumerate(items):
        last = i == len(items) - 1
        out.append(("└─ " if last else "├─ ") + text)
        pad = "   " if last else "│  "
        out.extend(pad + child for child in children)
    return out


def _leaves(rows: list[str]) -> list[str]:
    return _tree([(row, []) for row in rows])


def render_version(doc: dict[str, Any]) -> str:
    v = doc["version"]
    lines = [f"{doc['ref']}  digest {v['digest']}", f"  id {v['id']}, published {v['created_at']} by {v['provider']}"]
    artifacts = [f"{a['path']}  sha256 {a['sha256']}  {a['size_bytes']:,} bytes" for a in doc["artifacts"]]
    datasets = []
    for d in doc["datasets"]:
        where = d.get("path") or d.get("uri")
        children = []
        if d["source"] == "package" and d["sha256"] is None:
            children = _leaves([f"{f['path']}  sha256 {f['sha256']}" for f in d["files"]])
        check = ""
        if "matches_declared" in d:
            check = (
                "  (matches the declared sha256)" if d["matches_declared"] else "  (DIFFERS from the declared sha256)"
            )
        shown = (
            f"sha256 {d['sha256']}"
            if d["sha256"]
            else "a folder:"
            if d["source"] == "package"
            else "sha256 not declared"
        )
        datasets.append((f"{d['name']} ({d['role']}, {d['source']}) {where}  {shown}{check}", children))
    parents = [
        f"{x['ref']}  digest {x['digest']}" if x["published"] else f"{x['ref']}  (not published here)"
        for x in doc["parents"]
    ]
    gate = doc["gate"]
    if gate is None:
        stages = ["(published without the publish gate)"]
    else:
        stages = [f"submission {gate['submission_id']}: {gate['status']}"]
        stages += [f"{s['stage']}: {s['status']}  {s['summary']}" for s in gate["stages"]]
    audit = [f"#{a['seq']} {a['occurred_at']} {a['action']} by {a['actor']} ({a['subject']})" for a in doc["audit"]]
    if doc["audit_total"] > len(doc["audit"]):
        audit.append(f"... {doc['audit_total'] - len(doc['audit'])} more")
    sections = [
        (f"artifacts ({len(artifacts)})", _leaves(artifacts)),
        (f"datasets ({len(datasets)})", _tree(datasets)),
        (f"parents ({len(parents)})", _leaves(parents)),
        ("publish gate", _leaves(stages)),
        (f"audit ({doc['audit_total']})", _leaves(audit)),
    ]
    return "\n".join(lines + _tree(sections))


def render_invoice(doc: dict[str, Any]) -> str:
    inv = doc["invoice"]
    head = (
        f"invoice {inv['id']}  account {inv['account_id']}  {inv['period']}  {inv['status']}  "
        f"total {inv['total']} {inv['currency']}  ({inv['events']} events)"
    )
    items: list[tuple[str, list[str]]] = []
    for line in doc["lines"]:
        text = f"[{line['index']}] {line['type']}: {line['description']}  {line['amount']} {inv['currency']}"
        ev = line["billed_events"]
        if ev is None:
            items.append((text + "  (no usage events)", []))
            continue
        if ev["billed_on_line"] is not None:
            sums = f"their amounts ({ev['amount_exact']}) billed on line [{ev['billed_on_line']}]"
        else:
            sums = f"their amounts sum to {ev['amount_exact']}"
        count = f"{ev['count']} event" + ("" if ev["count"] == 1 else "s")
        summary = f"{count} {ev['first_at']} .. {ev['last_at']}, {sums}"
        calls = [_call_text(c) for c in ev["calls"]]
        if ev["truncated"]:
            calls.append(f"... {ev['count'] - ev['listed']} more (--limit)")
        items.append((text, [summary, *_leaves(calls)]))
    return "\n".join([head, *_tree(items)])


def _call_text(c: dict[str, Any]) -> str:
    included = f" ({c['granted_iu']} included)" if c["granted_iu"] != "0" else ""
    pipeline = f"  pipeline call {c['pipeline_call_id']}" if c["pipeline_call_id"] else ""
    return (
        f"{c['request_id']}  {c['model']}  {c['occurred_at']}  {c['quantity_iu']} IU{included}  "
        f"amount {c['amount_exact']}  {c['latency_ms']} ms{pipeline}"
    )
