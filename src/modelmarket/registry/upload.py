"""A model package as one ``.tar.gz``: packed by a provider's client, unpacked safely by the platform.

An uploaded archive is data from an untrusted party, unpacked with the platform's rights. ``unpack_package`` never
calls ``tarfile.extractall``: it reads the archive as a stream and writes each member itself, by these rules:

- **Regular files and folders only**: a symbolic link, hard link, device, FIFO or sparse file is refused, naming
  the member. Files are written ``0600`` and folders made ``0700`` whatever the archive says.
- **Names inside the destination**: no absolute name, no ``..``, no control character or backslash, at most
  ``MAX_MEMBER_NAME_CHARS`` characters, ``MAX_MEMBER_DEPTH`` components and ``MAX_NAME_BYTES`` bytes a component.
  A leading ``./`` is allowed (``tar -C DIR .`` writes one). A member may not appear twice, nor be both a file
  and a folder.
- **Nothing already there is followed**: every folder is opened from the destination one component at a time
  with ``O_NOFOLLOW``, and every file created with ``O_CREAT | O_EXCL | O_NOFOLLOW``.
- **Bounded while reading**: at most ``max_members`` members and ``max_unpacked_bytes`` bytes of files, checked
  against each member's declared size *before* its data is read, so a gzip bomb stops at its first header past the
  bound; the decompressed stream as a whole (headers, padding, metadata) is counted too, and each metadata header
  (pax, GNU long name) is refused past ``MAX_METADATA_BYTES`` before it is read.

The package root is the archive's root, or its single top folder, and holds ``modelmarket.yaml``.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Self

from modelmarket.core.errors import InvalidInput, ensure
from modelmarket.registry.manifest import MANIFEST_NAME
from modelmarket.registry.package import MAX_ARTIFACT_PATH_CHARS, MAX_NAME_BYTES, MAX_PATH_DEPTH

__all__ = [
    "MAX_MEMBER_DEPTH",
    "MAX_MEMBER_NAME_CHARS",
    "MAX_METADATA_BYTES",
    "UploadLimits",
    "pack_package",
    "unpack_package",
]

MAX_MEMBER_DEPTH = MAX_PATH_DEPTH + 1
"""Components of a member's name: a package's deepest artifact path, below one top folder."""
MAX_MEMBER_NAME_CHARS = MAX_ARTIFACT_PATH_CHARS + MAX_NAME_BYTES + 1
"""A package's longest artifact path, below a top folder."""
MAX_METADATA_BYTES = 16 * 1024
"""Largest pax or GNU long-name header; a long name with a few pax fields takes under 2 KiB."""
MAX_METADATA_CHAIN = 4
"""Metadata headers in a row before a member (pax, global pax, long name, long link name)."""
CHUNK_BYTES = 1024 * 1024
_STREAM_SLACK_BYTES = 64 * 1024  # tarfile reads ahead in blocks of 10 KiB; the end-of-archive blocks
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)  # fmt: skip
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO (named pipe)",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
    tarfile.CONTTYPE: "a contiguous file",
}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_SHOWN_CHARS = 120
_WHERE = "package archive"


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """The bounds of one package archive (``MODELMARKET_MAX_PACKAGE_*``)."""

    max_members: int
    """Files and folders in the archive."""
    max_unpacked_bytes: int
    """Bytes of all its files together."""
    max_archive_bytes: int | None = None
    """The compressed archive (what ``pack_package`` may produce); the gateway bounds the upload itself."""

    def __post_init__(self) -> None:
        ensure(self.max_members > 0, f"max_members must be positive, got {self.max_members}")
        ensure(self.max_unpacked_bytes > 0, f"max_unpacked_bytes must be positive, got {self.max_unpacked_bytes}")

    @property
    def max_stream_bytes(self) -> int:
        """The decompressed stream: files, plus per member a header, padding and its metadata headers."""
        per_member = 3 * tarfile.BLOCKSIZE + MAX_METADATA_CHAIN * (MAX_METADATA_BYTES + tarfile.BLOCKSIZE)
        return self.max_unpacked_bytes + (self.max_members + 1) * per_member + _STREAM_SLACK_BYTES


def _shown(name: str) -> str:
    """A member's name for a message: ``repr``, cut short."""
    return repr(name) if len(name) <= _SHOWN_CHARS else repr(name[:_SHOWN_CHARS]) + "..."


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(f"{_WHERE}: {message}")


