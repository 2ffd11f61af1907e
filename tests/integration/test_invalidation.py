"""Gateway replicas on one store keep their snapshots current through the audit chain (gateway/invalidation.py).

Two gateways (``bootstrap_gateway``, each its own platform and home, in this process) share one store, SQLite file
or PostgreSQL database; the CLI in its own process revokes a key, and a third platform publishes a version, moves
an alias, sets a price and changes a route. Both replicas must follow within a deadline far below ``cache_refresh_s``
(3600 s here, so the periodic reload explains nothing). With the embedded feed the replicas poll the audit head
(``invalidation_poll_s`` short); with NATS the poll is 3600 s too, so only the bus message can explain it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from modelmarket.adapters.blobs import FsBlobStore
from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.demo._digits import build_digits
from modelmarket.gateway.app import GatewayApp
from modelmarket.gateway.compose import bootstrap_gateway
from modelmarket.gateway.invalidation import touched
from modelmarket.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
DEADLINE_S = 15.0
"""How long a replica may take to follow a change here: generous for a loaded machine, far below the 3600 s
periodic refresh, so only the invalidation can meet it."""
PIXELS = [0.0, 3.0, 12.0, 14.0, 10.0, 1.0, 0.0, 0.0] * 8
INFER = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": PIXELS}]}


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``digits`` 1.0.0 as the demo builds it, and the same model as 1.1.0."""
    out = tmp_path_factory.mktemp("invalidation-packages")
    build_digits(out / "digits", out / "examples", lambda _: None)
    shutil.copytree(out / "digits", out / "digits-1.1.0")
    manifest_path = out / "digits-1.1.0" / "modelmarket.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["version"] = "1.1.0"
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    server = request.getfixturevalue("pg_server")
    dbname = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        yield server.url(dbname)
    finally:
        with psycopg.connect(server.admin_conninfo, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@dataclass
class Cluster:
    admin: Platform
    """The third place changes are made from (as the CLI does)."""
    replicas: list[httpx.AsyncClient]
    apps: list[GatewayApp]
    key: str
    packages: Path

    async def on_every_replica(self, what: str, holds: Callable[[httpx.AsyncClient], Awaitable[bool]]) -> None:
        """Wait until ``holds`` on every replica, up to ``DEADLINE_S``."""
        until = time.monotonic() + DEADLINE_S
        pending = list(self.replicas)
        while pending:
            pending = [client for client in pending if not await holds(client)]
            if pending and time.monotonic() > until:
                raise AssertionError(f"{what}: {len(pending)} of {len(self.replicas)} replicas never followed")
            await asyncio.sleep(0.05)


async def _cluster(
    packages: Path, root: Path, database_url: str, bus_url: str | None, namespace: str, poll_s: float
) -> tuple[Cluster, list[Platform]]:
    def settings(name: str) -> Settings:
        return Settings(
            home=root / name,
            database_url=database_url,
            bus_url=bus_url,
            bus_namespace=namespace,
            blob_url=None,  # the blob store is the one below, whatever the environment says
            cache_refresh_s=3600,
            invalidation_poll_s=poll_s,
            inprocess_runtimes="onnx",
            dashboard_enabled=False,
            metrics_enabled=False,
        )

    admin = bootstrap(settings("admin"))
    admin.accounts.create("demo-provider", "provider")
    admin.accounts.create("alice", "consumer")
    key = admin.accounts.issue_key("alice").secret
    admin.registry.publish(packages / "digits")
    admin.registry.move_alias("digits", "stable", "1.0.0")
    admin.routing.apply("routes:\n  - name: pick\n    targets: [{model: digits@1.0.0}]\n")
    blobs = FsBlobStore(root / "admin" / "blobs")  # one blob store, as S3 would be for a real fleet
    platforms = [bootstrap(settings(f"gw{i}"), blobs=blobs) for i in (1, 2)]
    apps = [GatewayApp(bootstrap_gateway(p, preload=False, metering_child=False)) for p in platforms]
    for app in apps:
        await app.startup()
    headers = {"authorization": f"Bearer {key}"}
    replicas = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=headers) for app in apps
    ]
    return Cluster(admin, replicas, apps, key, packages), platforms


@pytest.fixture(params=["embedded", "nats"])
async def cluster(
    request: pytest.FixtureRequest, packages: Path, tmp_path: Path, database_url: str
) -> AsyncIterator[Cluster]:
    if request.param == "nats":
        nats = request.getfixturevalue("nats_server")
        bus_url, poll_s = nats.url, 3600.0  # only the bus message can make a replica follow in time
    else:
        bus_url, poll_s = None, 0.2
    namespace = "t" + uuid.uuid4().hex[:12]
    built, platforms = await _cluster(packages, tmp_path, database_url, bus_url, namespace, poll_s)
    try:
        yield built
    finally:
        for client in built.replicas:
            await client.aclose()
        for app in built.apps:
            await app.shutdown()
        for platform in (*platforms, built.admin):
            platform.close()


