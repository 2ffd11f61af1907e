"""15. The publish gate under attack: a provider whose package is built to hang, flood, lie, escape or race the gate.

Every package here is ``python``-runtime provider code run by the gate in its sandbox (``bwrap`` on this machine),
driven in-process: ``platform.gate.submit`` then ``platform.gate.run``. Whatever the package does, the gate must
end in bounded time with a stored verdict of bounded size, and leave nothing behind: no runner folder under
``MODELMARKET_HOME/gate``, no cgroup and no process of the submission (``_run`` checks this after every run).

Some answers below are forged: provider code runs in the runner's own Python process, so it can replace the
runner's response encoder (``oip.encode_response``) and send the gate any JSON it likes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.sandbox_packages import PROVIDER, echo_package, fork_bomb_package, never_returns_package, write_package

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.core.errors import Conflict, NotFound, PermissionDenied
from modelmarket.governance.model import StageRecord, Submission
from modelmarket.governance.policy import BenchmarkPolicy, BiasPolicy, GatePolicy
from modelmarket.settings import Settings

pytestmark = pytest.mark.timeout(120)

CALL_TIMEOUT_S = 2.0
"""The per-call timeout hostile packages ask for (``sandbox: {timeout_s: 2}``)."""
START_TIMEOUT_S = 12.0
"""How long a hostile package's runner may take to start: short, so a load that never returns is cut quickly, but
enough for a bwrap runner that imports scikit-learn while the parallel suite keeps both cores busy."""
SLACK_S = 10.0
"""How far past its bound a stage may end on a busy shared machine."""
MAX_SUMMARY_CHARS = 2_000
"""What we hold a stored one-line summary to: long enough for any honest verdict, far below provider floods."""
MAX_RECORD_BYTES = 64 * 1024
"""What we hold one stage's stored record (summary and report) to."""
EXAMPLE = {"name": "ones", "inputs": [{"name": "x", "shape": [1, 4], "data": [1, 1, 1, 1]}]}
FAST_BENCHMARK = BenchmarkPolicy(calls=5, seconds=1)
NO_BIAS_REQUIRED = BiasPolicy(required_for=())


@pytest.fixture()
def platform(tmp_path: Path) -> Platform:
    plat = bootstrap(Settings(home=tmp_path / "home", runner_start_timeout_s=START_TIMEOUT_S))
    plat.accounts.create(PROVIDER, "provider")
    plat.gate.policy = GatePolicy(benchmark=FAST_BENCHMARK, bias=NO_BIAS_REQUIRED)
    return plat


# --- helpers


def _edit(package: Path, **changes: Any) -> Path:
    path = package / "modelmarket.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1_000_000, default_flow_style=None))
    return package


