"""Reading a model package folder safely: its artifacts are regular files inside the folder, nothing else.

A package is data from an untrusted provider. Publishing reads its files with the platform's rights, so a file
that is really a door to somewhere else (``model.onnx -> /etc/passwd``, ``weights -> ~/.modelmarket``, a FIFO
that blocks the reader, a device) would publish and then serve what it points at. The rules, simplest safe
ones:

- **No symbolic links anywhere on an artifact's path**, files or folders, even links that point inside the
  package: a link is refused, never followed. Folders are walked without following links (``lstat`` on every
  entry, ``O_NOFOLLOW`` on every open), so ``en-us/`` with a link inside it is refused too.
- **Regular files only**: devices, FIFOs and sockets are refused, and so are regular files with more than one
  hard link (a hard link into the package is another name for a file outside it; copy the file instead).
- **The package folder itself** must not be a symbolic link (pass the real folder); the folders *above* it are
  the caller's choice and are resolved once, so every check and open below is relative to that real folder.
- **Canonical relative paths** (``artifact_path_problem``): no absolute path, ``..``, ``.``, empty component,
  trailing ``/`` or backslash; bounded length and depth.
- **Bounded**: at most ``MAX_PACKAGE_FILES`` files and ``MAX_PACKAGE_BYTES`` bytes per package, folders walked
  at most ``MAX_PATH_DEPTH`` deep.
- **Each file once**: the same path listed twice, or a file covered by two entries (a folder and a file in it),
  is refused.

Checking a path and then opening it by name leaves a gap in which the provider can swap a file for a link. Open
artifacts with ``PackageFile.open()`` (walks from the package folder with ``O_NOFOLLOW`` on every component and
checks the file is the very one that was collected) or at least ``open_package_file()`` (``O_NOFOLLOW`` on the
last component, then ``fstat``): either refuses what changed in between.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from modelmarket.core.errors import InvalidInput

if TYPE_CHECKING:
    from modelmarket.registry.manifest import Manifest

__all__ = [
    "MAX_ARTIFACT_PATH_CHARS",
    "MAX_PACKAGE_BYTES",
    "MAX_PACKAGE_FILES",
    "MAX_PACKAGE_FOLDERS",
    "MAX_PATH_DEPTH",
    "PackageFile",
    "artifact_path_problem",
    "collect_artifacts",
    "open_package_file",
]

MAX_PACKAGE_FILES = 10_000
MAX_PACKAGE_BYTES = 16 * 1024**3  # 16 GiB: a large model's weights, not a copy of a disk
MAX_PACKAGE_FOLDERS = 10_000
MAX_PATH_DEPTH = 32  # folders below the package folder
MAX_ARTIFACT_PATH_CHARS = 1_024
MAX_NAME_BYTES = 255  # one path component, the common filesystem limit

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the check opens at once (and is then refused) instead of blocking the reader.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_OUTSIDE = "must be a path inside the package folder (relative, without '..')"


def artifact_path_problem(path: str) -> str | None:
    """Why ``path`` is not a canonical artifact path (``model.onnx``, ``en-us/mdef``), or ``None`` if it is."""
    if len(path) > MAX_ARTIFACT_PATH_CHARS:
        return f"is {len(path):,} characters long; the limit is {MAX_ARTIFACT_PATH_CHARS:,}"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return "contains a control character: rename the file"
    if "\\" in path:
        return "use '/' between folders, not '\\'"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8: rename the file"
    parts = path.split("/")
    if path.startswith("/") or ".." in parts:
        return _OUTSIDE
    canonical = "/".join(part for part in parts if part not in ("", "."))
    if not canonical:
        return "names the package folder itself: list the files or folders inside it"
    if canonical != path:
        return f"write it as {canonical!r} (no '.' or empty components, no trailing '/')"
    if len(parts) > MAX_PATH_DEPTH:
        return f"is {len(parts)} folders deep; the limit is {MAX_PATH_DEPTH}"
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in parts):
        return f"has a file or folder name longer than {MAX_NAME_BYTES} bytes"
    return None


@dataclass(frozen=True, slots=True)
class PackageFile:
    """One artifact file as collected: where it is, and which file it was (to catch a swap before it is read)."""

    relpath: str  # canonical path inside the package, '/'-separated: the name the version stores and runners see
    path: Path  # absolute: ``root / relpath``
    root: Path  # the package folder, resolved
    size_bytes: int
    device: int
    inode: int

    def open(self) -> BinaryIO:
        """Open for reading, refusing anything that is no longer exactly the file that was collected.

        Walks from ``root`` one component at a time with ``O_NOFOLLOW``, so a folder or file swapped for a link
        after collection is refused, and checks device, inode and size against the collected ones.
        """
        fd = _open_under(self.root, self.relpath)
        try:
            st = os.fstat(fd)
            _check_regular(st, self.relpath)
            if (st.st_dev, st.st_ino, st.st_size) != (self.device, self.inode, self.size_bytes):
                raise InvalidInput(f"{self.relpath}: changed while the package was being published; publish again")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def open_package_file(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a package file for reading with ``O_RDONLY | O_NOFOLLOW``; refuse it unless it is a regular file.

    The type is checked on the opened descriptor (``fstat``), so a file swapped for a link, FIFO or device between
    an earlier check and this open is refused. Only the last component is protected from links: for artifacts
    prefer ``PackageFile.open()``, which protects every component.
    """
    shown = os.fspath(path)
    fd = _open_or_refuse(path, _FILE_FLAGS, shown)
    try:
        _check_regular(os.fstat(fd), shown)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def collect_artifacts(
    package_dir: Path,
    manifest: Manifest,
    *,
    max_files: int = MAX_PACKAGE_FILES,
    max_total_bytes: int = MAX_PACKAGE_BYTES,
) -> list[PackageFile]:
    """The package's artifact files, each entry's files in manifest order (a folder's files sorted by path).

    Raises ``InvalidInput`` naming the entry (``artifacts[1].path: ...``) for anything but a regular file inside
    the package (see the module docstring), an empty folder, a file covered twice, or a package over the bounds.
    """
    root = _package_root(package_dir)
    walk = _Walk(root, max_files, max_total_bytes)
    owner: dict[str, int] = {}
    files: list[PackageFile] = []
    root_fd = _open_or_refuse(root, _DIR_FLAGS, str(package_dir))
    try:
        for index, decl in enumerate(manifest.artifacts):
            field = f"artifacts[{index}].path"
            problem = artifact_path_problem(decl.path)
            if problem is not None:
                raise InvalidInput(f"{field}: {problem}")
            found = sorted(walk.entry(root_fd, decl.path, field), key=lambda f: f.relpath)
            if not found:
                raise InvalidInput(f"{field}: folder {decl.path!r} holds no files")
            for item in found:
                first = owner.setdefault(item.relpath, index)
                if first != index:
                    raise InvalidInput(
                        f"{field}: {item.relpath!r} is already listed by artifacts[{first}]: list each file once"
                    )
            files.extend(found)
    finally:
        os.close(root_fd)
    return files


