"""Publishing reads regular files inside the package folder only: no links, devices, FIFOs, sockets or escapes."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.registry.manifest import MANIFEST_NAME, Manifest, load_manifest, parse_manifest
from modelmarket.registry.package import (
    MAX_PATH_DEPTH,
    artifact_path_problem,
    collect_artifacts,
    open_package_file,
)

pytestmark = pytest.mark.timeout(60)


def manifest_for(*paths: str) -> Manifest:
    doc: dict[str, Any] = {
        "name": "m",
        "version": "1.0.0",
        "task": "t",
        "modality": "text",
        "runtime": "vader",
        "provider": "p",
        "license": "MIT",
        "artifacts": [{"path": p} for p in paths],
        "inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}],
        "pricing": {"unit": "request", "price_per_iu": "0.01", "currency": "USD"},
        "card": {"summary": "s"},
    }
    return parse_manifest(doc)


def unchecked_manifest(*paths: str) -> Manifest:
    """A manifest that skips parse_manifest's own overlap check, to prove collect_artifacts checks by itself."""
    doc = manifest_for("placeholder").model_dump(mode="json")
    doc["artifacts"] = [{"path": p} for p in paths]
    return Manifest.model_validate(doc)


@pytest.fixture()
def pkg(tmp_path: Path) -> Path:
    """A package folder: model.bin, and a folder lex/ with a.txt and sub/b.txt; a secret file beside it."""
    root = tmp_path / "pkg"
    (root / "lex" / "sub").mkdir(parents=True)
    (root / "model.bin").write_bytes(b"weights")
    (root / "lex" / "a.txt").write_text("a")
    (root / "lex" / "sub" / "b.txt").write_text("bb")
    (tmp_path / "modelmarket.db").write_text("the platform's database")
    return root


def test_regular_files_and_folders_are_collected_in_order(pkg: Path) -> None:
    files = collect_artifacts(pkg, manifest_for("model.bin", "lex"))
    assert [f.relpath for f in files] == ["model.bin", "lex/a.txt", "lex/sub/b.txt"]
    assert [f.size_bytes for f in files] == [7, 1, 2]
    assert all(f.path == pkg.resolve() / f.relpath for f in files)
    with files[2].open() as fh:
        assert fh.read() == b"bb"


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_symlinked_file_is_refused_wherever_it_points(pkg: Path, target: str) -> None:
    dest = pkg.parent / "modelmarket.db" if target == "outside" else pkg / "model.bin"
    (pkg / "link.bin").symlink_to(dest)
    with pytest.raises(InvalidInput, match=r"artifacts\[0\]\.path: 'link.bin' is a symbolic link.*even to a file"):
        collect_artifacts(pkg, manifest_for("link.bin"))


def test_a_symlink_to_etc_passwd_is_refused(pkg: Path) -> None:
    (pkg / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput, match="symbolic link"):
        collect_artifacts(pkg, manifest_for("model.bin", "passwd"))


def test_a_symlinked_folder_entry_is_refused(pkg: Path, tmp_path: Path) -> None:
    (pkg / "home").symlink_to(tmp_path)
    with pytest.raises(InvalidInput, match=r"artifacts\[0\]\.path: 'home' is a symbolic link"):
        collect_artifacts(pkg, manifest_for("home"))


def test_a_link_inside_a_walked_folder_is_refused(pkg: Path) -> None:
    (pkg / "lex" / "sub" / "db").symlink_to(pkg.parent / "modelmarket.db")
    with pytest.raises(InvalidInput, match=r"artifacts\[1\]\.path: 'lex/sub/db' is a symbolic link"):
        collect_artifacts(pkg, manifest_for("model.bin", "lex"))


def test_a_linked_folder_inside_a_walked_folder_is_not_followed(pkg: Path) -> None:
    (pkg / "lex" / "up").symlink_to(pkg.parent)
    with pytest.raises(InvalidInput, match="'lex/up' is a symbolic link"):
        collect_artifacts(pkg, manifest_for("lex"))


def test_a_link_in_the_middle_of_an_entry_path_is_refused(pkg: Path) -> None:
    (pkg / "alias").symlink_to(pkg / "lex")  # points inside: still refused
    with pytest.raises(InvalidInput, match="'alias' is a symbolic link"):
        collect_artifacts(pkg, manifest_for("alias/a.txt"))


def test_a_hard_link_to_a_file_outside_is_refused(pkg: Path) -> None:
    os.link(pkg.parent / "modelmarket.db", pkg / "db.bin")
    with pytest.raises(InvalidInput, match=r"'db\.bin' has 2 hard links.*replace it with a copy"):
        collect_artifacts(pkg, manifest_for("db.bin"))