def _manifest(package: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((package / "modelmarket.yaml").read_text())
    return doc


def _stages(sub: Submission) -> dict[str, str]:
    return {s.stage: s.status for s in sub.stages}


def _stage(sub: Submission, name: str) -> StageRecord:
    record = sub.stage(name)
    assert record is not None, f"no {name} stage in {_stages(sub)}"
    return record


def _run(platform: Platform, package: Path) -> tuple[Submission, float]:
    """Submit and run ``package``; the submission as it ended and the seconds ``run`` took. Checks that nothing of
    the run is left behind."""
    sub = platform.gate.submit(package, actor="cli")
    started = time.monotonic()
    try:
        ended = platform.gate.run(sub.id)
    finally:
        elapsed = time.monotonic() - started
        _assert_nothing_left(platform, sub.id)
    return ended, elapsed


def _home(platform: Platform) -> Path:
    return Path(platform.settings.home)


def _own_cgroup_parents() -> list[Path]:
    """Where the supervisor of this process makes its runners' cgroups (``runtime/sandbox.Cgroup``)."""
    parents: list[Path] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        names = [""] if not controllers else [controllers, *controllers.split(",")]
        for name in names:
            parents.append(Path("/sys/fs/cgroup") / name / path.lstrip("/") / "modelmarket")
    return [p for p in parents if p.is_dir()]


def _cgroups_of(fragment: str) -> list[str]:
    return sorted({str(p) for parent in _own_cgroup_parents() for p in parent.iterdir() if fragment in p.name})


def _processes_of(*fragments: str) -> list[str]:
    """Processes (not this one) whose command line or working directory mentions one of ``fragments``."""
    found: list[str] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if any(f in cmdline or f in cwd for f in fragments):
            found.append(f"{entry}: {cmdline[:200]} (cwd {cwd})")
    return found


def _assert_nothing_left(platform: Platform, submission_id: str, wait_s: float = 10.0) -> None:
    gate_dir = _home(platform) / "gate"
    deadline = time.monotonic() + wait_s
    while True:
        folders = sorted(p.name for p in gate_dir.iterdir()) if gate_dir.is_dir() else []
        cgroups = _cgroups_of(submission_id)
        processes = _processes_of(submission_id, str(gate_dir))
        if not (folders or cgroups or processes) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert folders == [], f"runner folders left in {gate_dir}: {folders}"
    assert cgroups == [], f"cgroups left: {cgroups}"
    assert processes == [], f"processes left: {processes}"


def _record_bytes(record: StageRecord) -> int:
    return len(json.dumps(record.to_json()).encode())


def _forging_package(dest: Path, body: bytes, *, name: str = "py-forger") -> Path:
    """A model whose runner answers every call with ``body`` (status 200), whatever was asked."""
    source = f"""
    import sys

    BODY = {body!r}


    def _forged(model, version, request, outputs):
        return BODY, None


    class Model:
        def load(self, path):
            sys.modules["modelmarket.runtime.oip"].encode_response = _forged

        def predict(self, inputs):
            return {{"y": inputs["x"] * 2}}
    """
    package = write_package(dest, name, source, "Answers what it likes.", sandbox={"timeout_s": CALL_TIMEOUT_S})
    return _edit(package, examples=[{**EXAMPLE, "expect": {"y": [2, 2, 2, 2]}}])


# --- bounded time


def test_a_predict_that_never_returns_fails_the_smoke_test_within_its_call_timeout(
    platform: Platform, tmp_path: Path
) -> None:
    package = never_returns_package(tmp_path / "pkg", sandbox={"timeout_s": CALL_TIMEOUT_S})
    sub, elapsed = _run(platform, _edit(package, examples=[EXAMPLE]))
    assert sub.status == "failed" and _stages(sub)["smoke_test"] == "failed"
    assert "timeout" in _stage(sub, "smoke_test").summary  # cut at the call's timeout, not at the start's
    # the runner's start (bounded by its own timeout; seconds under the parallel suite's load), then the call
    assert elapsed < START_TIMEOUT_S + CALL_TIMEOUT_S + SLACK_S


def test_a_load_that_never_returns_fails_within_the_start_timeout(platform: Platform, tmp_path: Path) -> None:
    source = """
    import time


    class Model:
        def load(self, path):
            while True:
                time.sleep(1)

        def predict(self, inputs):
            return {"y": inputs["x"] * 2}
    """
    package = write_package(tmp_path / "pkg", "py-slow-load", source, "Never loads.")
    sub, elapsed = _run(platform, _edit(package, examples=[EXAMPLE]))
    assert sub.status == "failed" and _stages(sub)["smoke_test"] == "failed"
    assert "did not start" in _stage(sub, "smoke_test").summary
    assert elapsed < START_TIMEOUT_S + SLACK_S


_HANGS_AFTER = """
import time

ANSWERS = {answers!r}
DELAY_S = {delay_s!r}


class Model:
    def load(self, path):
        self.calls = 0

    def predict(self, inputs):
        self.calls += 1
        if self.calls > ANSWERS:
            while True:
                time.sleep(1)
        time.sleep(DELAY_S)
        return {{"y": inputs["x"] * 2}}
"""


def test_a_model_that_hangs_during_the_benchmark_fails_it_within_the_policy_seconds_and_a_call(
    platform: Platform, tmp_path: Path
) -> None:
    platform.gate.policy = GatePolicy(benchmark=BenchmarkPolicy(calls=10_000, seconds=1), bias=NO_BIAS_REQUIRED)
    source = _HANGS_AFTER.format(answers=5, delay_s=0.0)  # the smoke test and warm-up answer, then it hangs
    package = write_package(tmp_path / "pkg", "py-hangs", source, "Hangs.", sandbox={"timeout_s": CALL_TIMEOUT_S})
    sub, elapsed = _run(platform, _edit(package, examples=[EXAMPLE]))
    assert _stages(sub)["smoke_test"] == "passed"
    assert sub.status == "failed" and _stages(sub)["benchmark"] == "failed"
    assert "timeout" in _stage(sub, "benchmark").summary
    assert _stage(sub, "benchmark").duration_ms / 1000 < 1 + CALL_TIMEOUT_S + SLACK_S
    assert elapsed < 1 + CALL_TIMEOUT_S + SLACK_S


def test_the_benchmark_of_a_slow_model_stops_at_the_policy_seconds(platform: Platform, tmp_path: Path) -> None:
    platform.gate.policy = GatePolicy(benchmark=BenchmarkPolicy(calls=10_000, seconds=1), bias=NO_BIAS_REQUIRED)
    delay_s = 0.4
    source = _HANGS_AFTER.format(answers=10**9, delay_s=delay_s)
    package = write_package(tmp_path / "pkg", "py-slow", source, "Slow.", sandbox={"timeout_s": CALL_TIMEOUT_S})
    sub, _ = _run(platform, _edit(package, examples=[EXAMPLE]))
    assert sub.status == "pending_review"
    bench = _stage(sub, "benchmark")
    # the warm-up, then calls until the first one that ends past the second: at most 1 s / 0.4 s + 1 of them
    assert 1 <= bench.report["calls"] <= 4 and bench.report["p50_ms"] >= delay_s * 1000
    assert bench.duration_ms / 1000 < 1 + 2 * delay_s + SLACK_S


MAX_RUN_S = 3.0


def test_sixteen_slow_examples_end_at_the_policy_max_run_s(platform: Platform, tmp_path: Path) -> None:
    """Each example answers within its call timeout, but sixteen of them take 16 s: the run's own limit ends it."""
    platform.gate.policy = GatePolicy(benchmark=FAST_BENCHMARK, bias=NO_BIAS_REQUIRED, max_run_s=MAX_RUN_S)
    delay_s = 1.0
    source = _HANGS_AFTER.format(answers=10**9, delay_s=delay_s)
    package = write_package(tmp_path / "pkg", "py-slow", source, "Slow.", sandbox={"timeout_s": CALL_TIMEOUT_S})
    examples = [{**copy.deepcopy(EXAMPLE), "name": f"slow-{i}"} for i in range(16)]  # no YAML aliases
    sub, elapsed = _run(platform, _edit(package, examples=examples))
    assert sub.status == "failed" and _stages(sub)["smoke_test"] == "failed"
    assert "max_run_s" in _stage(sub, "smoke_test").summary
    assert elapsed < MAX_RUN_S + CALL_TIMEOUT_S + 4 < 16 * delay_s


def test_a_slow_model_on_a_large_evaluation_set_ends_at_the_policy_max_run_s(
    platform: Platform, tmp_path: Path
) -> None:
    """Every batch of 256 rows answers within its call timeout, but 40 of them take 20 s."""
    policy = GatePolicy(benchmark=FAST_BENCHMARK, bias=BiasPolicy(required_for=()), max_run_s=MAX_RUN_S)
    platform.gate.policy = policy
    delay_s = 0.5
    package = _classifier_package(tmp_path / "pkg", _eval_csv(["g1", "g2"] * 5_120))
    (package / "predict.py").write_text(
        (package / "predict.py")
        .read_text()
        .replace("x = inputs", f"time.sleep({delay_s}); x = inputs")
        .replace("import numpy as np", "import time\n\nimport numpy as np")
    )
    sub, elapsed = _run(platform, _edit(package, sandbox={"timeout_s": CALL_TIMEOUT_S}))
    assert sub.status == "failed" and _stages(sub)["bias"] == "failed", _stages(sub)
    assert "max_run_s" in _stage(sub, "bias").summary
    assert elapsed < MAX_RUN_S + CALL_TIMEOUT_S + 4 < 40 * delay_s


# --- bounded size


def test_an_example_with_the_most_values_passes_and_its_report_stays_small(platform: Platform, tmp_path: Path) -> None:
    rows = 65_536 // 4
    example = {"name": "big", "inputs": [{"name": "x", "shape": [rows, 4], "data": [1] * (rows * 4)}]}
    package = _edit(echo_package(tmp_path / "pkg"), examples=[example])
    sub, _ = _run(platform, package)
    assert sub.status == "pending_review", _stages(sub)
    smoke = _stage(sub, "smoke_test")
    assert smoke.report["examples"][0]["outputs"]["y"] == [2.0] * 5  # only the first values are kept
    assert _record_bytes(smoke) < 4_096 and _record_bytes(_stage(sub, "benchmark")) < 4_096


def test_an_example_file_larger_than_a_request_fails_the_smoke_test_cleanly(tmp_path: Path) -> None:
    platform = bootstrap(
        Settings(home=tmp_path / "home", runner_start_timeout_s=START_TIMEOUT_S, max_request_bytes=64 * 1024)
    )
    platform.accounts.create(PROVIDER, "provider")
    platform.gate.policy = GatePolicy(benchmark=FAST_BENCHMARK, bias=NO_BIAS_REQUIRED)
    source = """
    import numpy as np


    class Model:
        def load(self, path):
            self.path = path

        def predict(self, inputs):
            return {"size": np.array([len(inputs["audio"][0])], dtype=np.int64)}
    """
    package = write_package(tmp_path / "pkg", "py-bytes", source, "Counts bytes.")
    (package / "big.bin").write_bytes(b"\x01" * (1024 * 1024))
    doc = _manifest(package)
    _edit(
        package,
        artifacts=[*doc["artifacts"], {"path": "big.bin"}],
        inputs=[{"name": "audio", "datatype": "BYTES", "shape": [-1]}],
        outputs=[{"name": "size", "datatype": "INT64", "shape": [-1]}],
        examples=[{"name": "big", "inputs": [{"name": "audio", "file": "big.bin"}]}],
    )
    sub, elapsed = _run(platform, package)
    assert sub.status == "failed" and _stages(sub)["smoke_test"] == "failed"
    smoke = _stage(sub, "smoke_test")
    assert "413" in smoke.summary or "larger" in smoke.summary, smoke.summary
    assert len(smoke.summary) < MAX_SUMMARY_CHARS and elapsed < SLACK_S


_CLASSIFIER = """
import numpy as np


class Model:
    def load(self, path):
        self.path = path

    def predict(self, inputs):
        x = inputs["x"]
        return {{"label": (x[:, 0] > 0.5).astype(np.int64)[: len(x) - DROP]}}


DROP = {drop!r}
"""


def _eval_csv(groups: list[str] | None = None) -> bytes:
    """Rows ``a,b,c,d,y,group`` where ``y == a``, two groups of 40 (a model predicting ``a > 0.5`` is fair)."""
    groups = groups if groups is not None else ["g1", "g2"] * 40
    lines = ["a,b,c,d,y,group"]
    for i, group in enumerate(groups):
        a = (i // 2) % 2
        lines.append(f"{a},0,0,0,{a},{group}")
    return ("\n".join(lines) + "\n").encode()


def _classifier_package(dest: Path, csv_bytes: bytes, *, drop: int = 0) -> Path:
    """A model with a labelled evaluation set ``eval.csv`` (features a-d, label y, sensitive feature group)."""
    package = write_package(dest, "py-clf", _CLASSIFIER.format(drop=drop), "Classifies.")
    (package / "eval.csv").write_bytes(csv_bytes)
    doc = _manifest(package)
    return _edit(
        package,
        artifacts=[*doc["artifacts"], {"path": "eval.csv"}],
        outputs=[{"name": "label", "datatype": "INT64", "shape": [-1]}],
        evaluation={
            "dataset": "eval.csv",
            "label": "y",
            "features": ["a", "b", "c", "d"],
            "sensitive_features": ["group"],
        },
    )


def test_a_fair_classifier_passes_the_bias_stage(platform: Platform, tmp_path: Path) -> None:
    """The control for the evaluation-set attacks below: the same package with an honest set passes."""
    sub, _ = _run(platform, _classifier_package(tmp_path / "pkg", _eval_csv()))
    assert sub.status == "pending_review" and _stages(sub)["bias"] == "passed", _stage(sub, "bias").summary


@pytest.mark.parametrize(
    ("csv_bytes", "words"),
    [
        pytest.param(_eval_csv() + b"1,0,0,0,1," + b"g" * (1024 * 1024 + 10) + b"\n", "longer than", id="huge-line"),
        pytest.param(_eval_csv(["g1", "g2"] * 60), "more than 100 rows", id="more-than-max-rows"),
        pytest.param(_eval_csv().replace(b"g1", b"g\xff1", 1), "not UTF-8", id="not-utf8"),
        pytest.param(b"", "empty", id="empty"),
    ],
)
def test_a_hostile_evaluation_set_fails_the_bias_stage_with_a_short_summary(
    platform: Platform, tmp_path: Path, csv_bytes: bytes, words: str
) -> None:
    platform.gate.policy = GatePolicy(benchmark=FAST_BENCHMARK, bias=BiasPolicy(required_for=(), max_rows=100))
    sub, elapsed = _run(platform, _classifier_package(tmp_path / "pkg", csv_bytes))
    assert sub.status == "failed" and _stages(sub)["bias"] == "failed", _stages(sub)
    bias = _stage(sub, "bias")
    assert words in bias.summary and "eval.csv" in bias.summary, bias.summary[:300]
    assert len(bias.summary) < MAX_SUMMARY_CHARS and _record_bytes(bias) < MAX_RECORD_BYTES
    assert elapsed < SLACK_S * 2


@pytest.mark.parametrize(
    "group",
    [
        pytest.param("x" * 60_000 + "\n" + "y" * 60_000, id="huge-multiline"),
        pytest.param("g\x003", id="nul"),
    ],
)
def test_a_hostile_group_name_does_not_reach_the_stored_summary_whole(
    platform: Platform, tmp_path: Path, group: str
) -> None:
    quoted = '"' + group + '"'
    csv_bytes = _eval_csv(["g1", "g2"] * 40 + [quoted] * 20)  # a fair group, but of 20 rows: too few to judge
    sub, _ = _run(platform, _classifier_package(tmp_path / "pkg", csv_bytes))
    bias = _stage(sub, "bias")
    assert sub.status == "failed" and bias.status == "failed"
    assert "column 'group'" in bias.summary  # the cell is refused, naming its row and column
    assert "\n" not in bias.summary and "\x00" not in bias.summary
    assert len(bias.summary) < MAX_SUMMARY_CHARS and _record_bytes(bias) < MAX_RECORD_BYTES


def test_an_unclosed_quote_in_the_evaluation_set_is_refused_naming_the_row(platform: Platform, tmp_path: Path) -> None:
    csv_bytes = _eval_csv().replace(b"1,0,0,0,1,g2", b'1,0,0,0,1,"g2', 1)
    sub, _ = _run(platform, _classifier_package(tmp_path / "pkg", csv_bytes))
    bias = _stage(sub, "bias")
    assert sub.status == "failed" and "not valid CSV" in bias.summary and "row 5" in bias.summary, bias.summary


# --- containment


_PROBE = """
import os
import socket

import numpy as np

HOME = {home!r}
DATABASE = {database!r}
PORT = {port!r}
MARKER = {marker!r}


def _tried(action):
    try:
        action()
        return 1.0
    except OSError:
        return 0.0


def _write_home():
    with open(os.path.join(HOME, "pwned"), "w") as fh:
        fh.write("pwned")


def _read_database():
    with open(DATABASE, "rb") as fh:
        if not fh.read(16):
            raise OSError("empty")


def _connect():
    with socket.create_connection(("127.0.0.1", PORT), timeout=2) as sock:
        sock.sendall(b"leak")


def _write_marker():
    with open(MARKER, "w") as fh:
        fh.write("pwned")


class Model:
    def load(self, path):
        self.path = path

    def predict(self, inputs):
        got = [_tried(_write_home), _tried(_read_database), _tried(_connect), _tried(_write_marker)]
        return {{"y": np.array([got] * len(inputs["x"]), dtype=np.float32)}}
"""


def _files(root: Path, skip: Callable[[Path], bool]) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not skip(p)
    }


def test_provider_code_in_the_smoke_test_reaches_neither_the_home_nor_the_network(
    platform: Platform, tmp_path: Path
) -> None:
    home = _home(platform)
    database = home / "modelmarket.db"
    assert database.is_file() and database.stat().st_size > 0
    marker = tmp_path / "marker"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        source = _PROBE.format(
            home=str(home), database=str(database), port=listener.getsockname()[1], marker=str(marker)
        )
        package = _edit(write_package(tmp_path / "pkg", "py-probe", source, "Probes."), examples=[EXAMPLE])
        sub = platform.gate.submit(package, actor="cli")

        def platform_owned(p: Path) -> bool:  # what the gate itself writes while it runs
            rel = p.relative_to(home).parts
            checkpoint = rel[0] == "keys" and rel[-1].startswith("latest-checkpoint.")  # the audit's signed copy
            return rel[0] == "gate" or rel[0].startswith(("modelmarket.db", "events.db")) or checkpoint

        before = _files(home, platform_owned)
        sub = platform.gate.run(sub.id)
        _assert_nothing_left(platform, sub.id)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing connected
    assert _files(home, platform_owned) == before
    assert not (home / "pwned").exists() and not marker.exists()
    smoke = _stage(sub, "smoke_test")
    assert smoke.report["profile"] == "bwrap"
    # The model answered, and says what it managed: it could neither read the store nor connect. Its writes to the
    # home's path and to the marker "succeed" into the sandbox's own empty /tmp, which the host never sees (above).
    assert smoke.report["examples"][0]["outputs"]["y"][1:3] == [0.0, 0.0], smoke.report


def test_a_fork_bomb_in_the_smoke_test_is_stopped_and_leaves_no_process(platform: Platform, tmp_path: Path) -> None:
    package = fork_bomb_package(
        tmp_path / "pkg", sandbox={"pids": 32, "timeout_s": CALL_TIMEOUT_S}, max_processes=2_048, lifetime_s=60.0
    )
    sub, elapsed = _run(platform, _edit(package, examples=[EXAMPLE]))
    assert sub.status == "failed" and _stages(sub)["smoke_test"] == "failed"
    assert "process limit" in _stage(sub, "smoke_test").summary or "timeout" in _stage(sub, "smoke_test").summary
    assert elapsed < CALL_TIMEOUT_S + SLACK_S


# --- outputs that lie


@pytest.mark.parametrize(
    ("body", "words"),
    [
        pytest.param(b'{"outputs":[{"name":"y","data":[2,2,2]}]}', "3 value(s), expected 4", id="short"),
        pytest.param(b'{"outputs":[]}', "output 'y' missing", id="no-output"),
        pytest.param(b'{"outputs":[{"name":"y","data":[true,true,2,2]}]}', "value [0] is True", id="booleans"),
        pytest.param(b'{"outputs":[{"name":"y","data":["2","2","2","2"]}]}', "value [0] is '2'", id="strings"),
        pytest.param(b'{"outputs":[{"name":"y","data":{"a":1}}]}', "1 value(s), expected 4", id="mapping"),
        pytest.param(b'{"outputs":"yyyy"}', "has no 'outputs' list of tensors", id="outputs-a-string"),
        pytest.param(b"NaN", "the model failed (200)", id="not-json"),
    ],
)
def test_an_answer_that_lies_fails_the_smoke_test_naming_the_output(
    platform: Platform, tmp_path: Path, body: bytes, words: str
) -> None:
    sub, _ = _run(platform, _forging_package(tmp_path / "pkg", body))
    assert sub.status == "failed" and _stages(sub)["smoke_test"] == "failed"
    assert words in _stage(sub, "smoke_test").summary, _stage(sub, "smoke_test").summary


def test_a_nan_where_a_number_is_expected_fails_the_smoke_test(platform: Platform, tmp_path: Path) -> None:
    source = """
    import numpy as np


    class Model:
        def load(self, path):
            self.path = path

        def predict(self, inputs):
            return {"y": np.full(inputs["x"].shape, np.nan, dtype=np.float32)}
    """
    package = write_package(tmp_path / "pkg", "py-nan", source, "Answers NaN.")
    sub, _ = _run(platform, _edit(package, examples=[{**EXAMPLE, "expect": {"y": [2, 2, 2, 2]}}]))
    assert sub.status == "failed" and _stages(sub)["smoke_test"] == "failed"
    assert "value [0] is None, expected 2" in _stage(sub, "smoke_test").summary  # NaN travels as JSON null


UNREADABLE_ANSWERS = [
    pytest.param(b'{"outputs":5}', id="outputs-a-number"),
    pytest.param(b'{"outputs":[{"name":"y","data":' + b"[" * 990 + b"2" + b"]" * 990 + b"}]}", id="deep-data"),
]


@pytest.mark.parametrize("body", UNREADABLE_ANSWERS)
def test_an_answer_the_gate_cannot_read_ends_the_run_and_frees_the_version(
    platform: Platform, tmp_path: Path, body: bytes
) -> None:
    sub, _ = _run(platform, _forging_package(tmp_path / "pkg", body))
    assert sub.status == "failed"
    assert len(sub.stages[-1].summary) < MAX_SUMMARY_CHARS
    again = _forging_package(tmp_path / "fixed", b'{"outputs":[{"name":"y","data":[2,2,2,2]}]}')
    assert platform.gate.submit(again, actor="cli").status == "running"  # its name@version is free again


@pytest.mark.parametrize("body", UNREADABLE_ANSWERS)
def test_an_answer_the_gate_cannot_read_fails_the_smoke_test(platform: Platform, tmp_path: Path, body: bytes) -> None:
    sub, _ = _run(platform, _forging_package(tmp_path / "pkg", body))
    assert _stages(sub).get("smoke_test") == "failed", _stages(sub)


def test_a_model_answering_fewer_labels_than_rows_fails_the_bias_stage(platform: Platform, tmp_path: Path) -> None:
    sub, _ = _run(platform, _classifier_package(tmp_path / "pkg", _eval_csv(), drop=1))
    assert sub.status == "failed" and _stages(sub)["bias"] == "failed"
    assert "holds 79 value(s) for 80 rows" in _stage(sub, "bias").summary


@pytest.mark.parametrize("where", ["predict", "load"])
def test_a_megabyte_error_message_does_not_flood_the_stored_stage(
    platform: Platform, tmp_path: Path, where: str
) -> None:
    source = f"""
    class Model:
        def load(self, path):
            if {where == "load"!r}:
                raise RuntimeError("A" * 1_000_000)

        def predict(self, inputs):
            raise RuntimeError("A" * 1_000_000)
    """
    package = _edit(write_package(tmp_path / "pkg", "py-loud", source, "Shouts."), examples=[EXAMPLE])
    sub, _ = _run(platform, package)
    smoke = _stage(sub, "smoke_test")
    assert sub.status == "failed" and smoke.status == "failed"
    assert len(smoke.summary) < MAX_SUMMARY_CHARS and _record_bytes(smoke) < MAX_RECORD_BYTES


# --- state


def test_racing_submissions_of_one_version_accept_exactly_one(platform: Platform, tmp_path: Path) -> None:
    for round_ in range(4):
        version = f"1.0.{round_}"
        packages = []
        for side in ("a", "b"):
            package = echo_package(tmp_path / f"{side}{round_}", version=version)
            (package / "predict.py").write_text((package / "predict.py").read_text() + f"\n# {side}\n")
            packages.append(package)
        barrier = threading.Barrier(len(packages))
        outcomes: list[object] = []

        def submit(package: Path, barrier: threading.Barrier = barrier, outcomes: list[object] = outcomes) -> None:
            barrier.wait()
            try:
                outcomes.append(platform.gate.submit(package, actor="cli"))
            except Conflict as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=submit, args=(p,)) for p in packages]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        accepted = [o for o in outcomes if isinstance(o, Submission)]
        assert len(outcomes) == 2 and len(accepted) == 1, outcomes
        assert [s.id for s in platform.gate.list() if s.version == version] == [accepted[0].id]
        # each round's winner stays running: four of the provider's five active submissions