def _package_root(package_dir: Path) -> Path:
    try:
        st = os.lstat(package_dir)
    except FileNotFoundError:
        raise InvalidInput(f"{package_dir}: no such folder") from None
    if stat.S_ISLNK(st.st_mode):
        raise InvalidInput(
            f"{package_dir}: the package folder is a symbolic link; pass the folder it points to "
            f"({os.path.realpath(package_dir)})"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"{package_dir}: not a folder (expected a model package folder)")
    return package_dir.resolve(strict=True)


class _Walk:
    """Collects the files of one entry after another, without following links, within the package's bounds."""

    def __init__(self, root: Path, max_files: int, max_total_bytes: int) -> None:
        self.root = root
        self.max_files = max_files
        self.max_total_bytes = max_total_bytes
        self.n_files = 0
        self.n_folders = 0
        self.total_bytes = 0

    def entry(self, root_fd: int, relpath: str, field: str) -> Iterator[PackageFile]:
        parts = relpath.split("/")
        fd = os.dup(root_fd)
        try:
            for depth, name in enumerate(parts[:-1]):
                shown = "/".join(parts[: depth + 1])
                if not stat.S_ISDIR(self._lstat(fd, name, shown, field).st_mode):
                    raise InvalidInput(f"{field}: {shown!r} is not a folder")
                child = _open_or_refuse(name, _DIR_FLAGS, shown, field, dir_fd=fd)
                os.close(fd)
                fd = child
            st = self._lstat(fd, parts[-1], relpath, field)
            if stat.S_ISDIR(st.st_mode):
                yield from self._folder(
                    _open_or_refuse(parts[-1], _DIR_FLAGS, relpath, field, dir_fd=fd), relpath, field
                )
            else:
                yield self._file(st, relpath, field)
        finally:
            os.close(fd)

    def _lstat(self, dir_fd: int, name: str, shown: str, field: str) -> os.stat_result:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise InvalidInput(f"{field}: {shown!r} does not exist in {self.root}") from None
        if stat.S_ISLNK(st.st_mode):
            raise InvalidInput(
                f"{field}: {shown!r} is a symbolic link; packages take regular files and folders only, never "
                "links (even to a file inside the package): copy the file in its place"
            )
        return st

    def _folder(self, dir_fd: int, relpath: str, field: str) -> Iterator[PackageFile]:
        """The files under the folder open as ``dir_fd`` (closed when done), sorted by name at each level."""
        try:
            self.n_folders += 1
            if self.n_folders > MAX_PACKAGE_FOLDERS:
                raise InvalidInput(f"{field}: the package has more than {MAX_PACKAGE_FOLDERS:,} folders, the limit")
            if relpath.count("/") + 1 > MAX_PATH_DEPTH:
                raise InvalidInput(f"{field}: {relpath!r} is more than {MAX_PATH_DEPTH} folders deep")
            for name in self._names(dir_fd, field):
                child = f"{relpath}/{name}"
                problem = artifact_path_problem(child)
                if problem is not None:
                    raise InvalidInput(f"{field}: {child!r} {problem}")
                st = self._lstat(dir_fd, name, child, field)
                if stat.S_ISDIR(st.st_mode):
                    yield from self._folder(
                        _open_or_refuse(name, _DIR_FLAGS, child, field, dir_fd=dir_fd), child, field
                    )
                else:
                    yield self._file(st, child, field)
        finally:
            os.close(dir_fd)

    def _names(self, dir_fd: int, field: str) -> list[str]:
        """The folder's entry names, sorted; read no further than the package's file bound allows."""
        names: list[str] = []
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                names.append(entry.name)
                if len(names) > self.max_files:
                    raise InvalidInput(f"{field}: a folder holds more than {self.max_files:,} entries, the limit")
        return sorted(names)

    def _file(self, st: os.stat_result, relpath: str, field: str) -> PackageFile:
        _check_regular(st, relpath, field)
        self.n_files += 1
        self.total_bytes += st.st_size
        if self.n_files > self.max_files:
            raise InvalidInput(f"{field}: the package has more than {self.max_files:,} files, the limit")
        if self.total_bytes > self.max_total_bytes:
            raise InvalidInput(
                f"{field}: the package's files add up to more than {self.max_total_bytes:,} bytes, the limit"
            )
        return PackageFile(
            relpath=relpath,
            path=self.root / relpath,
            root=self.root,
            size_bytes=st.st_size,
            device=st.st_dev,
            inode=st.st_ino,
        )


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular(st: os.stat_result, shown: str, field: str | None = None) -> None:
    where = f"{field}: {shown!r}" if field else shown
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise InvalidInput(f"{where} is {kind}; packages take regular files only")
    if st.st_nlink > 1:
        raise InvalidInput(
            f"{where} has {st.st_nlink} hard links, so it is also a file elsewhere; packages take files of their "
            "own only: replace it with a copy"
        )


