"""13. Privacy under attack: policies naming entities that do not exist, text built to make redaction slow or huge,
one account reaching for another's key policy, and calls that must leave nothing behind when nobody opted in.

A platform of its own (not the shared `market`): the text echo model of ``tests/e2e/test_privacy.py`` with
``redact: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD]``, and the same model without it, behind a gateway whose
redaction bounds are small enough to reach in seconds (``REDACT_MAX_CHARS``, ``REDACT_TIMEOUT_S``).
"""

from __future__ import annotations

import json
import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.e2e.conftest import EnvCli, Gateway, start_gateway, stop_gateway
from tests.e2e.test_privacy import CARD, EMAIL, MESSAGE, PHONE, REDACT, REDACTED, SECRETS, echo_text_package
from tests.hostile.conftest import Consumer, new_consumer
from tests.sandbox_packages import PROVIDER

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.registry.manifest import MANIFEST_NAME
from modelmarket.settings import Settings

REDACT_MAX_CHARS = 300_000
REDACT_TIMEOUT_S = 1.0
CACHE_REFRESH_S = 0.5
WITHIN_S = 30
DENSE = f"call {PHONE} or pay with {CARD}; "
"""Text made of nothing but matches: the costliest text there is to redact (the phone matcher parses each number
in each of its regions)."""


@dataclass
class P13:
    cli: EnvCli
    gateway: Gateway
    admin: Platform

    def call(self, model: str, who: Consumer, text: str, timeout_s: float = 60) -> httpx.Response:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        return httpx.post(f"{self.gateway.url}/v2/models/{model}/infer", json=body, headers=who.auth, timeout=timeout_s)

    def echo(self, model: str, who: Consumer, text: str = MESSAGE) -> str:
        r = self.call(model, who, text)
        assert r.status_code == 200, r.text
        return str(r.json()["outputs"][0]["data"][0])

    def events(self, who: Consumer) -> int:
        r = httpx.get(f"{self.gateway.url}/api/usage", headers=who.auth, timeout=30)
        assert r.status_code == 200, r.text
        return int(r.json()["total_events"])


@pytest.fixture(scope="module")
def p13(tmp_path_factory: pytest.TempPathFactory) -> Iterator[P13]:
    base = tmp_path_factory.mktemp("hostile-c13")
    env = {
        "MODELMARKET_CACHE_REFRESH_S": str(CACHE_REFRESH_S),
        "MODELMARKET_REDACT_MAX_CHARS": str(REDACT_MAX_CHARS),
        "MODELMARKET_REDACT_TIMEOUT_S": str(REDACT_TIMEOUT_S),
    }
    cli = EnvCli(base / "home", extra_env=env)
    admin = bootstrap(Settings(home=cli.home, database_url=None))
    gateway: Gateway | None = None
    try:
        admin.accounts.create(PROVIDER, "provider", actor="hostile-tests")
        admin.registry.publish(echo_text_package(base, "py-echo-text", REDACT), actor="hostile-tests")
        admin.registry.publish(echo_text_package(base, "py-echo-plain", None), actor="hostile-tests")
        gateway = start_gateway(cli, models=("py-echo-text", "py-echo-plain"))
        yield P13(cli, gateway, admin)
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        admin.close()


def _audited(admin: Platform, action_prefix: str) -> list[dict[str, Any]]:
    return [r.to_json() for r in admin.audit.list(limit=1000) if r.action.startswith(action_prefix)]


# -- unknown entities ------------------------------------------------------------------------------------------------


def test_a_key_policy_naming_unknown_entities_is_refused_naming_them(p13: P13) -> None:
    who = new_consumer(p13.admin, "c13-unknown")
    before = _audited(p13.admin, "privacy.")
    proc = p13.cli.run("privacy", "key", who.key_id, "--redact", "EMAIL_ADDRESS,PASSWORD,NAME", check=False)
    assert proc.returncode == 1
    assert "'PASSWORD'" in proc.stderr and "'NAME'" in proc.stderr and "EMAIL_ADDRESS" in proc.stderr
    with pytest.raises(InvalidInput, match="'email_address'"):  # names are exact: no case folding
        p13.admin.privacy.set_key_policy(who.key_id, ["email_address"])
    with pytest.raises(InvalidInput, match="at least one entity"):
        p13.admin.privacy.set_key_policy(who.key_id, [])
    assert p13.admin.privacy.key_policies(who.name) == []
    assert _audited(p13.admin, "privacy.") == before  # nothing changed, nothing audited