def test_racing_submissions_of_one_provider_stay_within_its_active_limit(platform: Platform, tmp_path: Path) -> None:
    platform.gate.policy = GatePolicy(benchmark=FAST_BENCHMARK, bias=NO_BIAS_REQUIRED, max_active_per_provider=3)
    packages = [echo_package(tmp_path / f"m{i}", name=f"py-echo-{i}") for i in range(8)]
    barrier = threading.Barrier(len(packages))
    outcomes: list[object] = []

    def submit(package: Path) -> None:
        barrier.wait()
        try:
            outcomes.append(platform.gate.submit(package, actor="cli"))
        except Conflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=submit, args=(p,)) for p in packages]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 8 and sum(isinstance(o, Submission) for o in outcomes) == 3, outcomes
    assert all("max_active_per_provider" in o.message for o in outcomes if isinstance(o, Conflict))
    assert len(platform.gate.list(("running",))) == 3


def test_a_rejection_during_the_run_stops_it_and_no_later_stage_is_recorded(platform: Platform, tmp_path: Path) -> None:
    sub = platform.gate.submit(_edit(echo_package(tmp_path / "echo"), examples=[EXAMPLE]), actor="cli")

    def reject_after_smoke_test(stage: str, record: StageRecord | None) -> None:
        if stage == "smoke_test" and record is not None:
            platform.gate.reject(sub.id, actor="cli", reason="stopped by the operator")

    ended = platform.gate.run(sub.id, reject_after_smoke_test)
    _assert_nothing_left(platform, sub.id)
    assert ended.status == "rejected" and platform.gate.show(sub.id).status == "rejected"
    assert "benchmark" not in _stages(ended) and "publish" not in _stages(ended), _stages(ended)
    assert [s.status for s in ended.stages if s.stage == "review"] == ["rejected"]
    assert platform.registry.catalogue().names() == []


