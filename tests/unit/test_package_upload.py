"""``registry/upload.py``: an uploaded package archive is unpacked by the platform's rules or refused, naming the
member; and the provider's client packs a folder into an archive those rules accept, the same bytes every time."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelmarket.core.errors import InvalidInput, InvariantViolated
from modelmarket.registry.upload import (
    MAX_MEMBER_DEPTH,
    MAX_MEMBER_NAME_CHARS,
    MAX_METADATA_BYTES,
    UploadLimits,
    pack_package,
    unpack_package,
)

LIMITS = UploadLimits(max_members=50, max_unpacked_bytes=1024 * 1024)
MANIFEST = b"name: m\nversion: 1.0.0\n"

Member = tuple[tarfile.TarInfo, bytes | None]


def file(name: str, data: bytes = b"x", mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def folder(name: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o777
    return info, None


def archive(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue(), mtime=0)


def unpack(tmp_path: Path, data: bytes, limits: UploadLimits = LIMITS) -> Path:
    dest = tmp_path / "dest"
    dest.mkdir(parents=True)
    return unpack_package(io.BytesIO(data), dest, limits)


def refused(tmp_path: Path, data: bytes, *words: str, limits: UploadLimits = LIMITS) -> str:
    with pytest.raises(InvalidInput) as caught:
        unpack(tmp_path, data, limits)
    message = caught.value.message
    assert message.startswith("package archive: "), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def written(dest: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}


# -- what is accepted -----------------------------------------------------------------------------------------------


def test_an_archive_with_a_single_top_folder_unpacks_into_it_with_private_modes(tmp_path: Path) -> None:
    data = archive(
        folder("pkg"),
        file("pkg/modelmarket.yaml", MANIFEST, mode=0o777),
        file("pkg/en-us/mdef", b"model bytes", mode=0o4755),
        file("pkg/predict.py", b"print()"),
    )
    root = unpack(tmp_path, data)
    assert root == tmp_path / "dest" / "pkg"
    assert written(root) == {"modelmarket.yaml": MANIFEST, "en-us/mdef": b"model bytes", "predict.py": b"print()"}
    for path in (root, root / "en-us"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path  # 0700 (less under a strict umask)
    for path in (root / "modelmarket.yaml", root / "en-us" / "mdef"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & ~0o600 == 0, f"{path}: {oct(mode)}"  # no exec, setuid or group/other bits
        assert path.stat().st_nlink == 1


def test_an_archive_without_a_top_folder_unpacks_at_its_root_even_with_dot_slash_names(tmp_path: Path) -> None:
    data = archive(folder("."), file("./modelmarket.yaml", MANIFEST), file("./weights/a.bin", b"\0" * 10))
    root = unpack(tmp_path, data)
    assert root == tmp_path / "dest"
    assert written(root) == {"modelmarket.yaml": MANIFEST, "weights/a.bin": b"\0" * 10}


def test_a_path_can_be_unpacked_too(tmp_path: Path) -> None:
    path = tmp_path / "upload.tar.gz"
    path.write_bytes(archive(file("modelmarket.yaml", MANIFEST)))
    dest = tmp_path / "dest"
    dest.mkdir()
    assert unpack_package(path, dest, LIMITS) == dest
    assert written(dest) == {"modelmarket.yaml": MANIFEST}


def test_the_destination_must_be_an_empty_folder(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "left-over").write_text("x")
    with pytest.raises(InvariantViolated, match="empty folder"):
        unpack_package(io.BytesIO(archive(file("modelmarket.yaml", MANIFEST))), dest, LIMITS)


# -- member types ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "kind"),
    [
        (special("pkg/model.onnx", tarfile.SYMTYPE, "/etc/passwd"), "a symbolic link (to '/etc/passwd')"),
        (special("pkg/model.onnx", tarfile.LNKTYPE, "pkg/modelmarket.yaml"), "a hard link"),
        (special("pkg/model.onnx", tarfile.CHRTYPE), "a character device"),
        (special("pkg/model.onnx", tarfile.BLKTYPE), "a block device"),
        (special("pkg/model.onnx", tarfile.FIFOTYPE), "a FIFO"),
        (special("pkg/model.onnx", tarfile.CONTTYPE), "a contiguous file"),
    ],
    ids=["symlink", "hard-link", "char-device", "block-device", "fifo", "contiguous"],
)
def test_anything_but_regular_files_and_folders_is_refused_naming_the_member(
    tmp_path: Path, member: Member, kind: str
) -> None:
    data = archive(file("pkg/modelmarket.yaml", MANIFEST), member)
    refused(tmp_path, data, "'pkg/model.onnx'", kind, "regular files and folders only")
    assert not (tmp_path / "dest" / "pkg" / "model.onnx").exists()
    assert not (tmp_path / "dest" / "pkg" / "model.onnx").is_symlink()


def test_a_symlinked_folder_followed_by_a_file_through_it_writes_nothing_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    data = archive(special("pkg/escape", tarfile.SYMTYPE, str(outside)), file("pkg/escape/owned", b"pwned"))
    refused(tmp_path, data, "'pkg/escape'", "symbolic link")
    assert list(outside.iterdir()) == []


# -- names ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("/etc/cron.d/evil", ("'/etc/cron.d/evil'", "absolute")),
        ("pkg/../../evil", ("'pkg/../../evil'", "'..'")),
        ("../evil", ("'../evil'", "'..'")),
        ("pkg\\..\\evil", ("backslash",)),
        ("pkg/a\nb", ("control character",)),
        ("pkg/" + "a" * 256, ("longer than 255 bytes",)),
        ("/".join(["d"] * (MAX_MEMBER_DEPTH + 1)), (f"{MAX_MEMBER_DEPTH + 1} folders deep",)),
        ("pkg/" + "a/" * (MAX_MEMBER_NAME_CHARS // 2) + "x", ("characters; the limit",)),
    ],
    ids=["absolute", "dotdot", "leading-dotdot", "backslash", "control", "long-component", "deep", "long-name"],
)
def test_names_outside_the_destination_or_past_the_bounds_are_refused(
    tmp_path: Path, name: str, words: tuple[str, ...]
) -> None:
    refused(tmp_path, archive(file("pkg/modelmarket.yaml", MANIFEST), file(name, b"evil")), *words)
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path.parent / "evil").exists()


def test_a_member_twice_is_refused(tmp_path: Path) -> None:
    data = archive(file("pkg/modelmarket.yaml", MANIFEST), file("pkg/a", b"1"), file("pkg/./a", b"2"))
    refused(tmp_path, data, "'pkg/./a'", "appears twice")
    assert (tmp_path / "dest" / "pkg" / "a").read_bytes() == b"1"  # O_EXCL: never overwritten


def test_a_folder_listed_twice_is_refused_but_one_implied_by_its_files_is_fine(tmp_path: Path) -> None:
    unpack(tmp_path / "ok", archive(file("pkg/modelmarket.yaml", MANIFEST), folder("pkg")))
    refused(tmp_path, archive(folder("pkg"), folder("pkg/"), file("pkg/modelmarket.yaml", MANIFEST)), "appears twice")


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ((file("pkg/a", b"1"), folder("pkg/a")), ("'pkg/a'", "both a file and a folder")),
        ((folder("pkg/a"), file("pkg/a", b"1")), ("'pkg/a'", "both a file and a folder")),
        ((file("pkg/b/c", b"1"), file("pkg/b", b"2")), ("'pkg/b'", "both a file and a folder")),
        ((file("pkg/a", b"1"), file("pkg/a/b", b"2")), ("'pkg/a/b'", "inside 'pkg/a', which is a file")),
    ],
    ids=["file-then-folder", "folder-then-file", "implied-folder-then-file", "file-under-a-file"],
)
def test_a_name_that_is_both_a_file_and_a_folder_is_refused(
    tmp_path: Path, members: tuple[Member, ...], words: tuple[str, ...]
) -> None:
    refused(tmp_path, archive(file("pkg/modelmarket.yaml", MANIFEST), *members), *words)


def test_a_file_named_like_the_root_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, archive(file("./", b"x")), "named like the archive's root")


# -- bounds ---------------------------------------------------------------------------------------------------------


def test_more_members_than_the_limit_are_refused_before_the_next_one_is_written(tmp_path: Path) -> None:
    limits = UploadLimits(max_members=5, max_unpacked_bytes=1024)
    data = archive(file("modelmarket.yaml", MANIFEST), *(file(f"f{i}", b"1") for i in range(10)))
    refused(tmp_path, data, "more than 5 members", limits=limits)
    assert len(list((tmp_path / "dest").iterdir())) == 5


def test_files_past_the_unpacked_limit_are_refused_before_their_data_is_written(tmp_path: Path) -> None:
    limits = UploadLimits(max_members=50, max_unpacked_bytes=1000)
    data = archive(file("modelmarket.yaml", MANIFEST), file("a", b"1" * 600), file("b", b"2" * 600))
    refused(tmp_path, data, "'b'", "600 bytes", "past 1,000 bytes", limits=limits)
    files = written(tmp_path / "dest")
    assert set(files) == {"modelmarket.yaml", "a"}
    assert sum(map(len, files.values())) <= 1000


class CountingReader(io.RawIOBase):
    """A compressed upload that counts how much of it was read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.read_bytes += len(chunk)
        return len(chunk)


