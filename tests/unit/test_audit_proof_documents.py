"""Checkpoints, proof documents and leaves (``audit/checkpoints.py``, ``proofs.py``, ``leaves.py``): pure, offline."""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelmarket.audit.checkpoints import (
    Checkpoint,
    CheckpointKey,
    checkpoint_body,
    key_id_of,
    load_public_key,
    public_key_pem,
)
from modelmarket.audit.leaves import USAGE_LEAF_FIELDS, UsageFacts, usage_leaf
from modelmarket.audit.merkle import consistency_path, inclusion_path, leaf_hash, root_of
from modelmarket.audit.proofs import Consistency, InclusionProof, check_proof, parse_checkpoint, parse_proof
from modelmarket.core.errors import InvalidInput, NotFound

SIGNED_AT = "2026-03-01T12:00:00.000000+00:00"


def facts(i: int, **changes: object) -> UsageFacts:
    base = {
        "event_id": f"req_{i:08d}",
        "account_id": "acc_alice",
        "model": "digits",
        "version": "1.0.0",
        "provider_account_id": "acc_bob",
        "unit_kind": "image",
        "quantity": 3,
        "quantity_out": 0,
        "unit_price": "0.0010",
        "amount_numerator": "0.0030",
        "divisor": 1,
        "currency": "USD",
        "occurred_at": "2026-03-01T11:59:59.123456+00:00",
        "log_offset": i + 1,
    }
    return UsageFacts(**(base | changes))  # type: ignore[arg-type]


def signed_proof(key: Ed25519PrivateKey, n: int = 11, index: int = 6) -> InclusionProof:
    data = [usage_leaf(facts(i)) for i in range(n)]
    hashes = [leaf_hash(d) for d in data]
    root = root_of(hashes)
    key_id = key_id_of(key.public_key())
    signature = key.sign(checkpoint_body("usage", n, root, SIGNED_AT))
    checkpoint = Checkpoint("usage", n, root, SIGNED_AT, key_id, signature)
    path = inclusion_path(index, n, lambda lo, hi: root_of(hashes[lo:hi]))
    return InclusionProof("usage", index, data[index], hashes[index], tuple(path), checkpoint)


def as_document(proof: InclusionProof) -> dict:  # type: ignore[type-arg]
    return orjson.loads(orjson.dumps(proof.to_json()))


def test_a_proof_round_trips_through_json_and_checks() -> None:
    key = Ed25519PrivateKey.generate()
    doc = as_document(signed_proof(key))
    assert doc["checkpoint"]["body"].split("\n")[:2] == ["modelmarket/usage", "11"]
    result = check_proof(parse_proof(orjson.dumps(doc)), key.public_key())
    assert result.ok and result.failed is None
    assert result.message.startswith("valid: usage event req_00000006 (digits@1.0.0")


def test_an_altered_event_fails_at_the_leaf_hash_or_the_path() -> None:
    key = Ed25519PrivateKey.generate()
    doc = as_document(signed_proof(key))
    altered = orjson.loads(doc["leaf_data"]) | {"quantity": 1}
    doc["leaf_data"] = rfc8785.dumps(altered).decode()
    assert check_proof(parse_proof(orjson.dumps(doc)), key.public_key()).failed == "leaf hash"
    doc["leaf_hash"] = leaf_hash(doc["leaf_data"].encode()).hex()  # the hash recomputed too: the path gives it away
    result = check_proof(parse_proof(orjson.dumps(doc)), key.public_key())
    assert result.failed == "path" and "another root" in result.message


def test_another_position_or_a_bad_path_fails_at_the_path() -> None:
    key = Ed25519PrivateKey.generate()
    doc = as_document(signed_proof(key))
    doc["leaf_index"] = 7
    assert check_proof(parse_proof(orjson.dumps(doc)), key.public_key()).failed == "path"
    doc = as_document(signed_proof(key))
    doc["audit_path"] = doc["audit_path"][:-1]
    assert check_proof(parse_proof(orjson.dumps(doc)), key.public_key()).failed == "path"


