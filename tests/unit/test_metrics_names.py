"""The metrics' names, labels and figures, without a gateway: Prometheus's naming conventions, every metric
documented in docs/metrics.md (and nothing documented that is not served), bounded labels, exact-text amounts,
restarts that never go down, and the metering lag."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelmarket.observability.context import CallInfo
from modelmarket.observability.metrics import (
    MAX_ERROR_TYPES,
    OTHER,
    GatewayMetrics,
    _amount,
    child_metrics_dir,
    set_child_metrics_env,
)
from modelmarket.observability.metrics_metering import LagReading, LagSampler, lag_figures
from modelmarket.observability.metrics_runners import RestartCount, RunnerCollector
from modelmarket.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
OURS = ("modelmarket_", "gen_ai_")
CATALOGUE = SimpleNamespace(models={"digits": SimpleNamespace(versions={"1.0.0": object()})})


class Supervisor:
    """What the runner collector reads: the supervisor's status snapshot."""

    def __init__(self, processes: list[dict[str, Any]]) -> None:
        self.processes = processes

    def snapshot(self) -> dict[str, Any]:
        version = {"model": "digits", "version": "1.0.0", "queue_depth": 2, "processes": self.processes}
        return {"runners": [version] if self.processes else []}


def process(replica: int, state: str = "running", restarts: int = 0, rss: int | None = 50_000_000) -> dict[str, Any]:
    return {"replica": replica, "state": state, "outstanding": 1, "rss_bytes": rss, "restarts": restarts}


def call(path: str = "/v2/models/digits/infer", status: int = 200, **fields: Any) -> CallInfo:
    protocol = "openai" if path.startswith("/v1/") else "oip"
    info = CallInfo("POST", path, protocol, time.perf_counter() - 0.02, status=status, **fields)
    info.ended = info.started + 0.02
    return info


def exposition(metrics: GatewayMetrics) -> str:
    metrics.refresh()
    return metrics.render(None)[0].decode()


