"""Routing: model names that answer with one of several catalogue models (routes, declared in YAML), chosen by a
strategy with retries, fallbacks and circuit breakers (the pure ``Router``), and the upstream providers a model
may be served from."""

from modelmarket.routing.engine import Router, RouteStatus, RouteTable, RouteUnavailable, TargetStatus
from modelmarket.routing.service import ProviderChange, RouteChange, RoutingService
from modelmarket.routing.spec import Provider, RouteSpec, make_provider, parse_routes

__all__ = [
    "Provider",
    "ProviderChange",
    "RouteChange",
    "RouteSpec",
    "RouteStatus",
    "RouteTable",
    "RouteUnavailable",
    "Router",
    "RoutingService",
    "TargetStatus",
    "make_provider",
    "parse_routes",
]
