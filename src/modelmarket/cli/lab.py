"""The Transmutation Lab from the command line: ``lab price-replay`` (what a month would have earned under other
prices or plans, re-rated by billing's own code, nothing stored) and ``lab experiment`` (versions sharing a model's
traffic, with statistics)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from modelmarket.billing.period import parse_period
from modelmarket.billing.plans import MAX_PLANS_FILE_BYTES, parse_plans
from modelmarket.billing.replay import Change, Proposal, ReplayReport
from modelmarket.cli.common import domain_errors, echo_json, json_option, platform, table
from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import decimal_text, round_minor
from modelmarket.lab.bandit import BanditController, Round
from modelmarket.lab.canary import CanaryController, Guardrails, parse_steps
from modelmarket.lab.experiments import FEW_CALLERS, Experiment, ExperimentReport, ShadowReport, parse_variants
from modelmarket.lab.rituals import MAX_FILE_BYTES as MAX_SCHEDULE_BYTES
from modelmarket.lab.rituals import ReportShelf, Ritual, Scheduler, parse_schedule, previous_period
from modelmarket.lab.stats import METRICS

PROGRESS_EVERY = 100_000
"""Events between two progress lines on stderr (a long replay says how far it is)."""


@click.group()
def lab() -> None:
    """The Transmutation Lab: price what-ifs on real usage, experiments, canaries, shadows, bake-offs, the bandit
    and scheduled rituals (docs/lab.md)."""


def _price(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidInput(f"--price must be a decimal amount per IU, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise InvalidInput(f"--price must be a finite, non-negative amount per IU, got {text!r}")
    return value


@lab.command("price-replay")
@click.option("--period", required=True, metavar="YYYY-MM", help="The month whose usage is re-rated.")
@click.option("--model", "model", default=None, metavar="M", help="The model whose list price changes (with --price).")
@click.option("--price", default=None, metavar="P", help="M's proposed list price per IU, in its currency.")
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A plans file (as `plans apply` takes): each plan in it replaces the stored plan of its name.",
)
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000), help="Accounts listed.")
@json_option
@domain_errors
def price_replay(
    period: str, model: str | None, price: str | None, plan_file: Path | None, top: int, as_json: bool
) -> None:
    """Re-rate a month's real usage under proposed prices or plans and print the revenue, old against new.

    Every event of the month goes through billing's own rating and invoice code, so a replay without --price or
    --plan reproduces the stored invoices to the cent. Nothing is stored and no invoice changes. Prints revenue
    per model, per provider (their share) and per consumer segment (the plan in force), the period's invoice
    totals, and the accounts whose bill would change most.
    """
    if (model is None) != (price is None):
        raise click.UsageError("--model and --price go together")
    p = platform()
    prices = {} if model is None or price is None else {model: _price(price)}
    if model is not None and model not in p.registry.catalogue().names():
        raise click.ClickException(f"no model {model!r} in the catalogue")
    specs = []
    if plan_file is not None:
        with plan_file.open("rb") as fh:
            specs = parse_plans(fh.read(MAX_PLANS_FILE_BYTES + 1), str(plan_file))

    def progress(n: int) -> None:
        if n % PROGRESS_EVERY < 10_000:
            click.echo(f"re-rated {n:,} events", err=True)

    report = p.replays.replay(parse_period(period), Proposal(prices, tuple(specs)), progress)
    names = {a.id: a.name for a in p.accounts.list()}
    if as_json:
        echo_json(report.to_json(names, top))
        return
    click.echo(_render(report, names, top))


def _money(value: Fraction | Decimal, currency: str) -> str:
    amount = round_minor(Fraction(value), currency) if isinstance(value, Fraction) else value
    return f"{decimal_text(amount)} {currency}"


def _signed(value: Fraction | Decimal, currency: str) -> str:
    text = _money(value, currency)
    return text if text.startswith("-") else f"+{text}"


def _rows(changes: dict[tuple[str, str], Change], label: dict[str, str] | None = None) -> list[list[str]]:
    return [
        [(label or {}).get(k, k), str(ch.events), _money(ch.old, c), _money(ch.new, c), _signed(ch.delta, c)]
        for (k, c), ch in sorted(changes.items(), key=lambda kv: (-abs(kv[1].delta), kv[0]))
    ]


def _render(report: ReplayReport, names: dict[str, str], top: int) -> str:
    out = [
        f"price replay of {report.period}: {report.proposal}",
        f"{report.events:,} events of the period re-rated ({report.rated:,} with the rest of their months) "
        f"in {report.seconds:.2f} s",
        "",
        "invoice totals:",
    ]
    totals = report.totals()
    out.append(
        table(
            [[c, _money(o, c), _money(n, c), _signed(n - o, c)] for c, (o, n) in sorted(totals.items())],
            ["currency", "old", "new", "change"],
        )
        if totals
        else "  (no invoices in this period)"
    )
    for title, rows, head in (
        ("revenue per model:", _rows(report.models), "model"),
        ("provider share per provider:", _rows(report.providers, names), "provider"),
        ("revenue per consumer segment (plan in force):", _rows(report.segments), "segment"),
    ):
        if rows:
            out += ["", title, table(rows, [head, "events", "old", "new", "change"])]
    changed = [i for i in report.invoices if i.delta != 0][:top]
    out += ["", f"accounts whose bill changes most (top {top}):"]
    if changed:
        out.append(
            table(
                [
                    [
                        names.get(i.account_id, i.account_id),
                        i.segment,
                        _money(i.old, i.currency),
                        _money(i.new, i.currency),
                        _signed(i.delta, i.currency),
                    ]
                    for i in changed
                ],
                ["account", "segment", "old", "new", "change"],
            )
        )
    else:
        out.append("  (no bill changes)")
    return "\n".join(out)


# -- experiments ----------------------------------------------------------------------------------------------------


@lab.group()
def experiment() -> None:
    """Versions of one model sharing its traffic (sticky per API key), compared with statistics."""


@experiment.command("start")
@click.argument("name")
@click.option("--model", required=True, help="The published model whose traffic is shared.")
@click.option("--variants", required=True, metavar="A=VER,B=VER", help="2 to 4 variants; the first is the control.")
@click.option("--split", default=None, metavar="50/50", help="The variants' weights (default: even).")
@click.option("--metric", required=True, type=click.Choice(METRICS), help="What decides which variant is better.")
@json_option
@domain_errors
def experiment_start(name: str, model: str, variants: str, split: str | None, metric: str, as_json: bool) -> None:
    """Start experiment NAME: calls of MODEL that name no version go to a variant picked by the caller's API key.

    A key keeps its variant for the whole experiment. Calls naming a version or an alias are not part of it. The
    gateways pick it up within their invalidation bound; the start is audited.
    """
    started = platform().experiments.start(name, model, parse_variants(variants, split), metric)
    if as_json:
        echo_json(started.to_json())
        return
    click.echo(f"experiment {started.name} started on {started.model}: {_split(started)}; metric {started.metric}")


def _split(e: Experiment) -> str:
    total = e.total_weight
    return ", ".join(f"{v.name}={v.version} ({100 * v.weight / total:.0f}%)" for v in e.variants)


@experiment.command("show")
@click.argument("name")
@json_option
@domain_errors
def experiment_show(name: str, as_json: bool) -> None:
    """Per variant: calls, errors, the metric with its 95% interval, and against the control (the first variant)
    the test, its p-value, significance at 0.05 and the calls per variant still needed for 80% power."""
    found = platform().experiments.show(name)
    if as_json:
        echo_json(found.to_json())
        return
    click.echo(_render_experiment(found))


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _render_experiment(r: ExperimentReport) -> str:
    e = r.experiment
    head = f"experiment {e.name} on {e.model} ({e.status}, since {e.started_at[:19]}): metric {e.metric}"
    if e.promoted:
        head += f"; promoted {e.promoted}"
    rows = []
    for v in r.variants:
        est, cmp_ = v.estimate, v.comparison
        rows.append(
            [
                v.variant.name,
                v.variant.version,
                str(v.calls),
                f"{v.callers}{' (few)' if v.callers < FEW_CALLERS else ''}",
                str(v.errors),
                _num(est.value),
                f"[{_num(est.low)}, {_num(est.high)}]",
                "control" if cmp_ is None else _num(cmp_.p_value, 3),
                "" if cmp_ is None else ("yes" if cmp_.significant else "no"),
                "" if cmp_ is None or cmp_.better is None else ("better" if cmp_.better else "worse"),
                "" if cmp_ is None or cmp_.still_needed is None else str(cmp_.still_needed),
            ]
        )
    headers = ["variant", "version", "calls", "callers", "errors", e.metric, "95% CI", "p-value", "significant"]
    headers += ["vs control", "still needed"]
    return "\n".join([head, table(rows, headers)])


@experiment.command("stop")
@click.argument("name")
@click.option("--promote", default=None, metavar="VARIANT", help="Move the model's `latest` alias to this variant.")
@json_option
@domain_errors
def experiment_stop(name: str, promote: str | None, as_json: bool) -> None:
    """Stop experiment NAME (its calls and report are kept); with --promote, move the model's `latest` alias to the
    variant's version. Both are audited."""
    final = platform().experiments.stop(name, promote)
    if as_json:
        echo_json(final.to_json())
        return
    click.echo(_render_experiment(final))
    if promote is not None:
        chosen = final.experiment.variant(promote)
        click.echo(f"{final.experiment.model}@latest -> {chosen.version}")


