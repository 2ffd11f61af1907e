"""Shared CLI plumbing: the platform handle, JSON output, and the domain-error -> exit-code translation."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.core.errors import DomainError, MeteringHalted

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
parent_pid_option = click.option(
    "--parent-pid",
    type=int,
    default=None,
    metavar="PID",
    help="Stop once process PID, the direct parent that started this one, has exited.",
)


def platform() -> Platform:
    ctx = click.get_current_context()
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    if "platform" not in obj:
        obj["platform"] = bootstrap()
        root.obj = obj
        root.call_on_close(obj["platform"].close)
    result: Platform = obj["platform"]
    return result


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def domain_errors(fn: F) -> F:
    """Turn a DomainError into ``error: <message>`` on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DomainError as exc:
            raise click.ClickException(exc.message) from None
        except MeteringHalted as exc:
            raise click.ClickException(
                f"metering is halted: {exc.reason} (fix the cause, then run `modelmarket meter --resume`)"
            ) from None

    return wrapper  # type: ignore[return-value]


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
