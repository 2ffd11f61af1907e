"""How the publish gate's stages are shown in the terminal (local and remote publishes, ``reviews show``)."""

from __future__ import annotations

from typing import Any

import click

STATUS_WIDTH = 9
STAGE_WIDTH = 11
MAX_SHOWN_CHARS = 500


def printable(text: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` without control characters (a terminal shows what a provider or a platform wrote, never what it
    would make the terminal do), cut to ``limit``."""
    clean = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def stage_line(stage: dict[str, Any]) -> str:
    """``  scan        passed      0.03s  3 file(s), all of an allowed type``."""
    seconds = f"{int(stage.get('duration_ms') or 0) / 1000:.2f}s"
    name, status = printable(stage.get("stage", "?"), 40), printable(stage.get("status", "?"), 20)
    return f"  {name:<{STAGE_WIDTH}} {status:<{STATUS_WIDTH}} {seconds:>7}  {printable(stage.get('summary', ''))}"


def echo_stage(stage: dict[str, Any]) -> None:
    click.echo(stage_line(stage), err=True)


def outcome_line(sub: dict[str, Any]) -> str:
    """What became of a submission, as the last line a command prints."""
    ref, status = printable(sub["ref"], 200), printable(sub["status"], 20)
    if status == "published":
        model, version = printable(sub["model"], 100), printable(sub["version"], 40)
        return f"published: {model} {version}  digest {printable(sub['digest'])[:16]}  submission {sub['id']}"
    if status == "pending_review":
        return (
            f"pending review: {ref} (submission {sub['id']}); an operator decides with "
            f"`modelmarket reviews approve {ref} --reason ...` or `reviews reject`"
        )
    if status == "running":
        return f"running: {ref} (submission {sub['id']}); follow it with `modelmarket reviews show {ref}`"
    failed = next((s for s in reversed(sub.get("stages", [])) if s["status"] in ("failed", "rejected")), None)
    where = f" at {printable(failed['stage'], 40)}: {printable(failed['summary'])}" if failed else ""
    return f"{status}: {ref} (submission {sub['id']}){where}"


def show_submission(sub: dict[str, Any]) -> None:
    click.echo(
        f"{printable(sub['ref'], 200)}  submission {printable(sub['id'], 60)}  {printable(sub['status'], 20)}  "
        f"submitted by {printable(sub['submitted_by'], 200)}"
    )
    for stage in sub.get("stages", []):
        click.echo(stage_line(stage))
    if sub.get("decision_reason"):
        click.echo(f"decision: {printable(sub['decided_by'], 200)}: {printable(sub['decision_reason'], 1000)}")
