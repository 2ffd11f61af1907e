"""``modelmarket providers ...`` (upstream servers) and ``modelmarket routes ...`` (model names that answer with
weighted targets and fallbacks). Thin over ``RoutingService``; an API key is never printed, only its variable."""

from __future__ import annotations

from pathlib import Path

import click

from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.core.errors import InvalidInput
from modelmarket.routing.ports import StoredRoute
from modelmarket.routing.spec import MAX_ROUTES_FILE_BYTES, PROTOCOLS

# -- providers ---------------------------------------------------------------------------------------------------


@click.group()
def providers() -> None:
    """Upstream OpenAI-compatible or OIP servers models can be served from (the API key stays in the environment)."""


@providers.command("add")
@click.argument("name")
@click.option("--base-url", required=True, metavar="URL", help="http(s) URL of the server, e.g. http://host:8080/v1.")
@click.option(
    "--api-key-env",
    default=None,
    metavar="VAR",
    help="NAME of the environment variable holding the API key (the gateway reads it per call; never stored).",
)
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="openai", show_default=True)
@json_option
@domain_errors
def providers_add(name: str, base_url: str, api_key_env: str | None, protocol: str, as_json: bool) -> None:
    """Add provider NAME, or set an existing one to exactly these values (the same values change nothing).

    Re-adding without --api-key-env clears the variable name. The key's value is never stored or printed.
    """
    change = platform().routing.add_provider(name, base_url, protocol=protocol, api_key_env=api_key_env)
    if as_json:
        echo_json(change.to_json())
        return
    p = change.provider
    if change.action == "unchanged":
        click.echo(f"provider {p.name}: unchanged")
    elif change.action == "created":
        key = f", API key from ${p.api_key_env}" if p.api_key_env else ", no API key"
        click.echo(f"provider {p.name} added: {p.protocol} at {p.base_url}{key}")
    else:
        diffs = "; ".join(f"{f} {b or '(none)'} -> {a or '(none)'}" for f, b, a in change.changed)
        click.echo(f"provider {p.name} changed: {diffs}")


@providers.command("list")
@json_option
@domain_errors
def providers_list(as_json: bool) -> None:
    """List the providers: protocol, base URL and the NAME of the API key's environment variable."""
    items = platform().routing.providers()
    if as_json:
        echo_json([p.to_json() for p in items])
        return
    if not items:
        click.echo("no providers yet (add one with `modelmarket providers add NAME --base-url URL`)")
        return
    rows = [[p.name, p.protocol, p.base_url, p.api_key_env or "-", p.updated_at] for p in items]
    click.echo(table(rows, ["PROVIDER", "PROTOCOL", "BASE URL", "API KEY ENV", "UPDATED"]))


@providers.command("remove")
@click.argument("name")
@domain_errors
def providers_remove(name: str) -> None:
    """Remove provider NAME (audited)."""
    platform().routing.remove_provider(name)
    click.echo(f"provider {name} removed")


# -- routes ------------------------------------------------------------------------------------------------------


@click.group()
def routes() -> None:
    """Route a model name to weighted catalogue models with retries, fallbacks and circuit breakers (YAML)."""


@routes.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prune", is_flag=True, help="Also remove the stored routes that FILE does not declare.")
@json_option
@domain_errors
def routes_apply(file: Path, prune: bool, as_json: bool) -> None:
    """Apply the routes declared in FILE (YAML: `routes: [{name, strategy, targets, ...}]`, see docs/routing.md).

    A new route gets revision 1, a changed one the next revision; an identical one is left as it is, so applying
    the same file twice changes nothing. Routes not in FILE stay unless --prune. Errors name the route and the
    field (e.g. `routes[0].targets[1].weight: ...`) and nothing is applied.
    """
    p = platform()
    with file.open("rb") as fh:
        text = fh.read(MAX_ROUTES_FILE_BYTES + 1)
    try:
        results = p.routing.apply(text, prune=prune, models=lambda: p.registry.catalogue().names(), source=str(file))
    except InvalidInput as exc:
        raise InvalidInput(exc.message if exc.message.startswith(str(file)) else f"{file}: {exc.message}") from None
    if as_json:
        echo_json([r.to_json() for r in results])
        return
    if not results:
        click.echo(f"{file} declares no routes; nothing changed")
        return
    rows = [[r.name, r.action, f"r{r.revision}", r.digest[:12]] for r in results]
    click.echo(table(rows, ["ROUTE", "ACTION", "REVISION", "DIGEST"]))
    if all(r.action == "unchanged" for r in results):
        click.echo("nothing changed: every route is as declared")


def _targets_text(route: StoredRoute) -> str:
    spec = route.spec
    weighted = spec.strategy == "weighted"
    return ", ".join(f"{t.model} ({t.weight})" if weighted else t.model for t in spec.targets)


@routes.command("list")
@json_option
@domain_errors
def routes_list(as_json: bool) -> None:
    """List the routes: strategy, targets (with weights), fallbacks and revision."""
    items = platform().routing.routes()
    if as_json:
        echo_json([r.to_json() for r in items])
        return
    if not items:
        click.echo("no routes yet (declare them in a YAML file and run `modelmarket routes apply FILE`)")
        return
    rows = [
        [r.name, r.spec.strategy, _targets_text(r), ", ".join(r.spec.fallbacks) or "-", f"r{r.revision}", r.updated_at]
        for r in items
    ]
    click.echo(table(rows, ["ROUTE", "STRATEGY", "TARGETS", "FALLBACKS", "REVISION", "UPDATED"]))


@routes.command("show")
@click.argument("name")
@json_option
@domain_errors
def routes_show(name: str, as_json: bool) -> None:
    """Show route NAME in full: targets, fallbacks, retries, timeout and circuit breaker."""
    route = platform().routing.route(name)
    if as_json:
        echo_json(route.to_json())
        return
    s = route.spec
    click.echo(f"route {s.name} r{route.revision} ({s.strategy}), digest {route.digest}, updated {route.updated_at}")
    if s.strategy == "weighted":
        total = sum(t.weight for t in s.targets)
        click.echo(f"sticky: {'yes (per API key)' if s.sticky else 'no (random per call)'}")
        for t in s.targets:
            click.echo(f"  target {t.model}  weight {t.weight} ({100 * t.weight / total:.1f}%)")
    else:
        for t in s.targets:
            click.echo(f"  target {t.model}")
    for ref in s.fallbacks:
        click.echo(f"  fallback {ref}")
    r, cb = s.retries, s.circuit_breaker
    click.echo(f"retries: {r.attempts} extra attempt(s) per target, backoff {r.backoff_ms} ms doubled per attempt")
    click.echo(f"timeout: {s.timeout_s:g} s per attempt")
    click.echo(f"circuit breaker: opens after {cb.failures} consecutive failures for {cb.cooldown_s:g} s")


@routes.command("remove")
@click.argument("name")
@domain_errors
def routes_remove(name: str) -> None:
    """Remove route NAME (audited); its name then answers 404 unless a model of that name is published."""
    change = platform().routing.remove_route(name)
    click.echo(f"route {name} removed (it was revision {change.revision})")
