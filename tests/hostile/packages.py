"""Hostile model packages: copies of the demo `digits` package bent to read the platform's files, or with
manifests that mean something large or surprising. Each must be refused by `modelmarket publish`."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MODEL = "hostile"
"""Every hostile package publishes a version of this model; its only published version is the baseline 1.0.0."""
BASELINE_VERSION = "1.0.0"
PRICE_LINE = "price_per_iu: '0.0010'"


@dataclass(frozen=True)
class Where:
    """What a builder may point at: the package folder, a folder outside it, and the platform's home."""

    package: Path
    outside: Path
    home: Path


@dataclass(frozen=True)
class PublishCase:
    name: str
    prepare: Callable[[Where], None]
    words: tuple[str, ...]
    """The refusal (stderr of `modelmarket publish`) must contain each of these."""
    version: str | None = None
    """None: a fresh version 2.0.<index>; else this version."""


def read_manifest(package: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((package / "modelmarket.yaml").read_text())
    return doc


def write_manifest(package: Path, doc: dict[str, Any]) -> None:
    (package / "modelmarket.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def edit_manifest(package: Path, **fields: Any) -> None:
    doc = read_manifest(package)
    doc.update(fields)
    write_manifest(package, doc)


def replace_in_manifest(package: Path, old: str, new: str) -> None:
    path = package / "modelmarket.yaml"
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def prepare_copy(digits: Path, package: Path, version: str) -> None:
    """``package`` as a copy of the digits package, renamed to MODEL at ``version``, written in block style."""
    shutil.copytree(digits, package)
    edit_manifest(package, name=MODEL, version=version)


# -- the cases -----------------------------------------------------------------------------------------------------


def _artifact_symlink(target: Callable[[Where], Path]) -> Callable[[Where], None]:
    def prepare(w: Where) -> None:
        (w.package / "model.onnx").unlink()
        os.symlink(target(w), w.package / "model.onnx")

    return prepare


def _symlinked_folder(w: Where) -> None:
    weights = w.outside / "weights"
    weights.mkdir()
    shutil.move(w.package / "model.onnx", weights / "model.onnx")
    os.symlink(weights, w.package / "weights")
    edit_manifest(w.package, artifacts=[{"path": "weights"}], parameters={"model_file": "weights/model.onnx"})


def _fifo(w: Where) -> None:
    (w.package / "model.onnx").unlink()
    os.mkfifo(w.package / "model.onnx")


def _hard_link(w: Where) -> None:
    outside_file = w.outside / "someone-elses-model.onnx"
    shutil.move(w.package / "model.onnx", outside_file)
    os.link(outside_file, w.package / "model.onnx")


def _parameters(**parameters: Any) -> Callable[[Where], None]:
    def prepare(w: Where) -> None:
        edit_manifest(w.package, parameters={"model_file": "model.onnx", **parameters})

    return prepare


def _yaml_aliases(w: Where) -> None:
    """A "billion laughs" in the parameters: six levels of ten aliases each expand to a million strings."""
    lines = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 6)]
    replace_in_manifest(w.package, "parameters:\n", "parameters:\n" + "\n".join(lines) + "\n")


def _duplicate_artifact(w: Where) -> None:
    edit_manifest(w.package, artifacts=[{"path": "model.onnx"}, {"path": "model.onnx"}])


def _megabyte_manifest(w: Where) -> None:
    doc = read_manifest(w.package)
    doc["card"]["description"] = "x" * (1 << 20)
    write_manifest(w.package, doc)


def _price(text: str) -> Callable[[Where], None]:
    def prepare(w: Where) -> None:
        replace_in_manifest(w.package, PRICE_LINE, f"price_per_iu: {text}")

    return prepare


def _different_bytes(w: Where) -> None:
    with open(w.package / "model.onnx", "ab") as fh:
        fh.write(b"\0")


CASES: tuple[PublishCase, ...] = (
    # 1. packages that read the platform's files
    PublishCase(
        "artifact-symlink-to-passwd",
        _artifact_symlink(lambda w: Path("/etc/passwd")),
        ("artifacts[0].path", "symbolic link"),
    ),
    PublishCase(
        "artifact-symlink-to-store",
        _artifact_symlink(lambda w: w.home / "modelmarket.db"),
        ("artifacts[0].path", "symbolic link"),
    ),
    PublishCase("symlinked-folder", _symlinked_folder, ("artifacts[0].path", "'weights'", "symbolic link")),
    PublishCase("fifo-artifact", _fifo, ("artifacts[0].path", "FIFO")),
    PublishCase("hard-link-to-outside", _hard_link, ("artifacts[0].path", "hard link")),
    PublishCase(
        "model-file-dot-dot", _parameters(model_file="../../x"), ("parameters.model_file", "leaves the package folder")
    ),
    PublishCase("model-file-absolute", _parameters(model_file="/etc/passwd"), ("parameters.model_file", "absolute")),
    PublishCase("zero-threads", _parameters(intra_op_num_threads=0), ("parameters.intra_op_num_threads", "1 to")),
    # 4. manifests that mean something large or surprising
    PublishCase("yaml-aliases", _yaml_aliases, ("anchors and aliases",)),
    PublishCase("huge-version", lambda w: None, ("version", "999,999,999"), version="99999999999.0.0"),
    PublishCase("duplicate-artifact", _duplicate_artifact, ("artifacts[1].path", "listed twice")),
    PublishCase("megabyte-manifest", _megabyte_manifest, ("modelmarket.yaml", "larger than the limit")),
    # 9. prices in anything but the one canonical decimal form
    PublishCase("price-minus-zero", _price("'-0'"), ("pricing.price_per_iu", "negative")),
    PublishCase("price-exponent", _price("'1E+2'"), ("pricing.price_per_iu", "1E+2")),
    PublishCase("price-underscore", _price("'1_0'"), ("pricing.price_per_iu", "1_0")),
    PublishCase("price-minus-zero-unquoted", _price("-0"), ("price_per_iu",)),
    # 9. a refused re-publish (same version, other bytes) leaves no orphan blob
    PublishCase(
        "republish-other-bytes", _different_bytes, ("already published with different content",), BASELINE_VERSION
    ),
)


def case_version(index: int, case: PublishCase) -> str:
    return case.version or f"2.0.{index}"


def reachable_digests(package: Path, home: Path) -> set[str]:
    """sha256 of every regular file the package reaches, links followed: the blobs its publish could create.

    Files inside the platform's home are skipped: this process must never open the live database itself (closing
    any descriptor of a SQLite file drops every POSIX lock this process holds on it, the in-process store's too).
    """
    digests = set()
    for folder, _, names in os.walk(package, followlinks=True):
        for name in names:
            path = Path(folder) / name
            try:
                if path.resolve().is_relative_to(home.resolve()) or not stat.S_ISREG(os.stat(path).st_mode):
                    continue
                digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
            except OSError:
                continue
    return digests
