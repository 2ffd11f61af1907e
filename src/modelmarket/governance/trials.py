"""What the gate does with a model running in its sandbox: the smoke test (the manifest's examples, with their
expected outputs), the benchmark (latency p50/p95, throughput, memory) and the bias stage's predictions."""

from __future__ import annotations

import math
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelmarket.core.errors import DomainError
from modelmarket.governance.policy import BenchmarkPolicy
from modelmarket.governance.ports import Trial
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.registry.declarations import EvaluationDecl, ExampleDecl, flatten

BlobOf = Callable[[str], Path]
"""A package path -> the stored file holding it."""
EVAL_BATCH_ROWS = 256
MAX_EXAMPLE_FILE_BYTES = 64 * 1024 * 1024
MAX_SHOWN = 5


def example_request(version: VersionRecord, example: ExampleDecl, blob_of: BlobOf) -> tuple[dict[str, Any], bytes]:
    """The OIP request of ``example``: JSON inputs, and a ``file`` input sent as one BYTES element through the
    binary tensor extension (its 4-byte length, then its bytes)."""
    declared = {t.name: t for t in version.manifest.inputs}
    inputs: list[dict[str, Any]] = []
    binary = b""
    for item in example.inputs:
        datatype = declared[item.name].datatype
        if item.file is not None:
            path = blob_of(item.file)
            if path.stat().st_size > MAX_EXAMPLE_FILE_BYTES:
                raise DomainError(
                    f"example {example.name!r}: {item.file} is larger than {MAX_EXAMPLE_FILE_BYTES:,} bytes, the most "
                    "one example may send"
                )
            data = path.read_bytes()
            element = struct.pack("<I", len(data)) + data
            inputs.append(
                {
                    "name": item.name,
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(element)},
                }
            )
            binary += element
        else:
            inputs.append({"name": item.name, "datatype": datatype, "shape": item.shape, "data": flatten(item.data)})
    return {"id": f"gate-{example.name}", "inputs": inputs}, binary


MAX_ANSWER_DEPTH = 8
"""Deepest nesting of an output's ``data`` the gate reads (OIP answers are flat; a tensor has at most 8 dims)."""


def _outputs(answer: dict[str, Any]) -> dict[str, list[Any]]:
    """The answer's outputs by name, flattened; ``DomainError`` for an answer that is not an OIP answer."""
    outputs = answer.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise DomainError("the model's answer has no 'outputs' list of tensors")
    found: dict[str, list[Any]] = {}
    for out in outputs:
        if isinstance(out.get("name"), str):
            found[out["name"]] = _flat(out.get("data", []), 0)
    return found


def _flat(value: Any, depth: int) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    if depth >= MAX_ANSWER_DEPTH:
        raise DomainError(f"an output's data is nested more than {MAX_ANSWER_DEPTH} lists deep")
    out: list[Any] = []
    for item in value:
        out.extend(_flat(item, depth + 1))
    return out


def _mismatch(expected: Sequence[Any], got: Sequence[Any], tolerance: float) -> str | None:
    if len(expected) != len(got):
        return f"{len(got)} value(s), expected {len(expected)}"
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        if isinstance(want, bool | str):
            ok = want == have
        elif isinstance(want, int | float) and isinstance(have, int | float) and not isinstance(have, bool):
            ok = math.isfinite(have) and abs(have - want) <= tolerance
        else:
            ok = False
        if not ok:
            return f"value [{i}] is {_short(have)!r}, expected {_short(want)!r}" + (
                f" (within {tolerance:g})" if isinstance(want, int | float) and not isinstance(want, bool) else ""
            )
    return None