@experiment.command("list")
@json_option
@domain_errors
def experiment_list(as_json: bool) -> None:
    """Every experiment, running and stopped."""
    found = platform().experiments.all()
    if as_json:
        echo_json([e.to_json() for e in found])
        return
    rows = [[e.name, e.model, e.status, e.metric, _split(e), e.started_at[:19], e.promoted or ""] for e in found]
    click.echo(table(rows, ["name", "model", "status", "metric", "variants", "started", "promoted"]))


# -- canary ---------------------------------------------------------------------------------------------------------


@lab.command("canary")
@click.argument("model")
@click.option("--to", "to_version", required=True, metavar="VERSION", help="The published version to release.")
@click.option("--steps", default="5,25,50,100", show_default=True, help="Percentages of traffic, ending with 100.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=None, help="Roll back above this error rate.")
@click.option("--max-p95-ms", type=click.FloatRange(0, min_open=True), default=None, help="Roll back above this p95.")
@click.option("--step-seconds", type=click.FloatRange(0), default=60, show_default=True, help="Time at each step.")
@click.option(
    "--min-calls", type=click.IntRange(1), default=20, show_default=True, help="Canary calls to judge a step."
)
@click.option(
    "--max-wait-seconds",
    type=click.FloatRange(0, min_open=True),
    default=600,
    show_default=True,
    help="Roll back when a step sees fewer than --min-calls canary calls by then.",
)
@json_option
@domain_errors
def canary(
    model: str,
    to_version: str,
    steps: str,
    max_error_rate: float | None,
    max_p95_ms: float | None,
    step_seconds: float,
    min_calls: int,
    max_wait_seconds: float,
    as_json: bool,
) -> None:
    """Release VERSION of MODEL in steps while its guardrails hold; roll back by itself when one breaks.

    The model's `latest` stays on its current version while the canary (an experiment of `stable` and `canary`)
    takes each step's share of the calls that name no version. A broken guardrail, or too few canary calls to
    judge a step, stops it and sends every call to `stable` again (exit status 1); after the last step below 100
    `latest` moves to VERSION. Each split, the rollback with its reason and figures, and the promotion are audited.
    Stopping the command (Ctrl-C) rolls back.
    """
    if max_error_rate is None and max_p95_ms is None:
        raise click.UsageError("give at least one guardrail: --max-error-rate and/or --max-p95-ms")
    p = platform()
    controller = CanaryController(p.experiments, p.clock)
    guard = Guardrails(max_error_rate, max_p95_ms, min_calls)
    say = (lambda _: None) if as_json else click.echo
    result = controller.run(model, to_version, parse_steps(steps), guard, step_seconds, max_wait_seconds, say)
    if as_json:
        echo_json(result.to_json())
    if result.outcome != "promoted":
        raise SystemExit(1)


# -- shadow traffic -------------------------------------------------------------------------------------------------


@lab.group()
def shadow() -> None:
    """Copies of live calls sent to a candidate version: never billed, never returned, compared with the answers."""


@shadow.command("start")
@click.argument("name")
@click.option("--model", required=True, help="The published model whose calls are copied.")
@click.option("--candidate", required=True, metavar="VERSION", help="The version the copies go to.")
@click.option("--percent", type=click.IntRange(1, 100), default=100, show_default=True, help="Share of calls copied.")
@json_option
@domain_errors
def shadow_start(name: str, model: str, candidate: str, percent: int, as_json: bool) -> None:
    """Start shadow NAME: after a call of MODEL naming no version is answered as usual, a copy of it goes to
    CANDIDATE in the background. The copy is never billed or counted against a limit, and its answer is never
    returned; it is compared with the answer the caller got. At most 16 copies run at once (more are skipped)."""
    started = platform().experiments.start_shadow(name, model, candidate, percent)
    if as_json:
        echo_json(started.to_json())
        return
    click.echo(f"shadow {started.name} started: {percent}% of the calls of {model} copied to {model}@{candidate}")


def _render_shadow(r: ShadowReport) -> str:
    a = r.agreement
    lines = [
        f"shadow {r.shadow.name} of {r.shadow.model} -> {r.shadow.model}@{r.shadow.variants[0].version} "
        f"({r.shadow.status}, {r.shadow.variants[0].weight}% of calls)",
        f"calls copied: {r.calls}; copies answered: {r.copies - r.failures}; failed: {r.failures}",
        f"output agreement: {_num(a.value)} [{_num(a.low)}, {_num(a.high)}] over {a.n} answered copies",
        table(
            [
                ["primary", _num(r.primary_ms[0]), _num(r.primary_ms[1])],
                ["shadow", _num(r.shadow_ms[0]), _num(r.shadow_ms[1])],
            ],
            ["", "p50 ms", "p95 ms"],
        ),
    ]
    return "\n".join(lines)


@shadow.command("show")
@click.argument("name")
@json_option
@domain_errors
def shadow_show(name: str, as_json: bool) -> None:
    """Calls copied, the candidate's failures, output agreement with its 95% interval, latency of both."""
    found = platform().experiments.shadow_report(name)
    if as_json:
        echo_json(found.to_json())
        return
    click.echo(_render_shadow(found))


@shadow.command("stop")
@click.argument("name")
@json_option
@domain_errors
def shadow_stop(name: str, as_json: bool) -> None:
    """Stop copying; the report is kept (audited with its figures)."""
    p = platform()
    p.experiments.stop(name)
    found = p.experiments.shadow_report(name)
    if as_json:
        echo_json(found.to_json())
        return
    click.echo(_render_shadow(found))


# -- the bandit -----------------------------------------------------------------------------------------------------


@lab.command("bandit")
@click.argument("name")
@click.option("--rounds", type=click.IntRange(1, 100_000), default=1, show_default=True, help="Rounds to run.")
@click.option("--every-seconds", type=click.FloatRange(0), default=60, show_default=True, help="Time between rounds.")
@click.option("--min-share", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="No variant gets less.")
@click.option("--max-share", type=click.FloatRange(0, 1), default=0.9, show_default=True, help="No variant gets more.")
@click.option("--route", is_flag=True, help="NAME is a weighted route: its targets are judged by their feedback.")
@json_option
@domain_errors
def bandit(
    name: str, rounds: int, every_seconds: float, min_share: float, max_share: float, route: bool, as_json: bool
) -> None:
    """Shift running experiment NAME's split toward the variant doing better on its metric (Thompson sampling);
    with --route, the weights of the weighted route NAME toward the target whose version gets better feedback.

    Each round gives every variant its probability of being the best, clipped to [--min-share, --max-share]; a
    round that changes the split sets it, audited with the figures that caused it (successes, failures and the
    probability of being best, per variant).
    """
    p = platform()
    controller = BanditController(p.experiments, routes=_RouteWeights(p), feedback=p.feedback.per_version)

    def show(found: Round) -> None:
        if not as_json:
            parts = [f"{a.name} {a.successes}/{a.successes + a.failures} p_best={p:.3f} -> {found.weights[a.name]}"
                     for a, p in zip(found.arms, found.probabilities, strict=True)]  # fmt: skip
            click.echo(("split changed: " if found.changed else "split kept: ") + "; ".join(parts))

    if route:
        done = []
        for i in range(rounds):
            if i:
                time.sleep(every_seconds)
            done.append(controller.route_round(name, min_share, max_share))
            show(done[-1])
    else:
        done = controller.run(name, rounds, every_seconds, min_share, max_share, show)
    if as_json:
        echo_json([r.to_json() for r in done])


# -- bake-offs ------------------------------------------------------------------------------------------------------


@lab.command("bakeoff")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--dataset",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON Lines: {"inputs": [OIP input tensors], "label": "..."} per line.',
)
@json_option
@domain_errors
def bakeoff(models: tuple[str, ...], dataset: Path, as_json: bool) -> None:
    """Run the same labelled set through MODELS (NAME or NAME@VERSION), each in its sandbox, and print a
    leaderboard: accuracy (beside the card's), latency p50/p95, cost per 1,000 calls at list price.

    The result is stored and shown on the models' pages. `make demo` writes a dataset of the digits hold-out set
    to HOME/demo/examples/digits-holdout.jsonl (`lab bakeoff digits digits-mlp --dataset ...`).
    """
    say = (lambda _: None) if as_json else (lambda line: click.echo(line, err=True))
    result = platform().bakeoffs.run(list(models), dataset, say)
    doc = result.to_json()
    if as_json:
        echo_json(doc)
        return
    click.echo(
        f"bake-off {doc['id']}: {doc['examples']:,} examples of {doc['dataset']} (sha256 {doc['dataset_sha256'][:12]})"
    )
    click.echo(render_leaderboard(doc))