def families(text: str) -> dict[str, str]:
    """name -> type, as the text format declares them."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def every_kind_of_call() -> GatewayMetrics:
    metrics = GatewayMetrics(lambda: CATALOGUE, Supervisor([process(0)]))
    metrics.record(call(model="digits", version="1.0.0", iu="1", cost="0.0010", currency="USD"))
    metrics.record(call(status=429, error_type="RateLimited"))
    metrics.record(
        call("/v1/chat/completions", model="digits", version="1.0.0", iu="0.012", cost="0.02", currency="EUR")
    )
    metrics.record(call("/v1/embeddings", model="digits", iu="1", tokens_in=3, tokens_out=0, operation="embeddings"))
    return metrics


def child_metric_families() -> dict[str, str]:
    sampler = LagSampler(lambda: LagReading(1, 1, None))
    return {m.name: m.type for metric in (sampler.pending, sampler.lag, sampler.applied) for m in metric.describe()}


def served() -> dict[str, str]:
    """Every family the gateway declares (its own, the runners', the metering child's) -> its type."""
    found = families(exposition(every_kind_of_call()))
    for name, kind in child_metric_families().items():
        found[name + "_total" if kind == "counter" else name] = kind
    return {name: kind for name, kind in found.items() if name.startswith(OURS)}


def test_names_follow_prometheus_conventions() -> None:
    declared = served()
    assert len(declared) == 16
    for name, kind in declared.items():
        assert NAME.match(name), name
        assert name.endswith("_total") == (kind == "counter"), f"{name} ({kind})"
        assert not re.search(r"_(ms|milliseconds|minutes|hours|kb|mb|kilobytes|megabytes)(_|$)", name), name
        if "duration" in name or "lag_seconds" in name:
            assert name.endswith("_seconds"), name
        if "memory" in name:
            assert name.endswith("_bytes"), name
    genai = {name for name in declared if name.startswith("gen_ai_")}
    assert genai == {"gen_ai_server_request_duration_seconds", "gen_ai_client_token_usage"}


def test_every_metric_is_documented_and_every_documented_metric_is_served() -> None:
    documented = set(re.findall(r"^\| `((?:modelmarket|gen_ai)_[a-z0-9_]+)` \|", DOCS.read_text(), re.MULTILINE))
    assert documented == set(served())


def test_labels_of_each_family() -> None:
    text = exposition(every_kind_of_call())
    labels = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(OURS):
            labels[family.name] = {k for s in family.samples for k in s.labels if k != "le"}
    assert labels["modelmarket_requests"] == {"protocol", "model", "version", "code"}
    assert labels["modelmarket_limit_refusals"] == {"protocol", "model", "error_type", "code"}
    assert labels["modelmarket_revenue"] == {"model", "version", "currency"}
    assert labels["gen_ai_client_token_usage"] == {"gen_ai_operation_name", "gen_ai_request_model", "gen_ai_token_type"}
    assert labels["modelmarket_runner_resident_memory_bytes"] == {"model", "version", "replica"}


def test_figures_of_billed_calls_and_refusals() -> None:
    found = samples(exposition(every_kind_of_call()))
    oip = frozenset({("protocol", "oip"), ("model", "digits"), ("version", "1.0.0"), ("code", "200")})
    assert found[("modelmarket_requests_total", oip)] == 1
    refused = frozenset({("protocol", "oip"), ("model", ""), ("error_type", "RateLimited"), ("code", "429")})
    assert found[("modelmarket_limit_refusals_total", refused)] == 1
    assert found[("modelmarket_errors_total", refused)] == 1
    usd = frozenset({("model", "digits"), ("version", "1.0.0"), ("currency", "USD")})
    assert found[("modelmarket_revenue_total", usd)] == pytest.approx(0.001)
    units = frozenset({("model", "digits"), ("version", "1.0.0")})
    assert found[("modelmarket_inference_units_total", units)] == pytest.approx(1.012)
    chat = frozenset({("gen_ai_operation_name", "chat"), ("gen_ai_request_model", "digits"), ("error_type", "")})
    assert found[("gen_ai_server_request_duration_seconds_count", chat)] == 1
    embed_in = frozenset(
        {("gen_ai_operation_name", "embeddings"), ("gen_ai_request_model", "digits"), ("gen_ai_token_type", "input")}
    )
    assert found[("gen_ai_client_token_usage_sum", embed_in)] == 3
    assert found[("gen_ai_client_token_usage_bucket", embed_in | {("le", "4.0")})] == 1
    assert found[("gen_ai_client_token_usage_bucket", embed_in | {("le", "1.0")})] == 0


def test_names_the_catalogue_does_not_publish_make_no_series() -> None:
    metrics = GatewayMetrics(lambda: CATALOGUE)
    for i in range(500):
        metrics.record(call(f"/v2/models/made-up-{i}/infer", status=404, model=f"made-up-{i}", error_type="NotFound"))
        metrics.record(call(status=200, model="digits", version=f"9.{i}", iu="1", cost="1", currency="USD"))
        metrics.record(call(status=200, model=f"made-up-{i}", version="1.0.0", iu="1", cost="1", currency="USD"))
    ours = [line for line in exposition(metrics).splitlines() if line.startswith(OURS)]
    assert ours and not any("made-up" in line or 'version="9.' in line for line in ours)
    assert len(metrics.tables.requests) == 3  # (404, "", ""), (200, digits, ""), (200, "", "")
    assert len(metrics.tables.billed) == 2


def test_error_types_operations_and_currencies_are_capped() -> None:
    metrics = GatewayMetrics(lambda: CATALOGUE)
    for i in range(MAX_ERROR_TYPES + 40):
        metrics.record(call(status=500, error_type=f"Error{i}"))
    metrics.record(call(status=500, error_type="not an identifier {}"))
    for i in range(40):
        metrics.record(call("/v1/x", operation=f"op{i}"))
    metrics.record(call(model="digits", version="1.0.0", iu="1", cost="5", currency="usd!"))
    metrics.record(call(model="digits", version="1.0.0", iu="1", cost="5", currency="JPY"))
    error_types = {key[4] for key in metrics.tables.requests} - {""}
    assert len(error_types) == MAX_ERROR_TYPES + 1 and OTHER in error_types
    assert len({key[0] for key in metrics.tables.genai_durations}) == 16 + 1
    billed = metrics.tables.billed
    assert billed[("digits", "1.0.0", "")].iu == 1 and billed[("digits", "1.0.0", "")].revenue == 0
    assert billed[("digits", "1.0.0", "JPY")].revenue == 5


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.0010", 0.001), ("7/60", 7 / 60), ("12", 12.0), ("nan", 0.0), ("inf", 0.0), ("1e999", 0.0), ("-1", 0.0),
     ("1/0", 0.0), ("x", 0.0), ("1" * 65, 0.0), (None, 0.0)],
)  # fmt: skip
def test_amounts_are_read_from_exact_text(text: str | None, value: float) -> None:
    assert _amount(text) == pytest.approx(value)


def test_runner_facts_and_restarts_that_never_go_down() -> None:
    supervisor = Supervisor([process(0, restarts=2), process(1, state="starting", rss=None)])
    collector = RunnerCollector(supervisor)
    collector.refresh()
    facts = collector.facts
    assert dict(facts.up) == {("digits", "1.0.0", "0"): 1.0, ("digits", "1.0.0", "1"): 0.0}
    assert dict(facts.rss_bytes) == {("digits", "1.0.0", "0"): 50_000_000.0}
    assert facts.queue_depth == [(("digits", "1.0.0"), 2.0)]
    assert facts.restarts == {("digits", "1.0.0"): 2}
    supervisor.processes = [process(0, restarts=0)]  # replica 0 replaced, replica 1 scaled down
    collector.refresh()
    assert collector.facts.restarts == {("digits", "1.0.0"): 2}
    supervisor.processes = [process(0, restarts=1)]
    collector.refresh()
    assert collector.facts.restarts == {("digits", "1.0.0"): 3}
    supervisor.processes = []  # scaled to zero: the count stays
    collector.refresh()
    assert collector.facts.restarts == {("digits", "1.0.0"): 3} and collector.facts.up == []


def test_restart_count_keeps_what_a_replica_counted() -> None:
    count = RestartCount()
    assert count.update({("m", "1", "0"): 3, ("m", "1", "1"): 1}) == {("m", "1"): 4}
    assert count.update({("m", "1", "0"): 4}) == {("m", "1"): 5}
    assert count.update({("m", "1", "0"): 0, ("m", "1", "1"): 0}) == {("m", "1"): 5}


def test_a_supervisor_without_a_snapshot_gives_no_runner_series() -> None:
    metrics = GatewayMetrics(lambda: None, object())
    assert "modelmarket_runner_up{" not in exposition(metrics)


def test_the_metering_lag() -> None:
    assert lag_figures(LagReading(10, 10, None), now=100.0) == (0, 0.0)
    assert lag_figures(LagReading(10, 4, 70.0), now=100.0) == (6, 30.0)
    assert lag_figures(LagReading(10, 4, None), now=100.0) == (6, 0.0)
    assert lag_figures(LagReading(10, 12, 70.0), now=100.0) == (0, 0.0)


def test_the_childrens_folder_stays_under_the_metrics_dir(tmp_path: Path) -> None:
    for gateway_id in ("gateway-1", "../../etc", "a/b", ".hidden", ""):
        settings = Settings(home=tmp_path, gateway_id=gateway_id)
        folder = child_metrics_dir(settings)
        assert folder.parent == settings.metrics_dir and folder.name not in ("", ".", "..")


def test_the_child_gets_the_folder_only_when_metrics_are_on(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": "/somewhere/else"}
    set_child_metrics_env(env, Settings(home=tmp_path))
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(child_metrics_dir(Settings(home=tmp_path)).resolve())
    set_child_metrics_env(env, Settings(home=tmp_path, metrics_enabled=False))
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