def test_a_manifest_naming_unknown_entities_is_refused_naming_them(p13: P13, tmp_path: Path) -> None:
    folder = echo_text_package(tmp_path, "py-echo-bad", ["EMAIL_ADDRESS", "SOCIAL_SECURITY"])
    with pytest.raises(InvalidInput, match="SOCIAL_SECURITY"):
        p13.admin.registry.publish(folder, actor="hostile-tests")
    manifest = yaml.safe_load((folder / MANIFEST_NAME).read_text())
    manifest["redact"] = ["URL", "URL"]
    (folder / MANIFEST_NAME).write_text(yaml.safe_dump(manifest))
    with pytest.raises(InvalidInput, match="'URL' is listed twice"):
        p13.admin.registry.publish(folder, actor="hostile-tests")
    assert "py-echo-bad" not in p13.admin.registry.catalogue().names()


# -- bounds --------------------------------------------------------------------------------------------------------


def test_text_dense_with_matches_is_refused_within_the_time_bound_and_never_reaches_the_model(p13: P13) -> None:
    who = new_consumer(p13.admin, "c13-dense")
    text = (DENSE * (REDACT_MAX_CHARS // len(DENSE)))[:REDACT_MAX_CHARS]
    started = time.monotonic()
    r = p13.call("py-echo-text", who, text)
    elapsed = time.monotonic() - started
    assert r.status_code == 400, r.text[:300]
    assert "longer than allowed" in r.json()["error"]
    assert PHONE not in r.text and CARD not in r.text  # the refusal quotes none of it
    assert elapsed < REDACT_TIMEOUT_S + 5, f"refused after {elapsed:.1f} s"
    assert p13.echo("py-echo-text", who) == REDACTED  # still serving, and the refused call was not billed
    assert p13.events(who) == 1


def test_more_text_than_the_bound_is_refused_before_any_work(p13: P13) -> None:
    who = new_consumer(p13.admin, "c13-large")
    started = time.monotonic()
    r = p13.call("py-echo-text", who, "a" * (REDACT_MAX_CHARS + 1))
    assert r.status_code == 413, r.text[:300]
    assert "MODELMARKET_REDACT_MAX_CHARS" in r.json()["error"]
    assert time.monotonic() - started < 5
    many = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [4], "data": ["b" * 80_000] * 4}]}
    r = httpx.post(f"{p13.gateway.url}/v2/models/py-echo-text/infer", json=many, headers=who.auth, timeout=60)
    assert r.status_code == 413, "the bound is on the call's text in all, not per element"
    assert p13.events(who) == 0


def test_a_long_text_with_many_matches_within_the_bounds_is_redacted_whole(p13: P13) -> None:
    who = new_consumer(p13.admin, "c13-many")
    count = 40
    text = " ".join(f"user{i}@example.com {DENSE}" for i in range(count))
    answer = p13.echo("py-echo-text", who, text)
    assert answer.count("<EMAIL_ADDRESS>") == count
    assert answer.count("<PHONE_NUMBER>") == count and answer.count("<CREDIT_CARD>") == count
    assert "@example.com" not in answer and "555-0187" not in answer and "1111" not in answer


def test_text_in_another_encoding_is_refused_and_look_alike_characters_hide_nothing(p13: P13) -> None:
    who = new_consumer(p13.admin, "c13-encodings")
    for element in (f"José, {EMAIL}".encode("latin-1"), MESSAGE.encode("utf-16-le")):
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "text",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4 + len(element)},
                    }
                ]
            }
        ).encode()
        r = httpx.post(
            f"{p13.gateway.url}/v2/models/py-echo-text/infer",
            content=head + struct.pack("<I", len(element)) + element,
            headers={
                **who.auth,
                "Inference-Header-Content-Length": str(len(head)),
                "Content-Type": "application/octet-stream",
            },
            timeout=60,
        )
        assert r.status_code == 400, r.text[:300]
        assert "input 'text' element 0" in r.json()["error"] and "UTF-8" in r.json()["error"]
        assert "jane" not in r.text
    sneaky = "Grüße, jane.doe\uff20example.com; 4111.1111.1111.1111 or \uff14\uff11\uff11\uff11 1111\u00a01111_1111"
    assert p13.echo("py-echo-text", who, sneaky) == "Grüße, <EMAIL_ADDRESS>; <CREDIT_CARD> or <CREDIT_CARD>"
    assert p13.events(who) == 1  # the refused calls were not billed