def render_leaderboard(doc: dict[str, Any]) -> str:
    rows = [
        [
            str(e["rank"]),
            f"{e['model']}@{e['version']}",
            e["task"],
            e["accuracy"],
            e["card_accuracy"] or "-",
            str(e["errors"]),
            _num(e["latency_ms"]["p50"]),
            _num(e["latency_ms"]["p95"]),
            f"{e['cost_per_1000_calls']} {e['currency']}",
        ]
        for e in doc["leaderboard"]
    ]
    headers = ["#", "model", "task", "accuracy", "card says", "errors", "p50 ms", "p95 ms", "cost / 1,000 calls"]
    return table(rows, headers)


# -- rituals on a schedule ------------------------------------------------------------------------------------------


def _ritual_runner(p: Any) -> Any:
    def run(ritual: Ritual, at: datetime) -> dict[str, Any]:
        params = ritual.params
        if ritual.kind == "bakeoff":
            return p.bakeoffs.run(list(params["models"]), Path(params["dataset"])).to_json()  # type: ignore[no-any-return]
        period = params.get("period", "previous")
        label = previous_period(at) if period == "previous" else period
        prices = {} if "model" not in params else {params["model"]: _price(str(params["price"]))}
        specs: list[Any] = []
        if "plan" in params:
            specs = parse_plans(Path(params["plan"]).read_bytes()[: MAX_PLANS_FILE_BYTES + 1], params["plan"])
        report = p.replays.replay(parse_period(label), Proposal(prices, tuple(specs)))
        return report.to_json({a.id: a.name for a in p.accounts.list()}, 20)  # type: ignore[no-any-return]

    return run


