"""``modelmarket meter``: the metering consumer (the gateway runs one as its child process)."""

from __future__ import annotations

import signal
import threading

import click

from modelmarket.cli.common import domain_errors, parent_pid_option, platform
from modelmarket.core import lifetime
from modelmarket.metering.consumer import catch_up, follow


@click.command()
@click.option("--once", is_flag=True, help="Apply every usage event in the log, print the count and exit.")
@parent_pid_option
@domain_errors
def meter(once: bool, parent_pid: int | None) -> None:
    """Read usage events from the event log and aggregate usage per account, model and day.

    Idempotent by event id: running several, or re-reading the log, never counts an event twice. Without
    --once it follows the log (every MODELMARKET_METERING_POLL_S) until SIGTERM or Ctrl+C.
    """
    p = platform()
    event_log = p.open_event_log()
    try:
        if once:
            click.echo(f"applied {catch_up(p.store, event_log)} log record(s)")
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        if parent_pid is not None:
            lifetime.exit_with_parent(parent_pid)
        follow(p.store, event_log, p.settings.metering_poll_s, stop)
    finally:
        event_log.close()