# -- unpacking ------------------------------------------------------------------------------------------------------


class _CountedStream:
    """The decompressed archive, refused once more than ``limit`` bytes were read from it."""

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        room = self._limit - self.read_bytes
        want = room + 1 if size is None or size < 0 else min(size, room + 1)
        data = self._raw.read(want)
        self.read_bytes += len(data)
        if self.read_bytes > self._limit:
            raise _refuse(f"it decompresses to more than {self._limit:,} bytes, the limit (a gzip bomb?)")
        return data


def _bounded_tarinfo() -> type[tarfile.TarInfo]:
    """A ``TarInfo`` class that refuses a metadata header (pax, GNU long name) past ``MAX_METADATA_BYTES`` before
    tarfile reads it into memory, and more than ``MAX_METADATA_CHAIN`` of them in a row."""
    chain = [0]

    class BoundedTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
            buf = tarfile_.fileobj.read(tarfile.BLOCKSIZE)
            obj = cls.frombuf(buf, tarfile_.encoding or "utf-8", tarfile_.errors)
            obj.offset = tarfile_.fileobj.tell() - tarfile.BLOCKSIZE
            if obj.type in _META_TYPES:
                chain[0] += 1
                if obj.size > MAX_METADATA_BYTES:
                    raise _refuse(f"a metadata header of {obj.size:,} bytes; the limit is {MAX_METADATA_BYTES:,}")
                if chain[0] > MAX_METADATA_CHAIN:
                    raise _refuse(f"more than {MAX_METADATA_CHAIN} metadata headers before one member")
            else:
                chain[0] = 0
            return obj._proc_member(tarfile_)  # type: ignore[attr-defined,no-any-return]

    return BoundedTarInfo


