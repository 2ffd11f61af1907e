"""``modelmarket cluster up|status|down|chaos``: the platform on real engines (PostgreSQL, NATS JetStream,
SeaweedFS, Envoy in front of N gateways), all on loopback, from one home (docs/scale-out.md)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from modelmarket.settings import Settings


def _failures() -> tuple[type[Exception], ...]:
    """What a cluster command reports as a message (imported late: `modelmarket --help` stays fast)."""
    from modelmarket.cluster.engine import EngineUnavailable
    from modelmarket.cluster.manager import ClusterError
    from modelmarket.cluster.postgres import PostgresUnavailable

    return (ClusterError, EngineUnavailable, PostgresUnavailable)


def _home() -> Path:
    return Settings().home.resolve()


def _progress(msg: str) -> None:
    click.echo(f"[cluster] {msg}", err=True)


@click.group()
def cluster() -> None:
    """Run the platform as a cluster on this machine: PostgreSQL, NATS JetStream, SeaweedFS (S3), one metering
    consumer, N gateway replicas and Envoy in front, all on 127.0.0.1; state in MODELMARKET_HOME/cluster."""


@cluster.command("up")
@click.option(
    "--replicas", type=click.IntRange(1, 16), default=None, help="Gateway replicas [default: 2, or as before]."
)
@click.option(
    "--partitions", type=click.IntRange(1, 64), default=None, help="Event log partitions [default: 1, or as before]."
)
def cluster_up(replicas: int | None, partitions: int | None) -> None:
    """Start every part that is not running (a second `up` says what already runs); print the front URL."""
    from modelmarket.cluster import manager

    try:
        state = manager.up(_home(), replicas, partitions, _progress)
    except _failures() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"URL: {state.front_url}")


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cluster_status(as_json: bool) -> None:
    """Each part's health (probed), address, pid and log. Exit status 1 unless every part is healthy."""
    from modelmarket.cluster import manager

    state, parts = manager.status(_home())
    healthy = state is not None and all(p.healthy for p in parts)
    if as_json:
        doc = {
            "front_url": state.front_url if state else None,
            "healthy": healthy,
            "replicas": state.replicas if state else 0,
            "partitions": state.partitions if state else 0,
            "parts": [p.to_json() for p in parts],
        }
        click.echo(json.dumps(doc, indent=1))
    elif state is None:
        click.echo("no cluster in this home (modelmarket cluster up)")
    else:
        click.echo(f"front: {state.front_url}")
        for p in parts:
            health = "healthy" if p.healthy else ("UNHEALTHY" if p.running else "down")
            click.echo(f"  {p.name:<11} {health:<9} pid {p.pid or '-':<8} {p.address}  log {p.log}")
    if not healthy:
        raise SystemExit(1)


@cluster.command("down")
def cluster_down() -> None:
    """Stop the cluster's processes (those `up` started, checked by pid and start time), newest first; the data
    (PostgreSQL, NATS, SeaweedFS folders under MODELMARKET_HOME/cluster) stays for the next `up`."""
    from modelmarket.cluster import manager

    try:
        manager.down(_home(), _progress)
    except _failures() as exc:
        raise click.ClickException(str(exc)) from None


@cluster.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cluster_env(as_json: bool) -> None:
    """Print the settings of this home's cluster as shell exports (`eval "$(modelmarket cluster env)"`), so that
    other commands (`keys create`, `publish`, `usage`) work on the cluster's store, bus and S3. Holds the S3 secret."""
    from modelmarket.cluster import manager, state

    current = state.load_state(_home())
    if current is None:
        raise click.ClickException("no cluster in this home (modelmarket cluster up)")
    values = manager.cluster_settings(current)
    if as_json:
        click.echo(json.dumps(values, indent=1))
        return
    for name, value in values.items():
        click.echo(f"export {name}={shlex.quote(value)}")


@cluster.command("chaos")
@click.option("--seconds", type=click.IntRange(10, 3600), default=40, show_default=True, help="How long the load runs.")
@click.option("--threads", type=click.IntRange(1, 64), default=6, show_default=True, help="Client threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the reconciliation as JSON.")
def cluster_chaos(seconds: int, threads: int, as_json: bool) -> None:
    """Load through Envoy while a gateway replica and a runner are SIGKILLed and NATS restarts; then reconcile
    what the clients saw with usage, ledger and invoice. Exit status 1 if anything does not reconcile."""
    from modelmarket.cluster import chaos

    try:
        report = chaos.run_chaos(_home(), seconds=seconds, threads=threads, progress=_progress)
    except _failures() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report.to_json(), indent=1) if as_json else report.table())
    if not report.ok:
        raise SystemExit(1)
