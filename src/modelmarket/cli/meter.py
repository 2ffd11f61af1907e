"""``modelmarket meter``: the metering consumer (the gateway runs one as its child process)."""

from __future__ import annotations

import logging
import signal
import threading

import click

from modelmarket.bootstrap import Platform
from modelmarket.cli.common import domain_errors, parent_pid_option, platform
from modelmarket.core import lifetime

log = logging.getLogger(__name__)


@click.command()
@click.option("--once", is_flag=True, help="Apply every usage event in the log, print the count and exit.")
@click.option("--status", is_flag=True, help="Print whether metering is running or halted (and why), then exit.")
@click.option("--resume", is_flag=True, help="Clear a halt after its cause was dealt with, then exit.")
@parent_pid_option
@domain_errors
def meter(once: bool, status: bool, resume: bool, parent_pid: int | None) -> None:
    """Read usage events from the event log and aggregate usage per account, model and day.

    Idempotent by event id: running several, or re-reading the log, never counts an event twice. Without
    --once it follows the log (every MODELMARKET_METERING_POLL_S) until SIGTERM or Ctrl+C. A broken invariant
    (say, an event log that ends before the offset already applied) halts metering: it exits with status 1 and
    the reason, leaves the log untouched, and stays halted until `--resume`. While it follows, it also
    recomputes dynamic prices and finalizes invoices past MODELMARKET_INVOICE_GRACE_S, every
    MODELMARKET_PRICING_INTERVAL_S.
    """
    p = platform()
    if status:
        halted = p.metering.halted()
        click.echo("metering: running" if halted is None else f"metering: HALTED: {halted}")
        if halted is not None:
            raise SystemExit(1)
        return
    if resume:
        p.metering.resume()
        click.echo("metering: resumed")
        return
    if once:
        click.echo(f"applied {p.metering.catch_up()} log record(s)")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if parent_pid is not None:
        lifetime.exit_with_parent(parent_pid)
    threading.Thread(target=_billing_schedule, args=(p, stop), name="billing-schedule", daemon=True).start()
    p.metering.follow(stop)


def _billing_schedule(p: Platform, stop: threading.Event) -> None:
    """Every MODELMARKET_PRICING_INTERVAL_S: recompute dynamic prices, finalize invoices past their grace period."""
    while not stop.wait(p.settings.pricing_interval_s):
        for name, job in (("dynamic pricing", p.prices.recompute), ("invoice finalization", p.invoices.finalize_due)):
            try:
                job()
            except Exception:  # the next round tries again; metering goes on
                log.exception("scheduled %s failed", name)
