"""A Runtime shipped as its own distribution (entry point group modelmarket.runtimes) is published, served and
billed like the built-in ones: the plug-in seam works end to end."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import yaml
from tests.e2e.conftest import COLD_START_S, Cli, start_gateway, stop_gateway

RUNTIME_SOURCE = """
from modelmarket.runtime.base import Runtime, bytes_tensor


class ShoutRuntime(Runtime):
    name = "shout"

    def load(self) -> None:
        self.suffix = self.spec.artifact("suffix.txt").read_bytes().strip()

    def predict(self, inputs, parameters):
        texts = [t.upper() + self.suffix for t in inputs[0].data.reshape(-1)]
        return [bytes_tensor("shouted", texts)]
"""


@dataclass
class PluginCli(Cli):
    plugin_path: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        assert self.plugin_path is not None
        env["PYTHONPATH"] = str(self.plugin_path)
        return env


def _install_plugin(site: Path) -> None:
    """Lay out an installed distribution by hand: the module plus its dist-info with the entry point."""
    (site / "mm_shout").mkdir(parents=True)
    (site / "mm_shout" / "__init__.py").write_text(textwrap.dedent(RUNTIME_SOURCE))
    info = site / "mm_shout-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mm-shout\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[modelmarket.runtimes]\nshout = mm_shout:ShoutRuntime\n")


def _package(dest: Path) -> Path:
    dest.mkdir()
    (dest / "suffix.txt").write_text("!\n")
    manifest = {
        "name": "shouter",
        "version": "0.1.0",
        "task": "text-generation",
        "modality": "text",
        "runtime": "shout",
        "provider": "plugin-co",
        "license": "MIT",
        "artifacts": [{"path": "suffix.txt"}],
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "shouted", "datatype": "BYTES", "shape": [-1]}],
        "pricing": {"unit": "request", "price_per_iu": "0.0500", "currency": "EUR"},
        "card": {"summary": "Upper-cases text and appends the suffix artifact."},
    }
    (dest / "modelmarket.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dest


def test_a_plugin_runtime_is_published_served_and_billed(tmp_path: Path) -> None:
    _install_plugin(tmp_path / "site")
    cli = PluginCli(tmp_path / "home", plugin_path=tmp_path / "site")
    cli.run("accounts", "create", "plugin-co", "--role", "provider")
    assert cli.run("publish", str(_package(tmp_path / "pkg"))).stdout.startswith("published: shouter 0.1.0")
    key = cli.new_consumer("listener")
    gw = start_gateway(cli, models=("shouter",))
    try:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hello", "world"]}]}
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=COLD_START_S) as http:
            r = http.post("/v2/models/shouter/infer", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == ["HELLO!", "WORLD!"]
            usage = http.get("/api/usage").json()
    finally:
        stop_gateway(gw)
    assert usage["total_events"] == 1 and usage["currency"] == "EUR"
    assert Decimal(usage["total_amount"]) == Decimal("0.0500")


def test_a_manifest_naming_a_runtime_that_is_not_installed_is_refused(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")  # no plug-in on the path this time
    cli.run("accounts", "create", "plugin-co", "--role", "provider")
    result = cli.run("publish", str(_package(tmp_path / "pkg")), check=False)
    assert result.returncode == 1
    assert "runtime: unknown runtime 'shout'" in result.stderr and "onnx" in result.stderr
