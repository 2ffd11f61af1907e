"""A billed answer's usage event, proven: a real gateway answers a call, the caller fetches the proof of the event
its ``x-request-id`` names, and checks it offline with the key the CLI prints; another account cannot fetch it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
from tests.e2e.conftest import MM, Cli, start_gateway, stop_gateway

CALL = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": [3.0] * 128}]}


def test_a_billed_calls_event_is_proven_to_its_account_only(digits_cli: Cli, tmp_path: Path) -> None:
    cli = digits_cli
    alice, bob = cli.new_consumer("alice"), cli.new_consumer("bob")
    gw = start_gateway(cli, models=("digits",))
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            answer = http.post("/v2/models/digits/infer", json=CALL, headers={"Authorization": f"Bearer {alice}"})
            assert answer.status_code == 200, answer.text
            event_id = answer.headers["x-request-id"]
            path = f"/api/usage/events/{event_id}/proof"

            mine = http.get(path, headers={"Authorization": f"Bearer {alice}"})
            theirs = http.get(path, headers={"Authorization": f"Bearer {bob}"})
            unknown = http.get("/api/usage/events/req_unknown/proof", headers={"Authorization": f"Bearer {alice}"})
            anonymous = http.get(path)
    finally:
        stop_gateway(gw)

    assert mine.status_code == 200, mine.text
    proof = mine.json()
    leaf = json.loads(proof["leaf_data"])
    assert (leaf["event_id"], leaf["model"], leaf["quantity"], leaf["unit_kind"]) == (event_id, "digits", 2, "image")
    assert proof["tree"] == "usage" and proof["checkpoint"]["size"] >= 1
    assert (theirs.status_code, unknown.status_code) == (404, 404)
    assert theirs.json() == {"error": f"no usage event {event_id!r} (not applied yet, or unknown)"}
    assert anonymous.status_code == 401

    proof_file, key_file = tmp_path / "proof.json", tmp_path / "key.pem"
    proof_file.write_text(mine.text)
    key_file.write_text(cli.run("audit", "public-key").stdout)
    # Offline: another machine, with the public key only, and no store to reach.
    offline = {"PATH": "/usr/bin:/bin", "MODELMARKET_HOME": str(tmp_path / "elsewhere")}
    offline["MODELMARKET_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:9/none"
    checked = subprocess.run(
        [*MM, "audit", "check-proof", str(proof_file), "--public-key", str(key_file)],
        env=offline,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"valid: usage event {event_id} (digits@1.0.0")
    assert not (tmp_path / "elsewhere").exists()