def _open_under(root: Path, relpath: str) -> int:
    """A descriptor of ``root/relpath`` opened one component at a time, never following a link."""
    fd = _open_or_refuse(root, _DIR_FLAGS, str(root))
    parts = relpath.split("/")
    try:
        for depth, name in enumerate(parts):
            flags = _FILE_FLAGS if depth == len(parts) - 1 else _DIR_FLAGS
            child = _open_or_refuse(name, flags, "/".join(parts[: depth + 1]), dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_or_refuse(
    path: str | os.PathLike[str], flags: int, shown: str, field: str | None = None, *, dir_fd: int | None = None
) -> int:
    """``os.open``, with each way it can fail on a package file turned into an ``InvalidInput`` that says why."""
    where = f"{field}: {shown!r}" if field else repr(shown)
    try:
        return os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise InvalidInput(f"{where} is a symbolic link; packages take regular files only") from None
        if exc.errno == errno.ENOTDIR:
            raise InvalidInput(
                f"{where} is not a folder (or is a symbolic link to one); packages take real folders, never links"
            ) from None
        if exc.errno == errno.ENOENT:
            raise InvalidInput(f"{where} does not exist") from None
        if exc.errno == errno.ENXIO:
            raise InvalidInput(f"{where} is a socket or device; packages take regular files only") from None
        raise InvalidInput(f"{where} cannot be opened: {exc.strerror}") from None
