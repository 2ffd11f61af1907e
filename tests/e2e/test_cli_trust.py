"""The CLI as a user meets it: audit tampering is caught, bad packages are refused and nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from tests.e2e.conftest import Cli

from engines import blob_files, store_dump, store_execute, store_rows


@pytest.fixture()
def fresh_cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def _audit_count(cli: Cli) -> int:
    return int(store_rows(cli.home, "SELECT COUNT(*) FROM audit_log")[0][0])


def test_editing_one_audit_record_is_detected_and_named(fresh_cli: Cli) -> None:
    cli = fresh_cli
    cli.run("accounts", "create", "alice", "--role", "consumer")
    cli.run("accounts", "create", "bob", "--role", "provider")
    cli.run("keys", "create", "alice")
    ok = cli.run("audit", "verify")
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 3 audit record(s)")
    actions = [r["action"] for r in cli.json("audit", "list")]
    assert actions == ["account.created", "account.created", "key.created"]

    store_execute(cli.home, "UPDATE audit_log SET subject = 'mallory' WHERE seq = 2")
    broken = cli.run("audit", "verify", check=False)
    assert broken.returncode == 1
    assert "seq 2" in broken.stderr and "mallory" in broken.stderr
    as_json = cli.run("audit", "verify", "--json", check=False)
    assert as_json.returncode == 1
    assert '"first_broken_seq": 2' in as_json.stdout


def test_audit_never_records_key_secrets(fresh_cli: Cli) -> None:
    cli = fresh_cli
    cli.run("accounts", "create", "carol")
    secret = cli.json("keys", "create", "carol")["key"]
    dump = store_dump(cli.home)
    assert secret not in dump  # only the hash is stored, and the audit names the key by id and prefix


def _package(cli: Cli, demo_dir: Path, tmp_path: Path, mutate: object) -> Path:
    cli.run("accounts", "create", "demo-provider", "--role", "provider")
    dest = tmp_path / "pkg"
    shutil.copytree(demo_dir / "digits", dest)
    manifest = yaml.safe_load((dest / "modelmarket.yaml").read_text())
    manifest["name"] = "digits-fork"
    assert callable(mutate)
    mutate(manifest, dest)
    (dest / "modelmarket.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dest


def _bad_price(m: dict, d: Path) -> None:
    m["pricing"]["price_per_iu"] = "cheap"


def _bad_version(m: dict, d: Path) -> None:
    m["version"] = "1.0"


def _bad_dtype(m: dict, d: Path) -> None:
    m["inputs"][0]["datatype"] = "FLOAT"


def _missing_artifact(m: dict, d: Path) -> None:
    (d / "model.onnx").unlink()


def _unknown_field(m: dict, d: Path) -> None:
    m["colour"] = "blue"


@pytest.mark.parametrize(
    ("mutate", "names"),
    [
        (_bad_price, "pricing.price_per_iu"),
        (_bad_version, "version"),
        (_bad_dtype, "inputs[0].datatype"),
        (_missing_artifact, "artifacts[0].path"),
        (_unknown_field, "colour: unknown field"),
    ],
)
def test_bad_package_is_refused_naming_the_field_and_nothing_is_written(
    fresh_cli: Cli, demo_dir: Path, tmp_path: Path, mutate: object, names: str
) -> None:
    cli = fresh_cli
    package = _package(cli, demo_dir, tmp_path, mutate)
    before_models = cli.json("models", "list")
    before_audit = _audit_count(cli)
    blobs_before = blob_files(cli.home)
    assert before_audit == 1  # the provider account
    result = cli.run("publish", str(package), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and names in result.stderr
    assert "Traceback" not in result.stderr
    assert cli.json("models", "list") == before_models
    assert _audit_count(cli) == before_audit
    assert blob_files(cli.home) == blobs_before


def test_republishing_a_version_with_different_bytes_is_refused(fresh_cli: Cli, demo_dir: Path, tmp_path: Path) -> None:
    cli = fresh_cli
    package = _package(cli, demo_dir, tmp_path, lambda m, d: None)
    assert cli.run("publish", str(package)).stdout.startswith("published: digits-fork 1.0.0")
    with open(package / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    refused = cli.run("publish", str(package), check=False)
    assert refused.returncode == 1 and "already published with different content" in refused.stderr
    versions = cli.json("models", "versions", "digits-fork")
    assert len(versions) == 1


def test_every_command_has_help(fresh_cli: Cli) -> None:
    top = fresh_cli.run("--help").stdout
    for command in (
        "publish",
        "models",
        "accounts",
        "keys",
        "usage",
        "invoice",
        "statement",
        "audit",
        "serve",
        "demo",
        "runner",
    ):
        assert command in top
        assert fresh_cli.run(command, "--help").returncode == 0
    for group, subs in {
        "models": ("list", "show", "versions", "alias"),
        "accounts": ("create", "list"),
        "keys": ("create",),
        "audit": ("verify", "list"),
    }.items():
        for sub in subs:
            assert "Usage:" in fresh_cli.run(group, sub, "--help").stdout