def _member_parts(name: str) -> tuple[str, ...]:
    """The member's name as path components inside the destination; ``()`` for the archive root (``./``)."""
    shown = _shown(name)
    if len(name) > MAX_MEMBER_NAME_CHARS:
        raise _refuse(f"member {shown} has a name of {len(name):,} characters; the limit is {MAX_MEMBER_NAME_CHARS:,}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise _refuse(f"member {shown} has a control character in its name")
    if "\\" in name:
        raise _refuse(f"member {shown} has a backslash in its name: use '/' between folders")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(f"member {shown} has a name that is not UTF-8") from None
    if name.startswith("/"):
        raise _refuse(f"member {shown} has an absolute name: members must be inside the package")
    parts = name.split("/")
    if ".." in parts:
        raise _refuse(f"member {shown} has '..' in its name: members must be inside the package")
    kept = tuple(p for p in parts if p not in ("", "."))
    if len(kept) > MAX_MEMBER_DEPTH:
        raise _refuse(f"member {shown} is {len(kept)} folders deep; the limit is {MAX_MEMBER_DEPTH}")
    if any(len(p.encode("utf-8")) > MAX_NAME_BYTES for p in kept):
        raise _refuse(f"member {shown} has a file or folder name longer than {MAX_NAME_BYTES} bytes")
    return kept


@dataclass
class _Extraction:
    """Writes members under the destination folder (open as ``root_fd``), keeping what it made."""

    root_fd: int
    limits: UploadLimits
    kinds: dict[tuple[str, ...], str] = field(default_factory=dict)
    """Every path made so far: ``"file"``, ``"dir"`` (listed) or ``"implied"`` (a folder made for a file in it)."""
    members: int = 0
    file_bytes: int = 0

    def member(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise _refuse(f"more than {self.limits.max_members:,} members (files and folders), the limit")
        if info.type not in _FILE_TYPES and info.type != tarfile.DIRTYPE:
            kind = _KINDS.get(info.type, f"of an unsupported type ({info.type!r})")
            detail = f" (to {_shown(info.linkname)})" if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            raise _refuse(f"member {_shown(info.name)} is {kind}{detail}; packages take regular files and folders only")
        parts = _member_parts(info.name)
        if info.type == tarfile.DIRTYPE:
            self._folder(parts, info.name)
        elif not parts:
            raise _refuse(f"member {_shown(info.name)} is a file named like the archive's root")
        else:
            self._file(tar, info, parts)

    def _claim(self, parts: tuple[str, ...], kind: str, name: str) -> None:
        for depth in range(1, len(parts)):
            if self.kinds.get(parts[:depth]) == "file":
                raise _refuse(f"member {_shown(name)} is inside {'/'.join(parts[:depth])!r}, which is a file")
        before = self.kinds.get(parts)
        if before is not None and not (kind == "dir" and before == "implied"):
            if before == kind:
                raise _refuse(f"member {_shown(name)} appears twice; each member may appear once")
            raise _refuse(f"member {_shown(name)} is both a file and a folder")
        self.kinds[parts] = kind

    def _folder(self, parts: tuple[str, ...], name: str) -> None:
        if not parts:
            return  # the archive root itself ("./")
        self._claim(parts, "dir", name)
        os.close(self._open_folder(parts))

    def _file(self, tar: tarfile.TarFile, info: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        self._claim(parts, "file", info.name)
        room = self.limits.max_unpacked_bytes - self.file_bytes
        if info.size > room:
            raise _refuse(
                f"member {_shown(info.name)} ({info.size:,} bytes) takes the files past "
                f"{self.limits.max_unpacked_bytes:,} bytes, the limit"
            )
        parent = self._open_folder(parts[:-1])
        try:
            fd = os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        except OSError as exc:
            raise _refuse(f"member {_shown(info.name)} cannot be written: {exc.strerror}") from None
        finally:
            os.close(parent)
        with os.fdopen(fd, "wb") as out:
            written = _copy(tar, info, out)
        self.file_bytes += written
        if written != info.size:
            raise _refuse(f"member {_shown(info.name)} ends after {written:,} of its {info.size:,} bytes")

    def _open_folder(self, parts: tuple[str, ...]) -> int:
        """A descriptor of the folder ``parts`` under the destination, made (``0700``) where missing; never
        following a link."""
        fd = os.dup(self.root_fd)
        try:
            for depth, name in enumerate(parts, start=1):
                self.kinds.setdefault(parts[:depth], "implied")
                with contextlib.suppress(FileExistsError):  # made earlier by this extraction, never followed
                    os.mkdir(name, 0o700, dir_fd=fd)
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            raise _refuse(f"folder {'/'.join(parts)!r} cannot be made: {exc.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        return fd


def _copy(tar: tarfile.TarFile, info: tarfile.TarInfo, out: BinaryIO) -> int:
    source = tar.extractfile(info)
    ensure(source is not None, f"tarfile gave no data for the regular file {info.name!r}")
    assert source is not None  # for mypy; ensure() above is the check
    written = 0
    with source:
        while written < info.size:
            chunk = source.read(min(CHUNK_BYTES, info.size - written))
            if not chunk:
                break
            out.write(chunk)
            written += len(chunk)
    return written


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's members, with tarfile's and gzip's errors turned into a refusal."""
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise _refuse(f"not a valid gzip-compressed tar archive ({exc})") from None
        if info is None:
            return
        yield info


def unpack_package(source: BinaryIO | Path, dest_dir: Path, limits: UploadLimits) -> Path:
    """Unpack the ``.tar.gz`` ``source`` (a readable binary stream, or a file's path) into the empty folder
    ``dest_dir``; return the package root (``dest_dir`` or its single top folder), which holds the manifest.

    ``InvalidInput`` naming the member for anything the module docstring refuses. What was written before a refusal
    stays in ``dest_dir``: the caller removes the folder whatever happens.
    """
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            return unpack_package(fh, dest_dir, limits)
    root_fd = os.open(dest_dir, _DIR_FLAGS)
    try:
        ensure(not os.listdir(root_fd), f"unpack_package needs an empty folder; {dest_dir} is not")
        extraction = _Extraction(root_fd, limits)
        try:
            with gzip.GzipFile(fileobj=source, mode="rb") as raw:
                counted = _CountedStream(raw, limits.max_stream_bytes)
                with tarfile.open(fileobj=counted, mode="r|", tarinfo=_bounded_tarinfo()) as tar:  # type: ignore[call-overload]
                    for info in _members(tar):
                        extraction.member(tar, info)
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise _refuse(f"not a valid gzip-compressed tar archive ({exc})") from None
    finally:
        os.close(root_fd)
    return _package_root(dest_dir, extraction.kinds)


def _package_root(dest_dir: Path, kinds: dict[tuple[str, ...], str]) -> Path:
    if not kinds:
        raise _refuse("the archive is empty")
    if kinds.get((MANIFEST_NAME,)) == "file":
        return dest_dir
    tops = {parts[0] for parts in kinds}
    if len(tops) == 1:
        (top,) = tops
        if kinds.get((top, MANIFEST_NAME)) == "file":
            return dest_dir / top
    raise _refuse(
        f"no {MANIFEST_NAME} at the archive's root or in its single top folder (found {len(tops)} top-level entries)"
    )


# -- packing (the provider's client) --------------------------------------------------------------------------------


def pack_package(package_dir: Path, limits: UploadLimits) -> BinaryIO:
    """The package folder as a ``.tar.gz`` in a temporary file (positioned at its start; deleted when closed).

    ``modelmarket.yaml`` first, then every regular file under the folder in sorted path order, at the archive's
    root; names, modes (``0644``), owners and times are normalised, so the same files give the same bytes. A
    symbolic link, device, FIFO or socket anywhere is refused, naming it; so is a folder past ``limits``.
    """
    root = _pack_root(package_dir)
    files = _files_to_pack(root, limits)
    out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller, who closes it
    try:
        with (
            gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz,
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):
            for relpath in files:
                _add_file(tar, root, relpath)
        size = out.tell()
        if limits.max_archive_bytes is not None and size > limits.max_archive_bytes:
            raise InvalidInput(
                f"{package_dir}: packed, the package is {size:,} bytes; the upload limit is "
                f"{limits.max_archive_bytes:,} bytes"
            )
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise


def _pack_root(package_dir: Path) -> Path:
    try:
        st = os.lstat(package_dir)
    except FileNotFoundError:
        raise InvalidInput(f"{package_dir}: no such folder") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"{package_dir}: not a folder (or a symbolic link to one): pass the package folder itself")
    try:
        manifest = os.lstat(package_dir / MANIFEST_NAME)
    except FileNotFoundError:
        raise InvalidInput(f"{package_dir}: no {MANIFEST_NAME} in the package folder") from None
    if not stat.S_ISREG(manifest.st_mode):
        raise InvalidInput(f"{package_dir / MANIFEST_NAME}: not a regular file")
    return package_dir.resolve(strict=True)


def _files_to_pack(root: Path, limits: UploadLimits) -> list[str]:
    """Every regular file under ``root`` (relative, ``/``-separated), the manifest first; bounded by ``limits``."""
    files: list[str] = []
    total = [0, 0]  # members, bytes

    def walk(folder: Path, prefix: str, depth: int) -> None:
        if depth > MAX_PATH_DEPTH:
            raise InvalidInput(f"{folder}: more than {MAX_PATH_DEPTH} folders deep")
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            rel = f"{prefix}{name}"
            st = os.lstat(folder / name)
            total[0] += 1
            if total[0] > limits.max_members:
                raise InvalidInput(f"{root}: more than {limits.max_members:,} files and folders, the upload limit")
            if stat.S_ISDIR(st.st_mode):
                walk(folder / name, f"{rel}/", depth + 1)
            elif stat.S_ISREG(st.st_mode):
                total[1] += st.st_size
                if total[1] > limits.max_unpacked_bytes:
                    raise InvalidInput(
                        f"{root}: the files add up to more than {limits.max_unpacked_bytes:,} bytes, the upload limit"
                    )
                files.append(rel)
            else:
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file or folder"
                raise InvalidInput(
                    f"{root / rel}: {kind}; packages take regular files and folders only: copy the file in its place "
                    "or remove it"
                )

    walk(root, "", 0)
    files.remove(MANIFEST_NAME)
    return [MANIFEST_NAME, *files]


def _add_file(tar: tarfile.TarFile, root: Path, relpath: str) -> None:
    try:
        fd = os.open(root / relpath, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidInput(f"{root / relpath}: became a symbolic link while it was being packed") from None
        raise InvalidInput(f"{root / relpath}: cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{root / relpath}: not a regular file")
        os.set_blocking(fd, True)
        info = tarfile.TarInfo(relpath)
        info.size, info.mode, info.mtime, info.type = st.st_size, 0o644, 0, tarfile.REGTYPE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        try:
            tar.addfile(info, fh)
        except OSError as exc:  # tarfile: "unexpected end of data" when the file shrank meanwhile
            raise InvalidInput(f"{root / relpath}: changed while it was being packed ({exc})") from None