def test_a_fifo_is_refused_without_blocking(pkg: Path) -> None:
    os.mkfifo(pkg / "lex" / "pipe")
    with pytest.raises(InvalidInput, match=r"'lex/pipe' is a FIFO \(named pipe\); packages take regular files only"):
        collect_artifacts(pkg, manifest_for("lex"))
    with pytest.raises(InvalidInput, match="FIFO"):
        open_package_file(pkg / "lex" / "pipe")  # O_NONBLOCK: returns at once instead of waiting for a writer


@pytest.fixture()
def unix_socket(pkg: Path) -> Iterator[Path]:
    path = pkg / "s.sock"
    if len(str(path)) >= 100:
        pytest.skip("the temporary path is too long for a Unix socket address")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        yield path


def test_a_socket_is_refused(pkg: Path, unix_socket: Path) -> None:
    with pytest.raises(InvalidInput, match=r"'s\.sock' is a socket"):
        collect_artifacts(pkg, manifest_for("s.sock"))
    with pytest.raises(InvalidInput, match="socket"):
        open_package_file(unix_socket)


def test_a_device_file_is_refused(pkg: Path) -> None:
    try:
        os.mknod(pkg / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD, which this sandbox does not grant")
    with pytest.raises(InvalidInput, match="'null' is a character device"):
        collect_artifacts(pkg, manifest_for("null"))


def test_the_package_folder_itself_must_not_be_a_link(pkg: Path, tmp_path: Path) -> None:
    (tmp_path / "via-link").symlink_to(pkg)
    with pytest.raises(InvalidInput, match="the package folder is a symbolic link; pass the folder it points to"):
        collect_artifacts(tmp_path / "via-link", manifest_for("model.bin"))


def test_links_above_the_package_folder_are_the_callers_and_are_resolved(pkg: Path, tmp_path: Path) -> None:
    (tmp_path / "parent-link").symlink_to(tmp_path)
    files = collect_artifacts(tmp_path / "parent-link" / "pkg", manifest_for("model.bin"))
    assert files[0].path == pkg.resolve() / "model.bin"


@pytest.mark.parametrize(
    ("paths", "words"),
    [
        (("model.bin", "model.bin"), r"artifacts\[1\]\.path: 'model.bin' is already listed by artifacts\[0\]"),
        (("lex", "lex/a.txt"), r"artifacts\[1\]\.path: 'lex/a.txt' is already listed by artifacts\[0\]"),
        (("lex/sub/b.txt", "lex"), r"artifacts\[1\]\.path: 'lex/sub/b.txt' is already listed by artifacts\[0\]"),
    ],
)
def test_a_file_covered_twice_is_refused(pkg: Path, paths: tuple[str, ...], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        collect_artifacts(pkg, unchecked_manifest(*paths))


@pytest.mark.parametrize(
    ("paths", "words"),
    [
        (("model.bin", "model.bin"), r"artifacts\[1\]\.path: 'model.bin' is listed twice \(also artifacts\[0\]\)"),
        (("lex", "lex/a.txt"), r"artifacts\[1\]\.path: 'lex/a.txt' is inside the folder listed as artifacts\[0\]"),
        (("lex/a.txt", "lex"), r"artifacts\[1\]\.path: 'lex' is a folder that holds artifacts\[0\]"),
    ],
)
def test_the_manifest_refuses_overlapping_entries_before_any_file_is_read(paths: tuple[str, ...], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        manifest_for(*paths)


def test_the_file_count_and_total_size_are_bounded(pkg: Path) -> None:
    with pytest.raises(InvalidInput, match="more than 2 files, the limit"):
        collect_artifacts(pkg, manifest_for("model.bin", "lex"), max_files=2)
    with pytest.raises(InvalidInput, match="add up to more than 8 bytes, the limit"):
        collect_artifacts(pkg, manifest_for("model.bin", "lex"), max_total_bytes=8)
    assert len(collect_artifacts(pkg, manifest_for("model.bin", "lex"), max_files=3, max_total_bytes=10)) == 3


def test_a_folder_walk_is_bounded_in_depth(pkg: Path) -> None:
    deep = pkg / "deep"
    leaf = deep.joinpath(*["d"] * MAX_PATH_DEPTH)
    leaf.mkdir(parents=True)
    (leaf / "f").write_text("x")
    with pytest.raises(InvalidInput, match=f"folders deep|more than {MAX_PATH_DEPTH}"):
        collect_artifacts(pkg, manifest_for("deep"))


def test_missing_entries_and_empty_folders_are_refused(pkg: Path) -> None:
    with pytest.raises(InvalidInput, match=r"artifacts\[0\]\.path: 'nope.bin' does not exist"):
        collect_artifacts(pkg, manifest_for("nope.bin"))
    (pkg / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"artifacts\[0\]\.path: folder 'empty' holds no files"):
        collect_artifacts(pkg, manifest_for("empty"))
    with pytest.raises(InvalidInput, match=r"'model\.bin' is not a folder"):
        collect_artifacts(pkg, manifest_for("model.bin/x"))


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("../x", "inside the package folder"),
        ("/etc/passwd", "inside the package folder"),
        ("a/../../x", "inside the package folder"),
        ("./model.bin", "write it as 'model.bin'"),
        ("lex//a.txt", "write it as 'lex/a.txt'"),
        ("lex/", "write it as 'lex'"),
        (".", "names the package folder itself"),
        ("lex\\a.txt", "use '/' between folders"),
        ("a\nb", "control character"),
        ("x" * 256, "longer than 255 bytes"),
        ("/".join(["d"] * (MAX_PATH_DEPTH + 1)), "folders deep"),
    ],
)
def test_artifact_paths_have_one_canonical_form(path: str, words: str) -> None:
    problem = artifact_path_problem(path)
    assert problem is not None and words in problem
    with pytest.raises(InvalidInput, match=r"artifacts\[0\]\.path: "):
        manifest_for(path)


def test_canonical_paths_pass() -> None:
    for path in ("model.onnx", "en-us/mdef", "a b/c.d", ".hidden", "ünï/cödé"):
        assert artifact_path_problem(path) is None


# -- a swap between the check and the open


def test_a_file_swapped_for_a_link_after_collection_is_refused_at_open(pkg: Path) -> None:
    (item,) = collect_artifacts(pkg, manifest_for("model.bin"))
    (pkg / "model.bin").unlink()
    (pkg / "model.bin").symlink_to(pkg.parent / "modelmarket.db")
    with pytest.raises(InvalidInput, match="symbolic link"):
        item.open()
    with pytest.raises(InvalidInput, match="symbolic link"):
        open_package_file(item.path)


def test_a_folder_swapped_for_a_link_after_collection_is_refused_at_open(pkg: Path, tmp_path: Path) -> None:
    files = collect_artifacts(pkg, manifest_for("lex"))
    decoy = tmp_path / "decoy"
    (decoy / "sub").mkdir(parents=True)
    (decoy / "sub" / "b.txt").write_text("bb")
    shutil.rmtree(pkg / "lex")
    (pkg / "lex").symlink_to(decoy)
    with pytest.raises(InvalidInput, match=r"'lex' is not a folder \(or is a symbolic link"):
        files[1].open()


def test_a_file_replaced_by_another_after_collection_is_refused_at_open(pkg: Path) -> None:
    (item,) = collect_artifacts(pkg, manifest_for("model.bin"))
    (pkg / "model.bin").unlink()
    (pkg / "model.bin").write_bytes(b"other weights")
    with pytest.raises(InvalidInput, match="changed while the package was being published"):
        item.open()


def test_open_package_file_reads_regular_files_and_refuses_folders(pkg: Path) -> None:
    with open_package_file(pkg / "model.bin") as fh:
        assert fh.read() == b"weights"
    with pytest.raises(InvalidInput, match="is a folder"):
        open_package_file(pkg / "lex")
    with pytest.raises(InvalidInput, match="does not exist"):
        open_package_file(pkg / "missing")


# -- the manifest file itself


def write_manifest(pkg: Path) -> None:
    (pkg / MANIFEST_NAME).write_text(
        "name: m\nversion: 1.0.0\ntask: t\nmodality: text\nruntime: vader\nprovider: p\nlicense: MIT\n"
        "artifacts: [{path: model.bin}]\ninputs: [{name: x, datatype: BYTES, shape: [-1]}]\n"
        "outputs: [{name: y, datatype: BYTES, shape: [-1]}]\n"
        "pricing: {unit: request, price_per_iu: '0.01', currency: USD}\ncard: {summary: s}\n",
        encoding="utf-8",
    )


def test_a_symlinked_manifest_is_refused(pkg: Path, tmp_path: Path) -> None:
    write_manifest(pkg)
    assert load_manifest(pkg).name == "m"
    (pkg / MANIFEST_NAME).rename(tmp_path / "elsewhere.yaml")
    (pkg / MANIFEST_NAME).symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(InvalidInput, match="symbolic link"):
        load_manifest(pkg)
    (pkg / MANIFEST_NAME).unlink()
    (pkg / MANIFEST_NAME).symlink_to("/etc/shadow")  # its lines must never come back in a YAML error
    with pytest.raises(InvalidInput, match="symbolic link"):
        load_manifest(pkg)