def test_a_forged_signature_fails() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    proof = signed_proof(key)
    by_other = check_proof(proof, other.public_key())
    assert by_other.failed == "signature" and "names key" in by_other.message

    doc = as_document(proof)
    sig = bytearray(base64.b64decode(doc["checkpoint"]["signature"]))
    sig[10] ^= 0x01
    doc["checkpoint"]["signature"] = base64.b64encode(bytes(sig)).decode()
    flipped = check_proof(parse_proof(orjson.dumps(doc)), key.public_key())
    assert flipped.failed == "signature" and "not signed by" in flipped.message

    # Re-signed by another key that claims the right key id: the signature does not verify with the right key.
    doc = as_document(proof)
    cp = proof.checkpoint
    doc["checkpoint"]["signature"] = base64.b64encode(other.sign(cp.body())).decode()
    assert check_proof(parse_proof(orjson.dumps(doc)), key.public_key()).failed == "signature"


def test_a_checkpoint_whose_size_or_root_was_changed_no_longer_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    doc = as_document(signed_proof(key))
    doc["checkpoint"]["size"] = 12
    doc["checkpoint"].pop("body")
    assert check_proof(parse_proof(orjson.dumps(doc)), key.public_key()).failed == "signature"
    doc = as_document(signed_proof(key))
    doc["checkpoint"]["size"] = 12  # the body no longer says what the fields say
    with pytest.raises(InvalidInput, match=r"proof.checkpoint.body does not match"):
        parse_proof(orjson.dumps(doc))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "x"}, "proof.format"),
        ({"tree": "ledger"}, "proof.tree"),
        ({"leaf_index": -1}, "proof.leaf_index"),
        ({"leaf_index": True}, "proof.leaf_index"),
        ({"leaf_hash": "zz"}, "proof.leaf_hash"),
        ({"audit_path": ["ab"]}, r"proof.audit_path\[0\]"),
        ({"audit_path": ["00" * 32] * 65}, "proof.audit_path must be"),
        ({"checkpoint": {"tree": "usage"}}, "proof.checkpoint.size"),
    ],
)
def test_a_malformed_proof_names_its_field(change: dict, message: str) -> None:  # type: ignore[type-arg]
    doc = as_document(signed_proof(Ed25519PrivateKey.generate())) | change
    with pytest.raises(InvalidInput, match=message):
        parse_proof(orjson.dumps(doc))


def test_an_oversized_or_non_json_proof_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not JSON"):
        parse_proof(b"{")
    with pytest.raises(InvalidInput, match="over"):
        parse_proof(b" " * (1024 * 1024 + 1))


def test_the_usage_leaf_is_rfc8785_canonical_json() -> None:
    tricky = 'é\u2028\u2029\x00\x1f\x7f"\\/\t\n\r\b\f' + "\U0001f600\ufb01" + "".join(map(chr, range(32)))
    f = facts(1, model=tricky, version="ü" * 3, account_id="\u00ff", log_offset=2**53 - 1)
    data = usage_leaf(f)
    doc = orjson.loads(data)
    assert list(doc) == list(USAGE_LEAF_FIELDS)
    assert data == rfc8785.dumps(doc)
    assert doc["list_amount"] == "0.003"


def test_an_audio_leaf_carries_its_exact_fractional_amount() -> None:
    f = facts(1, unit_kind="audio_minute", quantity=7, unit_price="0.06", amount_numerator="0.42", divisor=60)
    assert orjson.loads(usage_leaf(f))["list_amount"] == "0.007"  # a decimal whenever one is exact
    f = facts(1, unit_kind="audio_minute", quantity=7, unit_price="1", amount_numerator="7", divisor=60)
    assert orjson.loads(usage_leaf(f))["list_amount"] == "7/60"


