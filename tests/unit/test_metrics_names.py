"""The metrics' names, labels and figures, without a gateway: Prometheus's naming conventions, every metric
documented in docs/metrics.md (and nothing documented that is not served), bounded labels, exact-text amounts,
restarts that never go down, and the metering lag."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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
    prepare_child_metrics_dir,
    set_child_metrics_env,
)
from modelmarket.observability.metrics_metering import (
    COUNTED_FILE,
    LagReading,
    LagSampler,
    child_file,
    counted_from,
    lag_figures,
    newest_per_kind,
    read_counted,
    write_counted,
)
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


def process(
    replica: int, state: str = "running", restarts: int = 0, rss: int | None = 50_000_000, pid: int | None = None
) -> dict[str, Any]:
    return {"replica": replica, "pid": pid, "state": state, "outstanding": 1, "rss_bytes": rss, "restarts": restarts}


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
    zero, one = ("m", "1", "0"), ("m", "1", "1")
    assert count.update({zero: (100, 3), one: (101, 1)}) == {("m", "1"): 4}
    assert count.update({zero: (102, 4)}) == {("m", "1"): 5}  # 0 restarted; 1 scaled down
    assert count.update({zero: (103, 0), one: (104, 0)}) == {("m", "1"): 5}  # 0 replaced; 1 back


def test_a_replaced_replica_that_reached_the_old_count_keeps_the_old_count() -> None:
    count = RestartCount()
    key = ("m", "1", "0")
    assert count.update({key: (100, 2)}) == {("m", "1"): 2}
    # replaced between two scrapes, and the new process restarted twice as well: a new pid, the same count
    assert count.update({key: (300, 2)}) == {("m", "1"): 4}
    assert count.update({key: (300, 2)}) == {("m", "1"): 4}
    assert count.update({}) == {("m", "1"): 4}


def test_a_restart_is_counted_once_whether_seen_down_or_not() -> None:
    count = RestartCount()
    key = ("m", "1", "0")
    assert count.update({key: (None, 0)}) == {("m", "1"): 0}  # not started yet
    assert count.update({key: (100, 0)}) == {("m", "1"): 0}
    assert count.update({key: (None, 0)}) == {("m", "1"): 0}  # died, waiting for its restart
    assert count.update({key: (101, 1)}) == {("m", "1"): 1}
    assert count.update({key: (105, 3)}) == {("m", "1"): 3}  # two more restarts between scrapes
    assert count.update({key: (None, 3)}) == {("m", "1"): 3}
    assert count.update({key: (None, 0)}) == {("m", "1"): 3}  # replaced: the new one not started yet
    assert count.update({key: (200, 0)}) == {("m", "1"): 3}


def test_a_replacement_through_the_supervisors_snapshot() -> None:
    supervisor = Supervisor([process(0, restarts=1, pid=100)])
    collector = RunnerCollector(supervisor)
    collector.refresh()
    supervisor.processes = [process(0, restarts=1, pid=200)]  # another process under replica 0, same count
    collector.refresh()
    assert collector.facts.restarts == {("digits", "1.0.0"): 2}


def test_a_supervisor_without_a_snapshot_gives_no_runner_series() -> None:
    metrics = GatewayMetrics(lambda: None, object())
    assert "modelmarket_runner_up{" not in exposition(metrics)


def test_scrapes_render_the_tables_as_the_latest_refresh_copied_them() -> None:
    metrics = GatewayMetrics(lambda: CATALOGUE)
    key = frozenset({("protocol", "oip"), ("model", "digits"), ("version", "1.0.0")})
    metrics.record(call(model="digits", version="1.0.0", iu="1", cost="0.5", currency="USD"))
    metrics.refresh()
    histo = metrics.tables.requests[("oip", "digits", "1.0.0", 200, "")]
    metrics.record(call(model="digits", version="1.0.0", iu="1", cost="0.5", currency="USD"))
    histo.counts[0] += 1000  # anything the loop writes after the copy is not rendered, half-updated or not
    found = samples(metrics.render(None)[0].decode())
    assert found[("modelmarket_request_duration_seconds_count", key)] == 1
    usd = frozenset({("model", "digits"), ("version", "1.0.0"), ("currency", "USD")})
    assert found[("modelmarket_revenue_total", usd)] == 0.5
    histo.counts[0] -= 1000
    found = samples(exposition(metrics))  # refreshes
    assert found[("modelmarket_request_duration_seconds_count", key)] == 2
    assert found[("modelmarket_revenue_total", usd)] == 1.0


def test_the_metering_lag() -> None:
    assert lag_figures(LagReading(10, 10, None), now=100.0) == (0, 0.0)
    assert lag_figures(LagReading(10, 4, 70.0), now=100.0) == (6, 30.0)
    assert lag_figures(LagReading(10, 4, None), now=100.0) == (6, 0.0)
    assert lag_figures(LagReading(10, 12, 70.0), now=100.0) == (0, 0.0)


def applied_counter(sampler: LagSampler) -> float:
    return next(s.value for m in sampler.applied.collect() for s in m.samples if s.name.endswith("_total"))


def test_a_child_counts_from_where_the_child_before_it_stopped_counting(tmp_path: Path) -> None:
    assert counted_from(None, 40) == 40  # the gateway's first child: from the offset applied at its start
    assert counted_from(35, 40) == 35  # the child before counted up to 35, then applied five more and died
    assert counted_from(50, 40) == 40  # a count past the store's offset (a restored store): from the start
    assert counted_from(35, None) == 35 and counted_from(None, None) is None
    readings = iter([LagReading(50, 42, None), LagReading(50, 42, None), LagReading(50, 47, None)])
    sampler = LagSampler(lambda: next(readings), counted_from=35, directory=tmp_path)
    sampler.sample()
    assert applied_counter(sampler) == 7 and read_counted(tmp_path) == 42
    sampler.sample()
    sampler.sample()
    assert applied_counter(sampler) == 12 and read_counted(tmp_path) == 47


def test_child_files_are_read_newest_first_and_capped_per_kind() -> None:
    assert child_file(Path("counter_12.db"), 1.0) is not None
    for name in (
        "counter_x.db",
        "counter_12.txt",
        "12.db",
        "_12.db",
        "counter_12345678901.db",
        "metering_counted_offset",
    ):
        assert child_file(Path(name), 1.0) is None, name
    files = [
        found
        for pid in range(10)
        for name in (f"counter_{pid}.db", f"gauge_mostrecent_{pid}.db")
        if (found := child_file(Path(name), float(pid if name.startswith("counter") else -pid))) is not None
    ]
    kept = newest_per_kind(files, 2)
    assert [f.path.name for f in kept] == [
        "counter_9.db",
        "counter_8.db",
        "gauge_mostrecent_0.db",
        "gauge_mostrecent_1.db",
    ]


def test_the_counted_offset_file_is_read_only_when_it_holds_an_offset(tmp_path: Path) -> None:
    assert read_counted(tmp_path) is None
    write_counted(tmp_path, 12)
    assert read_counted(tmp_path) == 12 and sorted(p.name for p in tmp_path.iterdir()) == [COUNTED_FILE]
    for text in ("", "-3", "1.5", "12abc", "9" * 40):
        (tmp_path / COUNTED_FILE).write_text(text)
        assert read_counted(tmp_path) is None, text


def test_the_childrens_folder_stays_under_the_metrics_dir(tmp_path: Path) -> None:
    for gateway_id in ("gateway-1", "../../etc", "a/b", ".hidden", ""):
        settings = Settings(home=tmp_path, gateway_id=gateway_id)
        folder = child_metrics_dir(settings)
        assert folder.parent == settings.metrics_dir and folder.name not in ("", ".", "..")
        assert folder.name.endswith(f".{os.getpid()}")  # its gateway's: two on one home never share one


def test_a_starting_gateway_removes_the_folders_of_gateways_that_are_gone(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead_pid = int(gone.stdout)
    dead = settings.metrics_dir / f"gateway-1.{dead_pid}"
    running = settings.metrics_dir / f"gateway-1.{os.getppid()}"  # another gateway on this home, still running
    unnamed = settings.metrics_dir / "notes"
    for folder in (dead, running, unnamed):
        folder.mkdir(parents=True)
        (folder / "counter_1.db").write_bytes(b"x")
    own = prepare_child_metrics_dir(settings)
    assert sorted(p.name for p in settings.metrics_dir.iterdir()) == sorted([own.name, running.name, unnamed.name])
    assert (running / "counter_1.db").exists() and list(own.iterdir()) == []


def test_the_child_gets_the_folder_only_when_metrics_are_on(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": "/somewhere/else"}
    set_child_metrics_env(env, Settings(home=tmp_path))
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(child_metrics_dir(Settings(home=tmp_path)).resolve())
    set_child_metrics_env(env, Settings(home=tmp_path, metrics_enabled=False))
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
