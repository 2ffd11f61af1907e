"""``modelmarket serve``, ``demo`` and ``runner``: the long-running processes."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import click

from modelmarket.bootstrap import Platform
from modelmarket.cli.common import domain_errors, parent_pid_option, platform
from modelmarket.cli.gate_view import outcome_line, stage_line
from modelmarket.core import lifetime
from modelmarket.core.errors import AlreadyExists, NotFound
from modelmarket.governance.model import StageRecord
from modelmarket.settings import Settings


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror} (set MODELMARKET_PORT or --port to another port)"
        ) from None
    sock.listen(2048)
    return sock


def run_gateway(
    p: Platform, host: str, port: int, preload: bool, on_ready: Callable[[str], None], metering: bool = True
) -> None:
    from modelmarket.gateway.app import GatewayApp
    from modelmarket.gateway.compose import bootstrap_gateway
    from modelmarket.gateway.http_guard import gateway_http_options
    from modelmarket.runtime.asgi import serve_asgi

    sock = _bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    app = GatewayApp(bootstrap_gateway(p, preload, metering_child=metering), on_ready=lambda: on_ready(url))
    serve_asgi(app, [sock], **gateway_http_options(p.settings))


@click.command()
@click.option("--host", default=None, help="Bind address [default: MODELMARKET_HOST or 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: MODELMARKET_PORT or 8000; 0 = any free].")
@click.option("--no-preload", is_flag=True, help="Start model runners on first call instead of at startup.")
@click.option(
    "--no-metering",
    is_flag=True,
    help="Run no metering consumer child: one `modelmarket meter` process serves every replica (`cluster up`).",
)
@domain_errors
def serve(host: str | None, port: int | None, no_preload: bool, no_metering: bool) -> None:
    """Run the gateway: OIP v2 for every published model, the marketplace API and metering."""
    p = platform()
    h = host or p.settings.host
    prt = p.settings.port if port is None else port

    def ready(url: str) -> None:
        click.echo(f"URL: {url}", err=False)
        sys.stdout.flush()

    run_gateway(p, h, prt, not no_preload, ready, metering=not no_metering)


def _ensure_account(p: Platform, name: str, role: str) -> None:
    try:
        p.accounts.get(name)
    except NotFound:
        with contextlib.suppress(AlreadyExists):  # another process made it meanwhile
            p.accounts.create(name, role, actor="demo")


def build_demo_catalogue(p: Platform, progress: Callable[[str], None]) -> Path:
    """Build the demo packages under HOME/demo and publish them in order, the pipeline last (idempotent)."""
    from modelmarket.demo.build import build_packages

    _ensure_account(p, "demo-provider", "provider")
    _ensure_account(p, "demo-consumer", "consumer")
    _ensure_account(p, "operator", "operator")
    applied = p.plans.apply((Path(__file__).parent.parent / "demo" / "plans.yaml").read_text(), actor="demo")
    progress("plans: " + ", ".join(f"{a.name} v{a.version} ({a.action})" for a in applied))
    consumer = p.accounts.get("demo-consumer")
    if not p.plans.history(consumer.id):
        p.plans.subscribe(consumer.id, "payg", actor="demo")
    out = p.settings.home / "demo"
    operator = p.accounts.get("operator")
    for package in build_packages(out, progress):
        publish_demo_package(p, package, operator.id, progress)
    return out


def publish_demo_package(p: Platform, package: Path, operator_id: str, progress: Callable[[str], None]) -> None:
    """Through the publish gate, as any provider's package: every stage runs; the demo's operator account
    approves what passes. A package the gate blocks (the biased credit model) is reported with its figures and
    stays out of the catalogue."""

    def stage(name: str, record: StageRecord | None) -> None:
        if record is not None:
            progress(f"{package.name}: {stage_line(record.to_json()).strip()}")

    sub = p.gate.submit(package, actor="demo", progress=stage)
    if sub.status == "running":
        sub = p.gate.run(sub.id, stage)
    if sub.status == "pending_review":
        sub = p.gate.approve(
            sub.id, actor="demo", reason="the platform's own demo catalogue", by_account_id=operator_id, progress=stage
        )
    progress(outcome_line(sub.to_json()))


def _examples(url: str, key: str, demo_dir: Path) -> list[str]:
    ex = demo_dir / "examples"
    auth = f'-H "Authorization: Bearer {key}"'
    return [
        f"curl -s {auth} -H 'Content-Type: application/json' -d @{ex / 'digit.json'} {url}/v2/models/digits/infer",
        f"curl -s {auth} -H 'Content-Type: application/json' -d @{ex / 'sentiment.json'} "
        f"{url}/v2/models/sentiment/infer",
        f"curl -s {auth} -H 'Content-Type: application/json' -d @{ex / 'chat.json'} "
        f"{url}/v2/models/smollm2-135m-instruct/infer",
        f"curl -s {auth} -H 'Content-Type: application/json' {url}/v1/chat/completions -d "
        """'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi!"}]}'""",
        f"curl -s {auth} {url}/api/usage",
    ]


@click.command()
@click.option("--port", type=int, default=None, help="Port [default: MODELMARKET_PORT or 8000].")
@click.option("--build-only", is_flag=True, help="Build and publish the demo catalogue, then exit.")
@domain_errors
def demo(port: int | None, build_only: bool) -> None:
    """Build the demo catalogue (digits, sentiment, speech-to-text, smollm2-135m-instruct, all-minilm-l6-v2 and
    the voice-sentiment pipeline), then run the platform with it.

    Prints `URL: ...` and `API key: ...` (a fresh key of the account demo-consumer) and example calls.
    """
    p = platform()

    def progress(msg: str) -> None:
        click.echo(f"[demo] {msg}", err=True)

    demo_dir = build_demo_catalogue(p, progress)
    if build_only:
        return
    key = p.accounts.issue_key("demo-consumer", actor="demo").secret

    def ready(url: str) -> None:
        click.echo(f"URL: {url}")
        click.echo(f"API key: {key}")
        if p.settings.dashboard_enabled:
            click.echo(
                f"Dashboard: {url}/ (sign in with the API key; the operator's: modelmarket keys create operator)"
            )
        click.echo("Try:")
        for line in _examples(url, key, demo_dir):
            click.echo(f"  {line}")
        click.echo("Press Ctrl+C to stop.")
        sys.stdout.flush()

    run_gateway(p, p.settings.host, p.settings.port if port is None else port, True, ready)


@click.command()
@click.argument("ref", required=False)
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(exists=True, path_type=Path),
    help="Runner spec file written by the supervisor.",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Listen on a Unix socket at this path instead of TCP.",
)
@click.option("--fd", type=int, default=None, help="Serve on this inherited listening socket.")
@click.option("--host", default="127.0.0.1", show_default=True, help="TCP address (without --socket or --fd).")
@click.option("--port", type=int, default=0, show_default=True, help="TCP port (0 = any free one).")
@parent_pid_option
@click.option(
    "--max-request-bytes",
    type=int,
    default=None,
    help="Largest request body [default: MODELMARKET_MAX_REQUEST_BYTES]; larger bodies get 413.",
)
@domain_errors
def runner(
    ref: str | None,
    spec_path: Path | None,
    socket_path: Path | None,
    fd: int | None,
    host: str,
    port: int,
    parent_pid: int | None,
    max_request_bytes: int | None,
) -> None:
    """Serve one model version over OIP v2 (REF = NAME[@VERSION|@ALIAS], or --spec FILE).

    The gateway's supervisor starts runners itself (on private Unix sockets); run one by hand to call a model
    directly, on loopback TCP by default. Anyone who can reach that port can call the model: no key, no usage.
    """
    from modelmarket.runtime import runner as model_runner
    from modelmarket.runtime.supervisor import materialize

    if socket_path is not None and fd is not None:
        raise click.UsageError("give --socket or --fd, not both")
    if spec_path is None:
        if ref is None:
            raise click.UsageError("give a model REF or --spec FILE")
        p = platform()
        name, _, version_ref = ref.partition("@")
        version = p.registry.catalogue().resolve(name, version_ref or None)
        spec_path = materialize(version, p.blobs, p.settings.runners_dir)
    if parent_pid is not None:
        lifetime.exit_with_parent(parent_pid)
    limit = max_request_bytes if max_request_bytes is not None else Settings().max_request_bytes
    listen = model_runner.Listen(socket_path=socket_path, fd=fd, host=host, port=port)
    try:
        model_runner.serve(model_runner.read_spec(spec_path), listen, limit)
    except model_runner.ModelLoadFailed as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # the model loaded; binding failed (port taken, socket path not writable)
        raise click.ClickException(f"cannot listen: {exc}") from None
