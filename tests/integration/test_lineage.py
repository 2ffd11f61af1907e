"""Lineage (``governance.lineage``, ``modelmarket lineage``) on SQLite and PostgreSQL: a version back to its files'
hashes, declared datasets, parent models, gate stages and audit records; an invoice's lines back to the usage
events (the calls' request ids) they bill, exactly."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from economy_helpers import Economy, copy_package, make_economy

from modelmarket.adapters.store import SqlStore
from modelmarket.cli.main import cli
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.governance.lineage import LineageService
from modelmarket.governance.model import StageRecord, Submission
from modelmarket.metering.events import UsageEvent
from modelmarket.registry.manifest import MANIFEST_NAME

EXTERNAL_SHA = "ab" * 32


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _child_package(eco: Economy, demo_dir: Path, tmp_path: Path) -> Path:
    """``digits-child``: a copy of digits with a data folder, declared datasets and two parents."""
    pkg = copy_package(demo_dir, "digits", tmp_path / "packages", "digits-child", {})
    (pkg / "data").mkdir()
    (pkg / "data" / "train.csv").write_text("x,label\n1,0\n2,1\n", encoding="utf-8")
    (pkg / "data" / "eval.csv").write_text("x,label\n3,1\n", encoding="utf-8")
    path = pkg / MANIFEST_NAME
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["artifacts"].append({"path": "data"})
    doc["lineage"] = {
        "datasets": [
            {"name": "train", "path": "data/train.csv"},
            {"name": "all-data", "role": "evaluation", "path": "data"},
            {"name": "mnist", "uri": "https://example.org/mnist.tar.gz", "sha256": EXTERNAL_SHA},
            {"name": "scraped", "role": "other", "uri": "https://example.org/scraped"},
        ],
        "parents": ["digits@1.0.0", "ghost@2.0.0"],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return pkg


def test_version_lineage_gives_files_datasets_parents_gate_and_audit(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = make_economy(store, tmp_path, demo_dir)
    platform = eco.platform
    pkg = _child_package(eco, demo_dir, tmp_path)
    child = platform.registry.publish(pkg).version
    parent = platform.registry.publish(demo_dir / "digits").version  # already published: the stored version
    service = LineageService(platform.store)

    lin = service.version_lineage("digits-child@1.0.0").to_json()
    assert lin["version"] == {
        "id": child.id,
        "model": "digits-child",
        "version": "1.0.0",
        "digest": child.digest,
        "created_at": child.created_at,
        "provider": "demo-provider",
        "provider_account_id": eco.providers["demo-provider"],
    }
    files = sorted(p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    assert sorted(a["path"] for a in lin["artifacts"]) == files
    for a in lin["artifacts"]:  # each hash is the hash of the package's file, each size its size
        assert (a["sha256"], a["size_bytes"]) == (_sha256(pkg / a["path"]), (pkg / a["path"]).stat().st_size)

    train, folder, mnist, scraped = lin["datasets"]
    assert train == {
        "name": "train",
        "role": "training",
        "description": None,
        "source": "package",
        "path": "data/train.csv",
        "sha256": _sha256(pkg / "data" / "train.csv"),
        "size_bytes": (pkg / "data" / "train.csv").stat().st_size,
    }
    assert folder["sha256"] is None  # a folder: its files, each with its hash
    assert {f["path"]: f["sha256"] for f in folder["files"]} == {
        "data/eval.csv": _sha256(pkg / "data" / "eval.csv"),
        "data/train.csv": _sha256(pkg / "data" / "train.csv"),
    }
    assert (mnist["source"], mnist["uri"], mnist["sha256"]) == (
        "external",
        "https://example.org/mnist.tar.gz",
        EXTERNAL_SHA,
    )
    assert scraped["sha256"] == "not declared"

    assert lin["parents"] == [
        {
            "ref": "digits@1.0.0",
            "published": True,
            "version_id": parent.id,
            "digest": parent.digest,
            "created_at": parent.created_at,
        },
        {"ref": "ghost@2.0.0", "published": False, "note": "not published here"},
    ]
    assert lin["gate"] is None  # published directly, without the gate
    actions = [(a["action"], a["subject"]) for a in lin["audit"]]
    assert actions == [("model.published", "digits-child@1.0.0"), ("alias.moved", "digits-child@latest")]
    assert lin["audit_total"] == 2
    assert [a["seq"] for a in lin["audit"]] == sorted(a["seq"] for a in lin["audit"])

    # a submission of it (as the gate records one): its stages are shown, and audit records about the submission
    stages = (
        StageRecord("validate", "passed", "2026-01-01T00:00:00+00:00", 3, "manifest valid"),
        StageRecord("scan", "passed", "2026-01-01T00:00:01+00:00", 9, "4 files, all allowed"),
        StageRecord("review", "approved", "2026-01-01T00:00:02+00:00", 0, "approved by ops"),
    )
    sub = Submission(
        "sub_lineage1",
        "digits-child",
        "1.0.0",
        child.digest,
        eco.providers["demo-provider"],
        "cli",
        "published",
        "{}",
        "[]",
        "2026-01-01T00:00:00+00:00",
        "2026-01-01T00:00:03+00:00",
        decided_by="ops",
        version_id=child.id,
        stages=stages,
    )
    with platform.store.write() as uow:
        uow.gate.add(sub)
    gate = service.version_lineage("digits-child@latest").to_json()["gate"]  # an alias names the same version
    assert gate == {
        "submission_id": "sub_lineage1",
        "status": "published",
        "decided_by": "ops",
        "stages": [
            {"stage": "validate", "status": "passed", "summary": "manifest valid"},
            {"stage": "scan", "status": "passed", "summary": "4 files, all allowed"},
            {"stage": "review", "status": "approved", "summary": "approved by ops"},
        ],
    }

    # the CLI: the same document as JSON; a tree in text
    runner = CliRunner()
    result = runner.invoke(cli, ["lineage", "digits-child@1.0.0", "--json"], obj={"platform": platform})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == service.version_lineage("digits-child@1.0.0").to_json()
    text = runner.invoke(cli, ["lineage", "digits-child@1.0.0"], obj={"platform": platform})
    assert text.exit_code == 0, text.output
    assert f"digest {child.digest}" in text.output
    assert f"digits@1.0.0  digest {parent.digest}" in text.output
    assert "ghost@2.0.0  (not published here)" in text.output
    assert _sha256(pkg / "data" / "train.csv") in text.output
    assert "scan: passed  4 files, all allowed" in text.output


def test_unknown_refs_and_invoices_are_clear_errors(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = make_economy(store, tmp_path, demo_dir)
    service = LineageService(eco.platform.store)
    with pytest.raises(NotFound, match="model 'nosuch' is not published here"):
        service.version_lineage("nosuch@1.0.0")
    with pytest.raises(NotFound, match=r"model 'digits' has no version or alias '9\.9\.9'"):
        service.version_lineage("digits@9.9.9")
    with pytest.raises(InvalidInput, match="must be NAME@VERSION"):
        service.version_lineage("digits")
    with pytest.raises(NotFound, match="no invoice 'inv_nope'"):
        service.invoice_lineage("inv_nope")
    with pytest.raises(InvalidInput, match="limit: calls listed per line must be 0-10,000"):
        service.invoice_lineage("inv_nope", limit_per_line=10_001)

    runner, obj = CliRunner(), {"platform": eco.platform}
    for args, message in (
        (["lineage", "nosuch@1.0.0"], "Error: model 'nosuch' is not published here"),
        (["lineage", "digits@9.9.9", "--json"], "Error: model 'digits' has no version or alias '9.9.9'"),
        (["lineage", "--invoice", "inv_nope"], "Error: no invoice 'inv_nope'"),
        (["lineage"], "Error: give either NAME@VERSION or --invoice ID"),
        (["lineage", "digits@1.0.0", "--invoice", "inv_x"], "Error: give either NAME@VERSION or --invoice ID"),
    ):
        result = runner.invoke(cli, args, obj=obj)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, (args, result.output)


# -- invoices ----------------------------------------------------------------------------------------------------


def _lines_by_type(lin: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {(line["type"] + ":" + (line["model"] or "")): line for line in lin["lines"]}


def _check_events_make_lines(lin: dict[str, Any]) -> None:
    """Every usage line: its count is the line's events, and its events' amounts sum to its amount (an
    included line's amounts are the overage line's it names)."""
    for line in lin["lines"]:
        ev = line["billed_events"]
        if line["model"] is None:
            assert ev is None
            continue
        assert ev["count"] == line["events"]
        if ev["truncated"]:
            continue
        assert len(ev["ids"]) == ev["count"] == len(set(ev["ids"]))
        amounts = sum(Fraction(c["amount_exact"]) for c in ev["calls"])
        assert Fraction(ev["amount_exact"]) == amounts
        if line["type"] in ("included", "granted"):
            assert Fraction(line["amount_exact"]) == 0
            if ev["billed_on_line"] is None:  # wholly included: nothing to bill
                assert amounts == 0
            else:
                billed = lin["lines"][ev["billed_on_line"]]
                assert Fraction(billed["amount_exact"]) == amounts and billed["events"] == ev["count"]
        else:
            assert Fraction(line["amount_exact"]) == amounts


def _pipeline_step(event: UsageEvent, call_id: str) -> UsageEvent:
    return replace(event, pipeline_call_id=call_id)


def test_invoice_lineage_gives_each_line_exactly_its_events(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = make_economy(store, tmp_path, demo_dir, ["digits-b"])
    eco.consumer("lin", "pro-plus")  # fee 50.00, 10,000 images included, overage 0.0008
    eco.consumer("other")
    jan = [
        eco.event("lin", "digits", 4000, "2026-01-03"),
        eco.event("lin", "digits", 5000, "2026-01-09"),
        _pipeline_step(eco.event("lin", "digits", 3000, "2026-01-20", hour=8), "pcall-1"),
    ]
    jan_b = [eco.event("lin", "digits-b", 7, "2026-01-04"), eco.event("lin", "digits-b", 9, "2026-01-21")]
    noise = [eco.event("other", "digits", 50, "2026-01-05")]  # another account's: never on lin's invoice
    eco.append([*jan, *jan_b, *noise])
    draft = eco.invoice("lin", "2026-01")
    service = LineageService(eco.platform.store)

    lin = service.invoice_lineage(draft.id).to_json()  # a draft: computed from the events as they stand
    assert lin["invoice"]["status"] == "draft"
    assert lin["invoice"]["total"] == str(draft.total)
    assert [(x["type"], x["model"], x["amount"]) for x in lin["lines"]] == [
        (line.type, line.model, str(line.amount)) for line in draft.lines
    ]

    eco.clock.set("2026-02-05T00:00:00")
    final = eco.platform.invoices.finalize(draft.id)
    late = eco.event("lin", "digits", 500, "2026-01-25")  # January, read after January was finalized
    feb = [eco.event("lin", "digits", 200, "2026-02-02"), eco.event("lin", "digits", 300, "2026-02-03")]
    eco.append([late, *feb])

    lin = service.invoice_lineage(final.id).to_json()
    assert lin["invoice"] == {
        "id": final.id,
        "account_id": eco.accounts["lin"],
        "period": "2026-01",
        "currency": "USD",
        "status": "finalized",
        "total": str(final.total),
        "events": 5,
        "finalized_at": final.finalized_at,
    }
    assert [x["type"] for x in lin["lines"]] == [line.type for line in final.lines]
    by_type = _lines_by_type(lin)
    assert by_type["fee:"]["billed_events"] is None
    # one event may be partly included and partly overage: both lines hold all of the model's events
    assert by_type["included:digits"]["billed_events"]["ids"] == [e.id for e in jan]
    assert by_type["overage:digits"]["billed_events"]["ids"] == [e.id for e in jan]
    assert by_type["included:digits"]["billed_events"]["billed_on_line"] == by_type["overage:digits"]["index"]
    b_lines = [x for x in lin["lines"] if x["model"] == "digits-b"]
    assert sorted(i for x in b_lines for i in x["billed_events"]["ids"]) == sorted({e.id for e in jan_b})
    _check_events_make_lines(lin)
    overage = by_type["overage:digits"]["billed_events"]
    assert (overage["first_at"], overage["last_at"]) == (jan[0].time.isoformat(), jan[2].time.isoformat())
    calls = {c["request_id"]: c for c in overage["calls"]}
    assert calls[jan[2].id] == {
        "request_id": jan[2].id,
        "model": "digits@1.0.0",
        "occurred_at": "2026-01-20T08:00:00+00:00",
        "quantity_iu": "3000",
        "granted_iu": "1000",  # 4,000 + 5,000 + 1,000 of it included
        "amount_exact": calls[jan[2].id]["amount_exact"],
        "latency_ms": "3.5",
        "pipeline_call_id": "pcall-1",
    }
    assert Fraction(calls[jan[2].id]["amount_exact"]) == Fraction("1.6")  # 2,000 x 0.0008
    assert calls[jan[0].id]["pipeline_call_id"] is None

    # February: the late January event is an adjustment line, with exactly that event
    feb_doc = eco.invoice("lin", "2026-02")
    feb_lin = service.invoice_lineage(feb_doc.id).to_json()
    feb_by_type = _lines_by_type(feb_lin)
    assert feb_by_type["adjustment:digits"]["billed_events"]["ids"] == [late.id]
    assert feb_by_type["included:digits"]["billed_events"]["ids"] == [e.id for e in feb]
    assert feb_lin["invoice"]["events"] == 3
    _check_events_make_lines(feb_lin)

    # bounded: at most --limit calls listed per line, the count, times and amount still over all of them
    short = service.invoice_lineage(final.id, limit_per_line=2).to_json()
    ev = _lines_by_type(short)["overage:digits"]["billed_events"]
    assert (ev["count"], ev["listed"], ev["truncated"], ev["ids"]) == (3, 2, True, [jan[0].id, jan[1].id])
    assert ev["amount_exact"] == overage["amount_exact"] and ev["last_at"] == overage["last_at"]

    # void: the frozen lines still find their events
    eco.platform.invoices.void(final.id, "lineage test")
    voided = service.invoice_lineage(final.id).to_json()
    assert voided["invoice"]["status"] == "void"
    assert voided["lines"] == lin["lines"]

    # the CLI: the same document as JSON; a tree in text, with --limit
    runner, obj = CliRunner(), {"platform": eco.platform}
    result = runner.invoke(cli, ["lineage", "--invoice", feb_doc.id, "--json"], obj=obj)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == service.invoice_lineage(feb_doc.id).to_json()
    result = runner.invoke(cli, ["lineage", "--invoice", final.id, "--json", "--limit", "2"], obj=obj)
    assert json.loads(result.output)["lines"] == short["lines"]
    text = runner.invoke(cli, ["lineage", "--invoice", final.id, "--limit", "1"], obj=obj)
    assert text.exit_code == 0, text.output
    assert f"invoice {final.id}" in text.output and "void" in text.output
    assert jan[0].id in text.output and jan[1].id not in text.output
    assert "... 2 more (--limit)" in text.output
