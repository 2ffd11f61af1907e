"""The Polyglot Gateway: the transport-free data plane and the ASGI edge serving OIP v2 and the marketplace API."""

from modelmarket.gateway.app import GatewayApp, GatewayParts
from modelmarket.gateway.compose import bootstrap_gateway, build_gateway
from modelmarket.gateway.dataplane import DataPlane

__all__ = ["DataPlane", "GatewayApp", "GatewayParts", "bootstrap_gateway", "build_gateway"]