@lab.command("schedule")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--run", "run_now", default=None, metavar="RITUAL", help="Run this ritual once now, then exit.")
@domain_errors
def schedule(file: Path, run_now: str | None) -> None:
    """Run the bake-offs and price replays of FILE on their cron schedules (UTC), in the foreground, keeping every
    report under HOME/lab/reports/<ritual>/ (the newest 50 per ritual; `lab reports` lists them).

    FILE is YAML: `rituals: [{name, cron: "0 3 * * 1", bakeoff: {models: [...], dataset: FILE}}, {name, cron,
    price_replay: {period: previous|YYYY-MM, model: M, price: P, plan: FILE}}]`. See docs/lab.md.
    """
    p = platform()
    rituals = parse_schedule(file.read_bytes()[: MAX_SCHEDULE_BYTES + 1], str(file))
    shelf = ReportShelf(p.settings.home / "lab" / "reports")
    scheduler = Scheduler(rituals, _ritual_runner(p), shelf, p.clock, time.sleep)
    if run_now is not None:
        chosen = [r for r in rituals if r.name == run_now]
        if not chosen:
            raise click.ClickException(f"no ritual {run_now!r} in {file} ({', '.join(r.name for r in rituals)})")
        scheduler.rituals = chosen
        now = p.clock()
        for path in scheduler.run_all(now, click.echo):
            doc = json.loads(path.read_text())
            if not doc["ok"]:
                raise click.ClickException(f"{run_now}: {doc['error']}")
        return
    click.echo(f"{len(rituals)} rituals from {file}; reports in {shelf.root} (Ctrl-C stops)")
    try:
        scheduler.forever(click.echo)
    except KeyboardInterrupt:
        click.echo("stopped")