def _pending(platform: Platform, tmp_path: Path) -> Submission:
    sub, _ = _run(platform, echo_package(tmp_path / "echo"))
    assert sub.status == "pending_review"
    return sub


def test_a_decided_submission_cannot_be_decided_again(platform: Platform, tmp_path: Path) -> None:
    sub = _pending(platform, tmp_path)
    done = platform.gate.approve(sub.id, actor="cli", reason="fine")
    assert done.status == "published"
    with pytest.raises(Conflict, match="published"):
        platform.gate.approve(sub.id, actor="cli", reason="again")
    with pytest.raises(Conflict, match="published"):
        platform.gate.reject(sub.id, actor="cli", reason="changed my mind")
    assert platform.gate.show(sub.id).status == "published"
    actions = [r.action for r in platform.audit.list(limit=100)]
    assert actions.count("submission.approved") == 1 and "submission.rejected" not in actions


def test_a_failed_submission_cannot_be_approved(platform: Platform, tmp_path: Path) -> None:
    package = _edit(echo_package(tmp_path / "echo"), examples=[{**EXAMPLE, "expect": {"y": [3, 3, 3, 3]}}])
    sub, _ = _run(platform, package)
    assert sub.status == "failed"
    with pytest.raises(Conflict, match="failed"):
        platform.gate.approve(sub.id, actor="cli", reason="ship it anyway")
    assert platform.registry.catalogue().names() == []


