"""KServe's own Python client parses our health and readiness answers (OIP v2 bodies, not empty ones)."""

from __future__ import annotations

import pytest
from kserve import InferenceRESTClient, RESTConfig

from .conftest import Gateway

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


async def test_kserve_rest_client_reads_live_and_ready(gateway: Gateway) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=10))
    try:
        assert await client.is_server_live(gateway.url) is True
        assert await client.is_server_ready(gateway.url) is True
        assert await client.is_model_ready(gateway.url, "digits") is True
    finally:
        await client.close()