@lab.command("reports")
@click.argument("ritual", required=False)
@json_option
@domain_errors
def reports(ritual: str | None, as_json: bool) -> None:
    """The reports `lab schedule` kept (all rituals, or RITUAL's), oldest first."""
    shelf = ReportShelf(platform().settings.home / "lab" / "reports")
    found = shelf.reports(ritual)
    if as_json:
        echo_json([json.loads(p.read_text()) for p in found])
        return
    rows = []
    for path in found:
        doc = json.loads(path.read_text())
        rows.append(
            [
                doc["ritual"],
                doc["kind"],
                doc["at"][:16],
                "ok" if doc["ok"] else f"failed: {doc['error'][:60]}",
                str(path),
            ]
        )
    click.echo(table(rows, ["ritual", "kind", "at", "outcome", "report"]) if rows else "no reports kept yet")


class _RouteWeights:
    """A route's targets and weights for the bandit, over the routing service and the catalogue."""

    def __init__(self, p: Any) -> None:
        self.p = p

    def targets(self, route: str) -> dict[str, tuple[str, str, int]]:
        spec = self.p.routing.route(route).spec
        if spec.strategy != "weighted":
            raise InvalidInput(f"route {route!r} is {spec.strategy}: only a weighted route has weights")
        catalogue = self.p.registry.catalogue()
        out = {}
        for t in spec.targets:
            model, _, ref = t.model.partition("@")
            out[t.model] = (model, catalogue.resolve(model, ref or None).version, t.weight)
        return out

    def set_weights(self, route: str, weights: dict[str, int], actor: str) -> None:
        self.p.routing.set_weights(route, weights, actor=actor)
