"""The gate's scan: every artifact's name against the operator's allow-list, and pickle content through
``picklescan``. A scan is a signal, never the gate: pickle scanners are bypassed in the wild, so whatever passes
here still loads only inside a sandbox (the smoke test runs it there)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from picklescan.scanner import SafetyLevel, scan_bytes

from modelmarket.governance.policy import PICKLE_EXTENSIONS, ScanPolicy
from modelmarket.registry.catalogue import ArtifactRecord

MAX_SCAN_BYTES = 256 * 1024 * 1024
"""Pickles larger than this are not read whole by the scanner: they fail the scan (ask for .safetensors/.skops)."""
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
SCANNED_SUFFIXES = frozenset((*PICKLE_EXTENSIONS, ".npy", ".npz"))


def allowed(path: str, allow: tuple[str, ...]) -> bool:
    name = PurePosixPath(path).name
    return any(name.endswith(entry) if entry.startswith(".") else name == entry for entry in allow)


def _scanned(path: str, head: bytes) -> bool:
    """Whether the file goes through the pickle scanner: a pickle-like suffix whatever its first bytes (protocol 0
    and 1 pickles have no header; ``.npy``, ``.npz``, ``.pt`` can hold pickles), or a pickle protocol header."""
    return PurePosixPath(path).suffix.lower() in SCANNED_SUFFIXES or head[:2] in PICKLE_MAGIC


def scan_artifacts(
    artifacts: tuple[ArtifactRecord, ...], blob_path: Callable[[str], Path], policy: ScanPolicy
) -> tuple[bool, str, dict[str, Any]]:
    """``(passed, summary, report)``: a file type outside the allow-list, or a pickle importing something
    dangerous (``os.system``, ``builtins.exec``, ``subprocess``...) fails; suspicious imports are reported."""
    problems: list[str] = []
    pickles: list[dict[str, Any]] = []
    if len(artifacts) > policy.max_files:
        problems.append(f"{len(artifacts)} files; the gate's policy allows at most {policy.max_files}")
    for art in artifacts:
        if not allowed(art.path, policy.allow):
            problems.append(f"{art.path}: file type not allowed by the gate's policy (scan.allow)")
            continue
        with open(blob_path(art.sha256), "rb") as fh:
            head = fh.read(2)
            if not _scanned(art.path, head):
                continue
            if art.size_bytes > MAX_SCAN_BYTES:
                problems.append(f"{art.path}: a pickle of {art.size_bytes:,} bytes is too large to scan")
                continue
            fh.seek(0)
            data = fh.read()
        result = scan_bytes(io.BytesIO(data), art.path, PurePosixPath(art.path).suffix.lower() or None)
        dangerous = sorted({f"{g.module}.{g.name}" for g in result.globals if g.safety == SafetyLevel.Dangerous})
        suspicious = sorted({f"{g.module}.{g.name}" for g in result.globals if g.safety == SafetyLevel.Suspicious})
        pickles.append({"path": art.path, "dangerous": dangerous, "suspicious": suspicious, "error": result.scan_err})
        if result.scan_err:
            problems.append(f"{art.path}: the pickle could not be scanned (malformed)")
        elif dangerous:
            problems.append(f"{art.path}: the pickle imports {', '.join(dangerous)} (dangerous)")
    report: dict[str, Any] = {"files": len(artifacts), "pickles": pickles, "problems": problems}
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return False, f"blocked: {problems[0]}{more}", report
    note = f", {len(pickles)} pickle(s) scanned clean (they load only in a sandbox)" if pickles else ""
    return True, f"{len(artifacts)} file(s), all of an allowed type{note}", report
