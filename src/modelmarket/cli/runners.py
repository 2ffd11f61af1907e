"""``modelmarket runners``: the running gateway's model runners, as its supervisor last wrote them.

The supervisor lives in the gateway process; it writes ``MODELMARKET_HOME/runners/status.json`` every second.
This command reads that file (no key needed: it is the operator's own machine and home) and says when the
gateway that wrote it is gone.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from modelmarket.cli.common import echo_json, json_option, table
from modelmarket.core.process import pid_alive
from modelmarket.runtime.supervisor import STATUS_FILE
from modelmarket.settings import Settings

STALE_AFTER_S = 5.0


def _mb(value: Any) -> str:
    return "-" if value is None else f"{int(value) / (1024 * 1024):.0f} MB"


@click.command("runners")
@json_option
def runners(as_json: bool) -> None:
    """Each runner of the gateway serving this home: version, sandbox profile, pid, state, replicas, queue
    depth, RSS, restarts and the last error (why a runner that keeps crashing was given up on)."""
    path = Settings().runners_dir / STATUS_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise click.ClickException(
            f"no gateway is serving this home ({path} does not exist): start one with `modelmarket serve`"
        ) from None
    pid = int(doc.get("gateway_pid", 0))
    age = time.time() - float(doc.get("written_at", 0))
    gone = not pid_alive(pid)
    doc["gateway_running"] = not gone
    doc["age_s"] = round(age, 1)
    if as_json:
        echo_json(doc)
        return
    if gone:
        click.echo(f"the gateway (pid {pid}) that wrote this is gone; last seen {age:.0f}s ago", err=True)
    elif age > STALE_AFTER_S:
        click.echo(f"status is {age:.0f}s old: the gateway (pid {pid}) may be busy", err=True)
    rows = []
    for r in doc.get("runners", []):
        processes = r.get("processes") or [{}]
        for p in processes:
            rows.append(
                [
                    f"{r['model']}@{r['version']}",
                    r["profile"],
                    str(p.get("pid") or "-"),
                    p.get("state", r["state"]) if processes != [{}] else r["state"],
                    f"{r['replicas']['running']} ({r['replicas']['min']}-{r['replicas']['max']})",
                    str(r["queue_depth"]),
                    _mb(p.get("rss_bytes")),
                    str(p.get("restarts", 0)),
                    (r.get("last_error") or "")[:80],
                ]
            )
    if not rows:
        click.echo("no runners yet: a version's runner starts with its first call (or at start with --preload)")
        return
    click.echo(
        table(rows, ["VERSION", "PROFILE", "PID", "STATE", "REPLICAS", "QUEUE", "RSS", "RESTARTS", "LAST ERROR"])
    )
