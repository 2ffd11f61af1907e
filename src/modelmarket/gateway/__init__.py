"""The Polyglot Gateway: the transport-free data plane and the ASGI edge serving OIP v2 and the marketplace API.

Names are imported on first use, so a child started as ``python -m modelmarket.gateway.metering_process`` does
not load the whole gateway first.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DataPlane", "GatewayApp", "GatewayParts", "bootstrap_gateway", "build_gateway"]
_HOME = {
    "DataPlane": "modelmarket.gateway.dataplane",
    "GatewayApp": "modelmarket.gateway.app",
    "GatewayParts": "modelmarket.gateway.app",
    "bootstrap_gateway": "modelmarket.gateway.compose",
    "build_gateway": "modelmarket.gateway.compose",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'modelmarket.gateway' has no attribute {name!r}")
