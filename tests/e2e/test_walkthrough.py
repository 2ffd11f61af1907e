"""A provider publishes, a consumer calls, usage and the invoice come out right: the CLI and HTTP as a user."""

from __future__ import annotations

import json
import shutil
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import httpx
import yaml
from tests.e2e.conftest import COLD_START_S, Gateway, billing_period_for_test


def _repackage(src: Path, dest: Path, **changes: object) -> Path:
    shutil.copytree(src, dest)
    manifest = yaml.safe_load((dest / "modelmarket.yaml").read_text())
    for key, value in changes.items():
        if key == "price":
            manifest["pricing"]["price_per_iu"] = value
        else:
            manifest[key] = value
    (dest / "modelmarket.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dest


def test_publish_call_meter_invoice(gateway: Gateway, tmp_path: Path) -> None:
    period = billing_period_for_test()  # every call below falls in this month
    cli = gateway.cli
    cli.run("accounts", "create", "acme", "--role", "provider")
    package = _repackage(
        cli.home / "demo" / "digits",
        tmp_path / "acme-digits",
        name="acme-digits",
        provider="acme",
        price="0.0125",
    )
    out = cli.run("publish", str(package)).stdout
    assert out.startswith("published: acme-digits 1.0.0")
    again = cli.run("publish", str(package)).stdout
    assert again.startswith("already published (unchanged)")

    key = cli.new_consumer("walker")
    pixels = json.loads((cli.home / "demo" / "examples" / "digit.json").read_text())["inputs"][0]["data"]
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": [pixels, pixels]}]}
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=COLD_START_S) as http:
        for _ in range(5):
            r = http.post("/v2/models/acme-digits/infer", json=body)
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["model_name"] == "acme-digits" and doc["model_version"] == "1.0.0"
            labels = next(o for o in doc["outputs"] if o["name"] == "label")
            assert labels["shape"] == [2] and labels["data"][0] == labels["data"][1]
            assert r.headers["x-request-id"].startswith("req_")
        usage = http.get("/api/usage").json()

    # 5 calls x 2 images = 10 IU at 0.0125 = 0.1250 (exact), billed once per line: 0.12 (half-even).
    assert usage["total_events"] == 5
    assert Decimal(usage["total_iu"]) == 10
    assert Decimal(usage["total_amount"]) == Decimal("0.1250")
    assert [m["model"] for m in usage["models"]] == ["acme-digits"]
    assert usage["models"][0]["unit_kind"] == "image"

    cli_usage = cli.json("usage", "walker")
    assert cli_usage["total_events"] == 5
    invoice = cli.json("invoice", "walker", "--period", period)["invoices"]
    assert len(invoice) == 1 and invoice[0]["currency"] == "USD"
    expected = (Decimal("0.0125") * 10).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    assert Decimal(invoice[0]["total"]) == expected == Decimal("0.12")
    [line] = invoice[0]["lines"]
    assert (line["type"], line["model"], line["unit_kind"], line["events"]) == ("usage", "acme-digits", "image", 5)
    assert (line["quantity_iu"], line["amount_exact"], line["amount"]) == ("10", "0.125", "0.12")
    assert invoice[0]["status"] == "draft"

    text = cli.run("invoice", "walker", "--period", period).stdout
    assert "acme-digits" in text and "0.12" in text

    statement = cli.json("statement", "acme", "--period", period)["statements"]
    assert len(statement) == 1
    st = statement[0]
    assert Decimal(st["provider_amount"]) + Decimal(st["platform_fee"]) == Decimal(st["gross"]) == Decimal("0.12")
    assert Decimal(st["provider_amount"]) == Decimal("0.10")  # 80% of 0.1250, rounded once

    versions = cli.json("models", "versions", "acme-digits")
    assert [v["version"] for v in versions] == ["1.0.0"] and versions[0]["aliases"] == ["latest"]
    assert cli.run("audit", "verify").stdout.startswith("OK")
