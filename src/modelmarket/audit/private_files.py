"""Small private files in the home's keys folder (the checkpoint key, the latest checkpoints kept outside the
store): read and written without following symbolic links, owned by this user and unreadable by others."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from modelmarket.core.errors import InvalidInput

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def read_private(path: Path, max_bytes: int) -> bytes | None:
    """The bytes of ``path`` (None: there is no such file). Refused, naming the file and the fix: a symbolic link,
    anything but a regular file, a file owned by another user or open to group or others, one over ``max_bytes``.
    Every check is made on the file descriptor that is then read, so the file cannot be swapped in between."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidInput(f"{path} is a symbolic link: put the file itself there") from None
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise InvalidInput(
                f"{path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()}): "
                f"`chown {os.geteuid()} {path}` if it is yours, then retry"
            )
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidInput(f"{path} is readable by other users: `chmod 600 {path}`, then retry")
        if info.st_size > max_bytes:
            raise InvalidInput(f"{path} is over {max_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise InvalidInput(f"{path} is over {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def private_dir(folder: Path) -> int:
    """An open descriptor of ``folder`` (created 0700 when missing), which must be a real folder, not a link."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except OSError as exc:
        why = "is a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else f"cannot be opened: {exc.strerror}"
        raise InvalidInput(f"{folder} {why}: the keys folder must be a private folder of its own") from None
    os.fchmod(fd, 0o700)
    return fd


def write_private(folder: Path, name: str, data: bytes) -> None:
    """Replace ``folder/name`` by ``data`` atomically: written (0600) and synced to a new file beside it, then
    renamed over it. A symbolic link at ``name`` is replaced, never followed; the folder is synced after."""
    dir_fd = private_dir(folder)
    try:
        tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