def smoke_test(trial: Trial, version: VersionRecord, blob_of: BlobOf) -> tuple[bool, str, dict[str, Any]]:
    """Each example called once: the call must succeed, answer every declared output, and hold the expected
    values. Without examples, starting in the sandbox (already done) is the whole test."""
    examples = version.manifest.examples or []
    results: list[dict[str, Any]] = []
    problems: list[str] = []
    declared = {t.name for t in version.manifest.outputs}
    for example in examples:
        request, binary = example_request(version, example, blob_of)
        started = time.perf_counter()
        try:
            answer = trial.infer(request, binary)
        except DomainError as exc:
            problems.append(f"example {example.name!r}: {exc.message}")
            results.append({"example": example.name, "ok": False, "error": exc.message})
            continue
        ms = (time.perf_counter() - started) * 1000
        outputs = _outputs(answer)
        wrong = [f"output {name!r} missing from the answer" for name in sorted(declared - outputs.keys())]
        for name, values in (example.expect or {}).items():
            why = _mismatch(flatten(values), outputs.get(name, []), example.tolerance)
            if why is not None and name in outputs:
                wrong.append(f"output {name!r}: {why}")
        problems.extend(f"example {example.name!r}: {w}" for w in wrong)
        shown = {name: [_short(v) for v in values[:MAX_SHOWN]] for name, values in outputs.items() if name in declared}
        results.append({"example": example.name, "ok": not wrong, "ms": round(ms, 3), "outputs": shown})
    report: dict[str, Any] = {"profile": trial.profile, "examples": results, "problems": problems}
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return False, f"failed: {problems[0]}{more}", report
    if not examples:
        return True, f"started in the {trial.profile} sandbox (the package declares no examples)", report
    checked = sum(1 for e in examples if e.expect)
    return True, f"{len(examples)} example(s) answered in the {trial.profile} sandbox, {checked} checked", report


def benchmark(
    trial: Trial, version: VersionRecord, blob_of: BlobOf, policy: BenchmarkPolicy
) -> tuple[bool, str, dict[str, Any]]:
    """One warm-up call with the first example, then up to ``policy.calls`` calls within ``policy.seconds``,
    one at a time: latency p50/p95, throughput, the runner's resident memory."""
    examples = version.manifest.examples or []
    example = examples[0] if examples else None
    if example is None:
        return True, "skipped: the package declares no example to time", {"skipped": True}
    request, binary = example_request(version, example, blob_of)
    trial.infer(request, binary)
    latencies: list[float] = []
    rss = trial.rss_bytes() or 0
    deadline = time.perf_counter() + policy.seconds
    started = time.perf_counter()
    while len(latencies) < policy.calls and (not latencies or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        trial.infer(request, binary)
        latencies.append((time.perf_counter() - t0) * 1000)
        rss = max(rss, trial.rss_bytes() or 0)
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    figures = {
        "example": example.name,
        "calls": len(latencies),
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], 3),
        "throughput_rps": round(len(latencies) / elapsed, 2) if elapsed > 0 else None,
        "rss_mb": round(rss / 1024 / 1024, 1) if rss else None,
        "profile": trial.profile,
    }
    rss_text = f", RSS {figures['rss_mb']} MB" if figures["rss_mb"] else ""
    summary = (
        f"p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, {figures['throughput_rps']} calls/s"
        f"{rss_text} ({len(latencies)} calls)"
    )
    return True, summary, figures


def predict_labels(
    trial: Trial, version: VersionRecord, decl: EvaluationDecl, rows: Sequence[Sequence[float]]
) -> list[str]:
    """The model's predicted label for each evaluation row, in batches, as text (``1``, not ``1.0``)."""
    input_name = decl.input or version.manifest.inputs[0].name
    output_name = decl.output or version.manifest.outputs[0].name
    datatype = next(t.datatype for t in version.manifest.inputs if t.name == input_name)
    integer = datatype.startswith(("INT", "UINT"))
    labels: list[str] = []
    for start in range(0, len(rows), EVAL_BATCH_ROWS):
        batch = rows[start : start + EVAL_BATCH_ROWS]
        data = [int(v) if integer else float(v) for row in batch for v in row]
        request = {
            "id": f"gate-bias-{start}",
            "inputs": [{"name": input_name, "datatype": datatype, "shape": [len(batch), len(batch[0])], "data": data}],
            "outputs": [{"name": output_name}],
        }
        got = _outputs(trial.infer(request)).get(output_name)
        if got is None or len(got) != len(batch):
            raise DomainError(
                f"evaluation: the model's output {output_name!r} holds {0 if got is None else len(got)} value(s) for "
                f"{len(batch)} rows: the bias stage needs one label per row"
            )
        labels.extend(_label_text(v) for v in got)
    return labels


def _short(value: Any) -> Any:
    """A value from a model's answer as shown in a report: long text cut."""
    if isinstance(value, str) and len(value) > 100:
        return value[:100] + "..."
    return value


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