def test_the_key_is_created_once_private_and_shared_between_instances(tmp_path: Path) -> None:
    keys = tmp_path / "home" / "keys"
    with pytest.raises(NotFound, match="no checkpoint key"):
        CheckpointKey(keys).public_key(create=False)
    assert not keys.exists()  # reading never creates
    first = CheckpointKey(keys)
    signature = first.sign(b"body")
    again = CheckpointKey(keys)
    again.public_key(create=False).verify(signature, b"body")
    assert first.key_id == again.key_id == key_id_of(again.public_key())
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "audit-checkpoints.ed25519.pem").stat().st_mode) == 0o600
    assert [p.name for p in keys.iterdir()] == ["audit-checkpoints.ed25519.pem"]  # no temporary file left


def _checkpoint_of(key: Ed25519PrivateKey, hashes: list[bytes]) -> Checkpoint:
    root, n = root_of(hashes), len(hashes)
    return Checkpoint(
        "usage", n, root, SIGNED_AT, key_id_of(key.public_key()), key.sign(checkpoint_body("usage", n, root, SIGNED_AT))
    )


def test_a_proof_since_an_older_checkpoint_shows_the_log_was_only_appended_to() -> None:
    key = Ed25519PrivateKey.generate()
    proof = signed_proof(key, n=13)
    hashes = [leaf_hash(usage_leaf(facts(i))) for i in range(13)]
    old = _checkpoint_of(key, hashes[:5])
    path = consistency_path(5, 13, lambda lo, hi: root_of(hashes[lo:hi]))
    with_since = replace(proof, consistency=Consistency(old, tuple(path)))
    doc = as_document(with_since)
    assert doc["consistency"]["old_checkpoint"]["size"] == 5
    kept = parse_checkpoint(orjson.dumps(old.to_json()))  # what the consumer kept: a checkpoint, or a proof
    assert kept == old == parse_checkpoint(orjson.dumps(doc | {"checkpoint": old.to_json(), "consistency": None}))
    result = check_proof(parse_proof(orjson.dumps(doc)), key.public_key(), since=kept)
    assert result.ok and result.message.endswith("; it extends the checkpoint size 5, signed at " + SIGNED_AT)
    assert check_proof(parse_proof(orjson.dumps(doc)), key.public_key()).ok  # the one it carries, checked too

    no_consistency = check_proof(proof, key.public_key(), since=old)
    assert no_consistency.failed == "consistency" and "carries no consistency proof" in no_consistency.message
    rewritten = _checkpoint_of(key, [hashes[0], leaf_hash(b"forged"), *hashes[2:5]])
    forged = check_proof(replace(proof, consistency=Consistency(rewritten, tuple(path))), key.public_key(), rewritten)
    assert forged.failed == "consistency" and "does not extend" in forged.message
    bigger = _checkpoint_of(key, [*hashes, leaf_hash(b"cut")])
    shrank = check_proof(proof, key.public_key(), since=bigger)
    assert shrank.failed == "consistency" and "the tree shrank from 14 to 13 leaves" in shrank.message
    other = Ed25519PrivateKey.generate()
    assert "is not signed by" in check_proof(proof, key.public_key(), since=_checkpoint_of(other, hashes[:5])).message
    same_size = _checkpoint_of(key, [*hashes[:12], leaf_hash(b"other")])
    assert "two roots for the same 13 leaves" in check_proof(proof, key.public_key(), since=same_size).message


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = CheckpointKey(tmp_path)
    key.sign(b"x")
    os.chmod(key.path, 0o644)
    with pytest.raises(InvalidInput, match="readable by other users"):
        CheckpointKey(tmp_path).sign(b"x")


def test_a_key_reached_through_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    elsewhere = CheckpointKey(tmp_path / "elsewhere")
    elsewhere.sign(b"x")
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / "audit-checkpoints.ed25519.pem").symlink_to(elsewhere.path)
    with pytest.raises(InvalidInput, match="is a symbolic link"):
        CheckpointKey(keys).sign(b"x")
    assert os.path.islink(keys / "audit-checkpoints.ed25519.pem")  # refused, not replaced by a new key


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    key = CheckpointKey(tmp_path)
    key.sign(b"x")
    os.chown(key.path, 4242, 4242)
    with pytest.raises(InvalidInput, match="is owned by uid 4242, not by this user"):
        CheckpointKey(tmp_path).sign(b"x")


