"""A bake-off (lab.bakeoff) of the demo's two digits classifiers on the held-out images, each in its sandboxed
trial runner: the leaderboard's accuracies equal what the models' cards declare (measured on the same images by
the demo build), the costs are the list prices times 1,000 calls, and the result is stored for the model pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.requests import Request

from modelmarket.bootstrap import PluginRuntimes, bootstrap
from modelmarket.core.errors import InvalidInput
from modelmarket.dashboard.pages_catalogue import catalogue_pages
from modelmarket.dashboard.web import DashboardContext, View
from modelmarket.gateway.compose import bootstrap_gateway
from modelmarket.settings import Settings

pytestmark = pytest.mark.timeout(300)


def test_a_bakeoff_leaderboard_matches_the_models_cards(tmp_path: Path, demo_dir: Path) -> None:
    platform = bootstrap(Settings(home=tmp_path / "home"), runtimes=PluginRuntimes())
    try:
        platform.accounts.create("demo-provider", "provider")
        for name in ("digits", "digits-mlp"):
            platform.registry.publish(demo_dir / name)
        dataset = demo_dir / "examples" / "digits-holdout.jsonl"
        said: list[str] = []
        result = platform.bakeoffs.run(["digits", "digits-mlp@1.0.0"], dataset, said.append)
        doc = result.to_json()
        board = {e["model"]: e for e in doc["leaderboard"]}
        assert doc["examples"] == 450  # the 25% hold-out of the 1,797 images
        for name, entry in board.items():
            card = platform.registry.catalogue().resolve(name).manifest.card.metrics[0]
            assert (card.name, entry["accuracy"]) == ("test_accuracy", card.value), name
            assert entry["card_accuracy"] == card.value and entry["errors"] == 0
            assert entry["latency_ms"]["p50"] is not None and entry["latency_ms"]["p95"] >= entry["latency_ms"]["p50"]
        assert [e["rank"] for e in doc["leaderboard"]] == [1, 2]
        assert doc["leaderboard"][0]["correct"] >= doc["leaderboard"][1]["correct"]
        # one image per call: 1,000 calls x 1 IU x the list price
        assert (board["digits"]["cost_per_1000_calls"], board["digits-mlp"]["cost_per_1000_calls"]) == ("1.00", "2.00")
        assert any("starting its runner in its sandbox" in line for line in said)
        assert platform.bakeoffs.of_model("digits-mlp") == [json.loads(json.dumps(doc))]

        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"inputs": [], "label": "1"}\nnot json\n')
        with pytest.raises(InvalidInput, match="line 2: not JSON"):
            platform.bakeoffs.run(["digits"], bad)
        bad.write_text('{"inputs": []}\n')
        with pytest.raises(InvalidInput, match="line 1"):
            platform.bakeoffs.run(["digits"], bad)
    finally:
        platform.close()


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_model_page_shows_its_bakeoffs(tmp_path: Path, demo_dir: Path) -> None:
    platform = bootstrap(Settings(home=tmp_path / "home"), runtimes=PluginRuntimes())
    try:
        platform.accounts.create("demo-provider", "provider")
        for name in ("digits", "digits-mlp"):
            platform.registry.publish(demo_dir / name)
        few = tmp_path / "few.jsonl"  # the first 20 hold-out images
        few.write_text("".join((demo_dir / "examples" / "digits-holdout.jsonl").read_text().splitlines(True)[:20]))
        platform.bakeoffs.run(["digits", "digits-mlp"], few)
        parts = bootstrap_gateway(platform, preload=False, metering_child=False)
        await parts.state.reload()
        ctx = DashboardContext(platform, parts)
        (page,) = [p for p in catalogue_pages(ctx) if p.path == "/models/{name}"]
        scope = {
            "type": "http", "method": "GET", "path": "/models/digits-mlp", "raw_path": b"/models/digits-mlp",
            "query_string": b"", "headers": [(b"host", b"dashboard")], "path_params": {"name": "digits-mlp"},
            "scheme": "http", "server": ("dashboard", 80), "root_path": "",
        }  # fmt: skip
        answer = await page.handler(View(Request(scope), ctx, None))
        text = bytes(answer.body).decode()
        assert answer.status_code == 200 and "<h2>Bake-offs</h2>" in text
        assert "20 examples of <code>few.jsonl</code>" in text and "digits-mlp@1.0.0" in text and "digits@1.0.0" in text
    finally:
        platform.close()