# -- one account, another's key --------------------------------------------------------------------------------------


def test_an_account_cannot_set_or_clear_the_policy_of_another_accounts_key(p13: P13) -> None:
    mallory, victim = new_consumer(p13.admin, "c13-mallory"), new_consumer(p13.admin, "c13-victim")
    p13.admin.privacy.set_key_policy(victim.key_id, ["EMAIL_ADDRESS"], account=victim.name, actor=victim.name)
    proc = p13.cli.run("privacy", "key", victim.key_id, "--redact", "URL", "--account", mallory.name, check=False)
    assert proc.returncode == 1 and f"no API key with id {victim.key_id!r} of account" in proc.stderr
    with pytest.raises(NotFound):
        p13.admin.privacy.clear_key_policy(victim.key_id, account=mallory.name, actor=mallory.name)
    with pytest.raises(NotFound):
        p13.admin.privacy.key_policies("c13-nobody")
    assert [p.entities for p in p13.admin.privacy.key_policies(victim.name)] == [("EMAIL_ADDRESS",)]
    assert p13.admin.privacy.key_policies(mallory.name) == []
    # the victim's policy is the one in force, and only on the victim's key
    expected = MESSAGE.replace(EMAIL, "<EMAIL_ADDRESS>")
    deadline = time.monotonic() + WITHIN_S
    while p13.echo("py-echo-plain", victim) != expected:
        assert time.monotonic() < deadline, "the victim's policy never took effect"
        time.sleep(0.2)
    assert p13.echo("py-echo-plain", mallory) == MESSAGE


def test_a_revoked_or_unknown_key_gets_no_policy(p13: P13) -> None:
    who = new_consumer(p13.admin, "c13-revoked")
    p13.admin.accounts.revoke_key(who.key_id, actor="hostile-tests")
    with pytest.raises(InvalidInput, match="revoked"):
        p13.admin.privacy.set_key_policy(who.key_id, ["URL"])
    with pytest.raises(NotFound, match="key_doesnotexist"):
        p13.admin.privacy.set_key_policy("key_doesnotexist", ["URL"])


# -- capture ---------------------------------------------------------------------------------------------------------


def test_capture_is_off_by_default_and_nothing_of_a_call_is_stored(p13: P13) -> None:
    who = new_consumer(p13.admin, "c13-default")
    assert p13.echo("py-echo-plain", who) == MESSAGE  # no policy at all: the model sees the text as sent
    assert p13.echo("py-echo-text", who) == REDACTED
    time.sleep(3 * CACHE_REFRESH_S)
    assert p13.admin.privacy.captured(who.name) == []
    assert who.name not in p13.admin.privacy.capturing()
    with sqlite3.connect(p13.cli.home / "modelmarket.db") as db:
        stored = db.execute("SELECT count(*) FROM captured_calls WHERE account_id = ?", (who.account_id,))
        assert stored.fetchone() == (0,)
    out = json.loads(p13.cli.run("privacy", "captured", who.name, "--json").stdout)
    assert out == []


def test_opting_out_deletes_what_was_kept(p13: P13) -> None:
    who = new_consumer(p13.admin, "c13-optout")
    p13.admin.privacy.set_capture(who.name, True, actor=who.name)
    deadline = time.monotonic() + WITHIN_S
    while not p13.admin.privacy.captured(who.name):
        assert time.monotonic() < deadline, "no call was kept for an account that opted in"
        p13.echo("py-echo-plain", who)
        time.sleep(0.2)
    kept = p13.admin.privacy.captured(who.name)[0]
    assert not [s for s in SECRETS if s in kept.input_text or s in kept.output_text]
    assert p13.admin.privacy.set_capture(who.name, False, actor=who.name)
    assert p13.admin.privacy.captured(who.name) == []
    off = _audited(p13.admin, "privacy.capture_off")
    assert off and off[-1]["payload"]["deleted_calls"] >= 1 and off[-1]["subject"] == who.name