def _bomb(sizes: list[int]) -> bytes:
    """A .tar.gz of the manifest and files of zeros, compressed on the fly (about 130 KB for 128 MB)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        info, data = file("modelmarket.yaml", MANIFEST)
        tar.addfile(info, io.BytesIO(data))
        for index, size in enumerate(sizes):
            info = tarfile.TarInfo(f"zeros-{index}.bin")
            info.size = size
            tar.addfile(info, _Zeros(size))
    return out.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


@pytest.mark.parametrize(
    "sizes", [[128 * 1024 * 1024], [256 * 1024] * 256], ids=["one-128MB-file", "256-files-of-256KB"]
)
def test_a_gzip_bomb_stops_at_the_limit_without_writing_beyond_it(tmp_path: Path, sizes: list[int]) -> None:
    limits = UploadLimits(max_members=1000, max_unpacked_bytes=1024 * 1024)
    bomb = _bomb(sizes)
    source = CountingReader(bomb)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(InvalidInput, match="past 1,048,576 bytes, the limit"):
        unpack_package(io.BufferedReader(source), dest, limits)
    total = sum(len(b) for b in written(dest).values())
    assert total <= limits.max_unpacked_bytes
    assert source.read_bytes < len(bomb) // 4, f"read {source.read_bytes:,} of {len(bomb):,} compressed bytes"
    print(f"[bomb] {sum(sizes):,} bytes in {len(bomb):,}: stopped after {source.read_bytes:,}, wrote {total:,}")


def test_a_metadata_header_past_its_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    info, data = file("pkg/modelmarket.yaml", MANIFEST)
    info.pax_headers = {"comment": "x" * (MAX_METADATA_BYTES + 1)}
    refused(tmp_path, archive((info, data)), "metadata header", f"{MAX_METADATA_BYTES:,}")


def test_a_long_name_in_a_pax_header_is_fine(tmp_path: Path) -> None:
    name = "pkg/" + "/".join(["folder-with-a-long-name"] * 20) + "/w.bin"
    root = unpack(tmp_path, archive(file("pkg/modelmarket.yaml", MANIFEST), file(name, b"w")))
    assert (root / name.removeprefix("pkg/")).read_bytes() == b"w"


# -- not an archive, or not a package -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: b"PK\x03\x04 a zip file", ("not a valid gzip-compressed tar archive",)),
        (lambda: gzip.compress(b"not a tar archive at all " * 40), ("not a valid gzip-compressed tar archive",)),
        (lambda: archive(file("modelmarket.yaml", MANIFEST), file("big", b"1" * 5000))[:-400], ("not a valid",)),
        (lambda: gzip.compress(b""), ("not a valid gzip-compressed tar archive",)),
        (lambda: archive(), ("the archive is empty",)),
        (lambda: archive(file("README", b"x")), ("no modelmarket.yaml",)),
        (lambda: archive(file("a/modelmarket.yaml", MANIFEST), file("b/x", b"x")), ("no modelmarket.yaml", "2 top")),
        (lambda: archive(folder("pkg/modelmarket.yaml"), file("pkg/x", b"x")), ("no modelmarket.yaml",)),
    ],
    ids=["zip", "gzip-not-tar", "truncated", "empty-gzip", "empty-tar", "no-manifest", "two-tops", "manifest-folder"],
)
def test_what_is_not_a_package_archive_is_refused(
    tmp_path: Path, make: Callable[[], bytes], words: tuple[str, ...]
) -> None:
    refused(tmp_path, make(), *words)


# -- packing --------------------------------------------------------------------------------------------------------


def _package(root: Path) -> Path:
    (root / "weights").mkdir(parents=True)
    (root / "modelmarket.yaml").write_bytes(MANIFEST)
    (root / "predict.py").write_text("print('hi')\n")
    (root / "weights" / "b.bin").write_bytes(b"\1" * 100)
    (root / "weights" / "a.bin").write_bytes(b"\0" * 100)
    (root / "empty").mkdir()
    return root


def test_a_packed_folder_unpacks_to_the_same_files_with_the_manifest_first(tmp_path: Path) -> None:
    package = _package(tmp_path / "package")
    with pack_package(package, LIMITS) as packed:
        data = packed.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        assert {(m.mode, m.uid, m.gid, m.mtime, m.uname) for m in tar.getmembers()} == {(0o644, 0, 0, 0, "")}
    assert names == ["modelmarket.yaml", "predict.py", "weights/a.bin", "weights/b.bin"]
    root = unpack(tmp_path, data)
    assert written(root) == written(package)


def test_packing_gives_the_same_bytes_every_time(tmp_path: Path) -> None:
    first = _package(tmp_path / "one")
    second = _package(tmp_path / "two")
    os.utime(second / "predict.py", (1, 1))
    with pack_package(first, LIMITS) as a, pack_package(second, LIMITS) as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("where", ["model.onnx", "weights/model.onnx"])
def test_packing_refuses_a_symbolic_link_naming_it(tmp_path: Path, where: str) -> None:
    package = _package(tmp_path / "package")
    (package / where).symlink_to(package / "predict.py")
    with pytest.raises(InvalidInput, match=f"{where}: a symbolic link"):
        pack_package(package, LIMITS)


def test_packing_refuses_a_fifo_a_missing_manifest_and_a_linked_folder(tmp_path: Path) -> None:
    package = _package(tmp_path / "package")
    os.mkfifo(package / "pipe")
    with pytest.raises(InvalidInput, match="pipe: not a regular file or folder"):
        pack_package(package, LIMITS)
    (package / "pipe").unlink()
    (tmp_path / "link").symlink_to(package)
    with pytest.raises(InvalidInput, match="not a folder"):
        pack_package(tmp_path / "link", LIMITS)
    (package / "modelmarket.yaml").unlink()
    with pytest.raises(InvalidInput, match=r"no modelmarket\.yaml"):
        pack_package(package, LIMITS)


def test_packing_is_bounded(tmp_path: Path) -> None:
    package = _package(tmp_path / "package")
    with pytest.raises(InvalidInput, match="more than 3 files and folders"):
        pack_package(package, UploadLimits(max_members=3, max_unpacked_bytes=10_000))
    with pytest.raises(InvalidInput, match="more than 150 bytes"):
        pack_package(package, UploadLimits(max_members=50, max_unpacked_bytes=150))
    (package / "noise.bin").write_bytes(os.urandom(4000))
    with pytest.raises(InvalidInput, match="upload limit is 1,000 bytes"):
        pack_package(package, UploadLimits(max_members=50, max_unpacked_bytes=10_000, max_archive_bytes=1000))
