"""Writing package files: atomic, byte-stable, and untouched when already identical."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from modelmarket.runtime.base import ModelSpec, TensorSpec

PROVIDER = "demo-provider"
FILE_MODE = 0o644


def write_bytes(path: Path, data: bytes) -> None:
    """Write atomically; leave an identical existing file untouched."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a file, or every file under a directory keeping relative paths."""
    if src.is_dir():
        for child in sorted(src.rglob("*")):
            if child.is_file():
                write_bytes(dst / child.relative_to(src), child.read_bytes())
    else:
        write_bytes(dst, src.read_bytes())


def write_json(path: Path, doc: Any) -> None:
    write_bytes(path, (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))


def write_manifest(package_dir: Path, manifest: Mapping[str, Any]) -> None:
    text = yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=None, width=110, allow_unicode=True)
    write_bytes(package_dir / "modelmarket.yaml", text.encode("utf-8"))


def tensor(name: str, datatype: str, shape: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def manifest(
    *,
    name: str,
    task: str,
    modality: str,
    runtime: str,
    license_id: str,
    artifacts: Sequence[str],
    parameters: Mapping[str, Any],
    inputs: Sequence[dict[str, Any]],
    outputs: Sequence[dict[str, Any]],
    unit: str,
    price_per_iu: str | None = None,
    split_prices: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A manifest without its card (added once the metrics are measured).

    Prices are USD: ``price_per_iu`` for every IU, or ``split_prices`` (input, output) for a ``tokens_1k`` model
    that prices input and output tokens apart; exactly one of the two.
    """
    if (price_per_iu is None) == (split_prices is None):
        raise ValueError("manifest(): give exactly one of price_per_iu and split_prices")
    pricing: dict[str, str] = {"unit": unit}
    if price_per_iu is not None:
        pricing["price_per_iu"] = price_per_iu
    if split_prices is not None:
        pricing["input_price_per_iu"], pricing["output_price_per_iu"] = split_prices
    pricing["currency"] = "USD"
    return {
        "name": name,
        "version": "1.0.0",
        "task": task,
        "modality": modality,
        "runtime": runtime,
        "provider": PROVIDER,
        "license": license_id,
        "artifacts": [{"path": path} for path in artifacts],
        "parameters": dict(parameters),
        "inputs": list(inputs),
        "outputs": list(outputs),
        "pricing": pricing,
    }


def spec_for(package_dir: Path, doc: Mapping[str, Any]) -> ModelSpec:
    """The ModelSpec a runner would get for this package, with the artifacts used in place."""

    def tensors(docs: Sequence[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(d["name"], d["datatype"], tuple(d["shape"])) for d in docs)

    return ModelSpec(
        name=doc["name"],
        version=doc["version"],
        runtime=doc["runtime"],
        artifact_root=package_dir,
        artifacts=tuple(a["path"] for a in doc["artifacts"]),
        inputs=tensors(doc["inputs"]),
        outputs=tensors(doc["outputs"]),
        parameters=dict(doc["parameters"]),
    )


def decimal4(value: float) -> str:
    """A metric value as a quoted decimal string with four places."""
    return f"{value:.4f}"
