"""``GET /openapi.json`` on the gateway as ``bootstrap_gateway`` composes it (SQLite store, the OpenAI edge, the
marketplace router), in-process over httpx.ASGITransport."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from modelmarket.bootstrap import bootstrap
from modelmarket.gateway.app import GatewayApp
from modelmarket.gateway.compose import bootstrap_gateway
from modelmarket.gateway.openapi import build_document
from modelmarket.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


async def test_the_served_document_is_the_modules_needs_no_key_and_says_truly_which_calls_do(tmp_path: Path) -> None:
    platform = bootstrap(Settings(home=tmp_path / "home"))
    app = GatewayApp(bootstrap_gateway(platform, preload=False, metering_child=False))
    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            response = await client.get("/openapi.json")
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            served = response.json()
            assert served == build_document()
            for path, item in served["paths"].items():
                for method, op in item.items():
                    url = re.sub(r"\{[^}]*\}", "nothing", path)
                    answer = await client.request(method.upper(), url)
                    secured = op["security"] == [{"bearerAuth": []}]
                    assert (answer.status_code == 401) == secured, f"{method.upper()} {path}: {answer.status_code}"
    finally:
        await app.shutdown()
        platform.store.dispose()
