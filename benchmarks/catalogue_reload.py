"""Catalogue reload at 10,000 published versions: a full load (every version fetched and parsed, what every
reload cost before versions were reused) against the gateway's incremental reload (only new versions parsed).

Prints, measured in one run on this machine, the median of several reloads of each kind and their ratio. It
builds its own SQLite store in a temporary folder (rows written directly, in one transaction, so the setup
takes seconds rather than 10,000 publishes).

Usage: python benchmarks/catalogue_reload.py [--versions N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from modelmarket.adapters.store import SqlStore, open_store
from modelmarket.registry import CatalogueLoader
from modelmarket.registry.catalogue import ArtifactRecord
from modelmarket.registry.ports import StoredModel, StoredVersion

VERSIONS_PER_MODEL = 10


def _manifest(name: str, version: str) -> str:
    return json.dumps(
        {
            "name": name,
            "version": version,
            "task": "image-classification",
            "modality": "image",
            "runtime": "onnx",
            "provider": "bench",
            "license": "MIT",
            "artifacts": [{"path": "model.onnx"}],
            "parameters": {"model_file": "model.onnx"},
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
            "pricing": {"unit": "image", "price_per_iu": "0.0010", "currency": "USD"},
            "card": {"summary": f"{name} {version}", "metrics": [{"name": "accuracy", "value": "0.97"}]},
        },
        sort_keys=True,
    )


def populate(store: SqlStore, versions: int) -> None:
    with store.write() as uow:
        conn = uow.conn
        from modelmarket.adapters.store import schema as t  # only the benchmark writes accounts rows directly

        conn.execute(t.accounts.insert().values(id="acc_bench", name="bench", role="provider", created_at="x"))
        for n in range(versions):
            name, minor = f"model-{n // VERSIONS_PER_MODEL:05d}", n % VERSIONS_PER_MODEL
            if minor == 0:
                uow.registry.add_model(StoredModel(name, "acc_bench", "2026-01-01T00:00:00+00:00"))
            version = f"1.{minor}.0"
            uow.registry.add_version(_stored(n, name, version, minor))


def _stored(n: int, name: str, version: str, minor: int) -> StoredVersion:
    return StoredVersion(
        id=f"ver_{n:08d}",
        model_name=name,
        version=version,
        semver=(1, minor, 0),
        digest=f"{n:064x}",
        manifest_json=_manifest(name, version),
        created_at="2026-01-01T00:00:00+00:00",
        provider_account_id="acc_bench",
        artifacts=(ArtifactRecord("model.onnx", f"{n:064x}", 1000),),
    )


def _median_ms(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm-bench-catalogue-") as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'modelmarket.db'}")
        started = time.perf_counter()
        populate(store, args.versions)
        print(f"populated {args.versions:,} versions in {time.perf_counter() - started:.1f}s")
        warm = CatalogueLoader(store)
        assert warm.load().version_count == args.versions
        full_ms = _median_ms(lambda: CatalogueLoader(store).load(), args.repeat)
        incremental_ms = _median_ms(warm.load, args.repeat)
        print(f"full reload (fetch and parse every version): {full_ms:9.1f} ms")
        print(f"incremental reload (nothing new):            {incremental_ms:9.1f} ms")
        print(f"ratio full / incremental:                    {full_ms / incremental_ms:9.1f}x")
        store.dispose()


if __name__ == "__main__":
    main()
