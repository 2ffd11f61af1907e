"""The Polyglot Gateway: one ASGI app serving OIP v2 and the marketplace API."""

from modelmarket.gateway.app import GatewayApp

__all__ = ["GatewayApp"]