def _signed(key: CheckpointKey, tree: str = "audit", size: int = 3) -> Checkpoint:
    root = bytes(range(32))
    return Checkpoint(tree, size, root, SIGNED_AT, key.key_id, key.sign(checkpoint_body(tree, size, root, SIGNED_AT)))


def test_the_latest_checkpoint_is_kept_private_and_read_back(tmp_path: Path) -> None:
    key = CheckpointKey(tmp_path / "keys")
    assert key.kept("audit") is None
    checkpoint = _signed(key)
    key.keep(checkpoint)
    assert key.kept("audit") == checkpoint and key.kept("usage") is None
    path = key.kept_path("audit")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["format"] == "modelmarket-checkpoint/1"
    key.keep(_signed(key, size=4))
    assert key.kept("audit").size == 4  # type: ignore[union-attr]
    assert sorted(p.name for p in key.keys_dir.iterdir()) == [
        "audit-checkpoints.ed25519.pem",
        "latest-checkpoint.audit.json",
    ]  # no temporary file left


def test_a_kept_checkpoint_is_written_over_a_symbolic_link_never_through_it(tmp_path: Path) -> None:
    key = CheckpointKey(tmp_path / "keys")
    target = tmp_path / "target.txt"
    target.write_text("untouched")
    key.keys_dir.mkdir(mode=0o700)
    key.kept_path("audit").symlink_to(target)
    with pytest.raises(InvalidInput, match="is a symbolic link"):
        key.kept("audit")
    key.keep(_signed(key))
    assert target.read_text() == "untouched"
    assert not key.kept_path("audit").is_symlink() and key.kept("audit") is not None


def test_a_kept_checkpoint_that_is_not_one_is_refused(tmp_path: Path) -> None:
    key = CheckpointKey(tmp_path / "keys")
    key.keep(_signed(key, tree="usage"))
    os.replace(key.kept_path("usage"), key.kept_path("audit"))
    with pytest.raises(InvalidInput, match="holds a checkpoint of the usage tree, not of the audit tree"):
        key.kept("audit")
    os.chmod(key.kept_path("audit"), 0o644)
    with pytest.raises(InvalidInput, match="readable by other users"):
        key.kept("audit")


def test_the_printed_public_key_is_read_back() -> None:
    key = Ed25519PrivateKey.generate()
    pem = public_key_pem(key.public_key())
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert key_id_of(load_public_key(pem.encode())) == key_id_of(key.public_key())
    with pytest.raises(InvalidInput, match="not a PEM public key"):
        load_public_key(b"nope")
    rsa_like = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidInput, match="not a PEM public key"):
        load_public_key(rsa_like)


def _documented_checker() -> dict:  # type: ignore[type-arg]
    """The Python checker of docs/audit-proofs.md, run as written."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "audit-proofs.md").read_text()
    code = text.split("```python\n", 1)[1].split("```\n", 1)[0]
    namespace: dict = {}  # type: ignore[type-arg]
    exec(compile(code, "docs/audit-proofs.md", "exec"), namespace)
    return namespace


def test_the_documented_checker_agrees_with_check_proof(tmp_path: Path) -> None:
    check = _documented_checker()["check"]
    key = Ed25519PrivateKey.generate()
    (tmp_path / "key.pem").write_text(public_key_pem(key.public_key()))
    for n, index in ((1, 0), (11, 6), (11, 10), (64, 63)):
        proof = signed_proof(key, n, index)
        (tmp_path / "proof.json").write_text(orjson.dumps(proof.to_json()).decode())
        assert check(str(tmp_path / "proof.json"), str(tmp_path / "key.pem"))["event_id"] == f"req_{index:08d}"
    doc = as_document(signed_proof(key))
    doc["leaf_index"] = 7
    (tmp_path / "proof.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="path"):
        check(str(tmp_path / "proof.json"), str(tmp_path / "key.pem"))