def test_only_an_operator_other_than_the_provider_decides(platform: Platform, tmp_path: Path) -> None:
    rival = platform.accounts.create("rival-co", "provider")
    sub = _pending(platform, tmp_path)
    for who in (rival.id, "acct_does_not_exist", ""):
        with pytest.raises(PermissionDenied):
            platform.gate.approve(sub.id, actor="api", reason="ok", by_account_id=who)
    assert platform.gate.show(sub.id).status == "pending_review"


def test_another_provider_sees_no_submission_of_ours(platform: Platform, tmp_path: Path) -> None:
    rival = platform.accounts.create("rival-co", "provider")
    sub = platform.gate.submit(echo_package(tmp_path / "echo"), actor="cli")
    for ref in (sub.id, sub.ref):
        with pytest.raises(NotFound):
            platform.gate.show(ref, account_id=rival.id)
    assert platform.gate.list(provider_account_id=rival.id) == []


@pytest.mark.parametrize("second", ["reject", "approve"])
def test_a_decision_landing_during_an_approval_leaves_exactly_one_decision(
    platform: Platform, tmp_path: Path, second: str
) -> None:
    """A second operator decides while the first approval is on its way (between its announced review and its
    publish): exactly one of them takes effect, and the status, the catalogue and the audit log agree on which."""
    sub = _pending(platform, tmp_path)
    outcomes: dict[str, object] = {}

    def decide_meanwhile(stage: str, record: StageRecord | None) -> None:
        if stage == "review" and record is not None and "second" not in outcomes:
            outcomes["second"] = None  # once
            try:
                decide = platform.gate.reject if second == "reject" else platform.gate.approve
                outcomes["second"] = decide(sub.id, actor="cli", reason="the second operator")
            except Conflict as exc:
                outcomes["second"] = exc

    try:
        outcomes["first"] = platform.gate.approve(sub.id, actor="cli", reason="first", progress=decide_meanwhile)
    except Conflict as exc:
        outcomes["first"] = exc
    took_effect = [k for k in ("first", "second") if isinstance(outcomes[k], Submission)]
    assert len(took_effect) == 1, outcomes
    final = platform.gate.show(sub.id)
    actions = [r.action for r in platform.audit.list(limit=100)]
    decisions = [a for a in actions if a in ("submission.approved", "submission.rejected")]
    if final.status == "published":
        assert decisions == ["submission.approved"] and actions.count("model.published") == 1
        assert platform.registry.catalogue().names() == ["py-echo"]
    else:
        assert final.status == "rejected" and second == "reject", final.status
        assert decisions == ["submission.rejected"] and "model.published" not in actions
        assert platform.registry.catalogue().names() == []
    assert [s.status for s in final.stages if s.stage == "review"].count("waiting") == 1
    assert len([s for s in final.stages if s.stage == "review" and s.status != "waiting"]) == 1


def test_a_submission_left_running_by_a_stopped_cli_can_be_cleared(platform: Platform, tmp_path: Path) -> None:
    stuck = platform.gate.submit(echo_package(tmp_path / "echo"), actor="cli")  # the CLI died before run()
    changed = echo_package(tmp_path / "echo2")
    (changed / "predict.py").write_text((changed / "predict.py").read_text() + "\n# fixed\n")
    with pytest.raises(Conflict, match="reviews reject"):
        platform.gate.submit(changed, actor="cli")
    platform.gate.reject(stuck.id, actor="cli", reason="its run was interrupted")
    assert platform.gate.submit(changed, actor="cli").status == "running"