def _cli(settings: Settings, *args: str) -> None:
    """Run ``modelmarket ARGS`` as its own process on the admin's home, store and bus."""
    env = {
        **os.environ,
        "MODELMARKET_HOME": str(settings.home),
        "MODELMARKET_DATABASE_URL": settings.resolved_database_url,
    }
    env["MODELMARKET_BUS_NAMESPACE"] = settings.bus_namespace
    env.pop("MODELMARKET_BUS_URL", None)
    if settings.bus_url is not None:
        env["MODELMARKET_BUS_URL"] = settings.bus_url
    done = subprocess.run(
        [sys.executable, "-m", "modelmarket.cli.main", *args], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()


async def _versions(client: httpx.AsyncClient, ref: str) -> list[str]:
    answer = await client.get(f"/v2/models/digits/versions/{ref}")
    assert answer.status_code == 200, answer.text
    versions: list[str] = answer.json()["versions"]
    return versions


async def _infer(client: httpx.AsyncClient, model: str) -> httpx.Response:
    answer = await client.post(f"/v2/models/{model}/infer", json=INFER)
    assert answer.status_code == 200, answer.text
    return answer


async def test_every_replica_follows_changes_made_elsewhere(cluster: Cluster) -> None:
    admin = cluster.admin
    # a second key, used on both replicas, then revoked from the third place
    doomed = admin.accounts.issue_key("alice")
    await cluster.on_every_replica("a new key", lambda c: _ok(c, doomed.secret))
    _cli(admin.settings, "keys", "revoke", doomed.key_id)  # another process, which exits at once
    await cluster.on_every_replica("the key's revocation", lambda c: _refused(c, doomed.secret))
    assert all([await _ok(c, cluster.key) for c in cluster.replicas])  # the other key still works

    # a new version moves `latest`; an alias moved by hand (neither is a miss: both names resolve before)
    for client in cluster.replicas:
        assert await _versions(client, "latest") == ["1.0.0"]
    admin.registry.publish(cluster.packages / "digits-1.1.0")
    await cluster.on_every_replica("the new version as latest", lambda c: _is(c, "latest", "1.1.0"))
    admin.registry.move_alias("digits", "stable", "1.1.0")
    await cluster.on_every_replica("the moved alias", lambda c: _is(c, "stable", "1.1.0"))

    # a price change: the next call on each replica is priced at the new price
    for client in cluster.replicas:
        assert (await _infer(client, "digits")).headers["x-modelmarket-cost"] == "0.001 USD"
    admin.prices.set_list_price("digits", Decimal("0.007"))
    await cluster.on_every_replica("the new price", lambda c: _costs(c, "0.007 USD"))

    # a route change: the route's target moves to the new version
    for client in cluster.replicas:
        assert (await _infer(client, "pick")).headers["x-modelmarket-route"] == "pick->digits@1.0.0"
    admin.routing.apply("routes:\n  - name: pick\n    targets: [{model: digits@1.1.0}]\n")
    await cluster.on_every_replica("the changed route", _routes_to_new_version)


async def _ok(client: httpx.AsyncClient, key: str) -> bool:
    return await _call_status(client, key) == 200


async def _refused(client: httpx.AsyncClient, key: str) -> bool:
    return await _call_status(client, key) == 401


async def _call_status(client: httpx.AsyncClient, key: str) -> int:
    """A call needs a key (metadata does not)."""
    headers = {"authorization": f"Bearer {key}"}
    return (await client.post("/v2/models/digits/infer", json=INFER, headers=headers)).status_code


async def _is(client: httpx.AsyncClient, ref: str, version: str) -> bool:
    return await _versions(client, ref) == [version]


async def _costs(client: httpx.AsyncClient, cost: str) -> bool:
    return (await _infer(client, "digits")).headers["x-modelmarket-cost"] == cost


async def _routes_to_new_version(client: httpx.AsyncClient) -> bool:
    return (await _infer(client, "pick")).headers["x-modelmarket-route"] == "pick->digits@1.1.0"


def test_audit_actions_map_to_the_snapshots_they_change() -> None:
    assert touched(["key.revoked", "invoice.finalized"]) == {"keys"}
    assert touched(["model.published", "alias.moved", "route.changed", "provider.removed"]) == {
        "catalogue",
        "routing",
    }
    assert touched(["price.set", "plan.changed", "subscription.changed", "limits.set"]) == {"economy"}
    assert touched(["privacy.key_policy_set", "account.created"]) == {"keys"}
    assert touched(["session.signed_in", "submission.created", "payout.recorded", "billing.rebuilt"]) == set()
