"""12. Sandboxes and runners under attack by the provider's own code: a package asking for less confinement than the
operator allows, a model hunting for the gateway's secrets, writing over its own code, reading its neighbours,
redirecting the gateway's connections, a pickle that runs code when opened, manifests with out-of-range serving
sections, and a model that floods or closes its output.

Two gateways of their own (not the shared `market`): ``strict``, with the operator's defaults (provider code under
``bwrap`` at least), and ``lax``, where the operator lowered the minimum to ``process`` and lists ``python`` and
``sklearn`` among the in-process runtimes. Both run with secret-looking variables in their environment and from a
working directory holding a secret file, as an operator's shell would start them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.e2e.conftest import MM, Cli, stop_gateway
from tests.e2e.conftest import Gateway as E2EGateway
from tests.hostile.conftest import Consumer, new_consumer
from tests.hostile.support import LiveProbe
from tests.sandbox_packages import PROVIDER, write_package

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.core.errors import InvalidInput
from modelmarket.settings import Settings

START_TIMEOUT_S = 120
X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
PROBE_WAIT_S = 3.5
"""How long the socket-swap test watches for the gateway following the planted link (probes run every second)."""


# -- packages ------------------------------------------------------------------------------------------------------

_REPORTING_MODEL = '''
import json
import os
import sys

import numpy as np

{constants}

def _try(action):
    """'done' if ``action`` succeeded, else the exception's type name (what stopped it)."""
    try:
        action()
        return "done"
    except Exception as exc:
        return type(exc).__name__


{body}


class Model:
    def load(self, path):
        self.path = path
        self.cwd = os.getcwd()
        self.cwd_at_start = sorted(os.listdir("."))

    def predict(self, inputs):
        found = attack(self)
        return {{"report": np.array([json.dumps(found, default=str)], dtype=object)}}
'''


def reporting_package(dest: Path, name: str, body: str, sandbox: dict[str, Any] | None, **constants: Any) -> Path:
    """A ``python`` package whose ``predict`` runs ``attack(model)`` (defined in ``body``) and answers what it
    returned as JSON in the BYTES output ``report``."""
    lines = "\n".join(f"{key} = {value!r}" for key, value in constants.items())
    source = _REPORTING_MODEL.format(constants=lines, body=textwrap.dedent(body).strip())
    write_package(dest, name, source, f"Hostile probe {name}.", sandbox=sandbox)
    doc = yaml.safe_load((dest / "modelmarket.yaml").read_text())
    doc["outputs"] = [{"name": "report", "datatype": "BYTES", "shape": [1]}]
    (dest / "modelmarket.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


WHO_AM_I = """
def attack(model):
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    return {"pid": os.getpid(), "ppid": os.getppid(), "visible_pids": len(pids)}
"""

SECRETS_AND_NEIGHBOURS = """
import socket
from pathlib import Path


def _scan_proc_environ():
    hits = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = open(f"/proc/{entry}/environ", "rb").read().decode(errors="replace")
            except OSError:
                continue
            hits += [v for v in SECRET_VALUES if v in data]
    return sorted(set(hits))


def _connect(path):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        sock.connect(str(path))


def _write(path, mode="w"):
    with open(path, mode) as fh:
        fh.write("# replaced by the model\\n")


def _others(runners, own):
    others = [n for n in os.listdir(runners) if n != own and n.startswith("ver_")]
    if not others:
        raise LookupError("only its own folder")
    return others


def _replace(path):
    staged = Path("/tmp") / "staged.py"
    staged.write_text("raise SystemExit('replaced')\\n")
    os.replace(staged, path)


def attack(model):
    artifacts = Path(model.path)
    version_dir = artifacts.parent
    runners = version_dir.parent
    own_socket = Path(sys.argv[sys.argv.index("--socket") + 1])
    neighbour = runners / NEIGHBOUR_ID
    env_text = "\\n".join(f"{k}={v}" for k, v in os.environ.items())
    return {  # in this order: the listing before anything is written
        "list_other_runners": _try(lambda: _others(runners, version_dir.name)),
        "env_names": sorted(k for k in os.environ if k in SECRET_NAMES or k.startswith("MODELMARKET_")),
        "env_values": sorted(v for v in SECRET_VALUES if v in env_text),
        "proc_environ_values": _scan_proc_environ(),
        "write_artifacts": _try(lambda: _write(artifacts / "evil.txt")),
        "append_predict": _try(lambda: _write(artifacts / "predict.py", "a")),
        "replace_predict": _try(lambda: _replace(artifacts / "predict.py")),
        "replace_spec": _try(lambda: _write(version_dir / "spec.json")),
        "write_runners": _try(lambda: _write(runners / "evil.txt")),  # may land in the sandbox's own tmpfs
        "read_neighbour_spec": _try(lambda: (neighbour / "spec.json").read_bytes()),
        "list_neighbour_artifacts": _try(lambda: os.listdir(neighbour / "artifacts")),
        "connect_neighbour": _try(lambda: _connect(neighbour / "sockets" / own_socket.name)),
        "read_database": _try(lambda: Path(DATABASE).read_bytes()),
        "read_operator_cwd": _try(lambda: Path(OPERATOR_SECRET).read_bytes()),
        "read_events_log": _try(lambda: (runners.parent / "events.db").read_bytes()),
    }
"""

PROCESS_PROBE = """
def attack(model):
    env_text = "\\n".join(f"{k}={v}" for k, v in os.environ.items())
    return {
        "env_names": sorted(k for k in os.environ if k in SECRET_NAMES or k.startswith("MODELMARKET_")),
        "env_values": sorted(v for v in SECRET_VALUES if v in env_text),
        "cwd": model.cwd,
        "cwd_at_start": model.cwd_at_start,
        "pid": os.getpid(),
    }
"""

SOCKET_SWAP = """
def attack(model):
    own = sys.argv[sys.argv.index("--socket") + 1]
    staged = own + ".swap"
    os.symlink(TARGET, staged)
    os.replace(staged, own)  # the gateway's next connection to this runner's path goes where TARGET says
    return {"planted": os.readlink(own)}
"""

NOISY = """
def attack(model):
    chunk = b"x" * 65536 + b"\\n"
    written = 0
    for _ in range(64):  # 4 MB to each of stdout and stderr in every call; both closed after the first
        for fd in (1, 2):
            try:
                written += os.write(fd, chunk)
            except OSError:
                pass
    if not getattr(model, "closed", False):
        model.closed = True
        for fd in (1, 2):
            os.close(fd)
    return {"noise": "made"}
"""


class _RunsOnUnpickle:
    """Opening this pickle runs ``expression``: it writes a marker file and returns a fitted classifier."""

    def __init__(self, expression: str) -> None:
        self.expression = expression

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (eval, (self.expression,))


def pickle_package(dest: Path, name: str, marker: str, sandbox: dict[str, Any] | None) -> Path:
    """An ``sklearn`` package whose ``model.pkl`` creates ``marker`` when unpickled, then answers label 7."""
    dest.mkdir(parents=True)
    expression = (
        f"__import__('pathlib').Path({marker!r}).write_text('unpickled') and "
        "__import__('sklearn.dummy', fromlist=['x']).DummyClassifier(strategy='most_frequent').fit([[0, 0, 0, 0]], [7])"
    )
    (dest / "model.pkl").write_bytes(pickle.dumps(_RunsOnUnpickle(expression)))
    manifest: dict[str, Any] = {
        "name": name,
        "version": "1.0.0",
        "task": "tabular-classification",
        "modality": "tabular",
        "runtime": "sklearn",
        "provider": PROVIDER,
        "license": "MIT",
        "artifacts": [{"path": "model.pkl"}],
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "pricing": {"unit": "request", "price_per_iu": "0.0010", "currency": "EUR"},
        "card": {"summary": "A pickle that runs code when opened."},
    }
    if sandbox is not None:
        manifest["sandbox"] = sandbox
    (dest / "modelmarket.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dest


# -- a gateway of our own ------------------------------------------------------------------------------------------


@dataclass
class GatewayCli(Cli):
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.extra}


@dataclass
class Served:
    """One running gateway, the secrets in its environment, its consumer and the versions it serves."""

    cli: GatewayCli
    gateway: E2EGateway
    admin: Platform
    consumer: Consumer
    secrets: dict[str, str]
    operator_cwd: Path
    versions: dict[str, str]  # model name -> version id
    markers: dict[str, Path] = field(default_factory=dict)
    _runners: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return self.gateway.url

    def infer(self, model: str) -> httpx.Response:
        return httpx.post(f"{self.url}/v2/models/{model}/infer", json=X, headers=self.consumer.auth, timeout=90)

    def report(self, model: str) -> dict[str, Any]:
        r = self.infer(model)
        assert r.status_code == 200, r.text
        [output] = r.json()["outputs"]
        doc: dict[str, Any] = json.loads(output["data"][0])
        print(f"[{model}] {doc}")
        return doc

    def runners(self, fresh: bool = False) -> dict[str, Any]:
        """``modelmarket runners --json``, by model name."""
        if self._runners is None or fresh:
            doc = self.cli.json("runners")
            self._runners = {r["model"]: r for r in doc["runners"]}
        return self._runners


def _secrets(home: Path) -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    return {
        "MODELMARKET_DATABASE_URL": f"sqlite:///{(home / 'modelmarket.db').absolute()}",
        "OPENAI_API_KEY": f"sk-test-secret-{tag}",
        "AWS_SECRET_ACCESS_KEY": f"aws-secret-{tag}",
    }


def _serve(cli: GatewayCli, cwd: Path, ready: tuple[str, ...]) -> E2EGateway:
    """`modelmarket serve` from ``cwd`` (as an operator's shell would), once the models in ``ready`` answer ready."""
    with open(cli.home / "gateway.log", "a") as log_file:
        proc = subprocess.Popen(
            [*MM, "serve", "--port", "0"], env=cli.env, cwd=cwd, stdout=subprocess.PIPE, stderr=log_file, text=True
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        url = None
        while url is None:
            line = proc.stdout.readline()
            assert line, f"gateway exited:\n{(cli.home / 'gateway.log').read_text()[-3000:]}"
            match = re.match(r"URL: (http://\S+)", line)
            url = match.group(1) if match else None
        for model in ready:
            while httpx.get(f"{url}/v2/models/{model}/ready", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, (
                    f"{model} not ready:\n{(cli.home / 'gateway.log').read_text()[-3000:]}"
                )
                time.sleep(0.2)
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        raise
    return E2EGateway(url=url, proc=proc, cli=cli)


@dataclass
class Build:
    """What a gateway fixture publishes, in order: (model name, builder(package folder, name, context)); the context
    holds the gateway's secrets, its home and working directory, and the version ids published so far."""

    packages: list[tuple[str, Any]]
    ready: tuple[str, ...]
    extra_env: dict[str, str] = field(default_factory=dict)


def _platform(tmp: Path, build: Build) -> Iterator[Served]:
    home = tmp / "home"
    # Not under /tmp: bwrap mounts a fresh tmpfs there, which would hide it by accident, not by design.
    operator_cwd = Path(tempfile.mkdtemp(prefix="mm-hostile-operator-", dir="/var/tmp"))
    (operator_cwd / "secret.txt").write_text("the operator's own notes\n")
    secrets = _secrets(home)
    cli = GatewayCli(home, extra={**secrets, **build.extra_env})
    admin = bootstrap(Settings(home=home, database_url=secrets["MODELMARKET_DATABASE_URL"]))
    gateway = None
    try:
        admin.accounts.create(PROVIDER, "provider", actor="hostile-tests")
        versions: dict[str, str] = {}
        markers: dict[str, Path] = {}
        context: dict[str, Any] = {
            "secrets": secrets,
            "home": home,
            "operator_cwd": operator_cwd,
            "versions": versions,
            "markers": markers,
        }
        for name, builder in build.packages:
            package = builder(tmp / "packages" / name, name, context)
            versions[name] = admin.registry.publish(package, actor="hostile-tests").version.id
        consumer = new_consumer(admin, "sandbox-victim")
        gateway = _serve(cli, operator_cwd, build.ready)
        yield Served(cli, gateway, admin, consumer, secrets, operator_cwd, versions, markers)
    finally:
        if gateway is not None:
            stop_gateway(gateway)
            if gateway.proc.stdout is not None:
                gateway.proc.stdout.close()
        admin.close()
        shutil.rmtree(operator_cwd, ignore_errors=True)


def _secret_constants(context: dict[str, Any]) -> dict[str, Any]:
    secrets = context["secrets"]
    return {
        "SECRET_NAMES": sorted(secrets),
        "SECRET_VALUES": sorted(secrets.values()),
        "DATABASE": str((context["home"] / "modelmarket.db").absolute()),
        "OPERATOR_SECRET": str(context["operator_cwd"] / "secret.txt"),
    }


def _who_am_i(sandbox: dict[str, Any]) -> Any:
    return lambda dest, name, ctx: reporting_package(dest, name, WHO_AM_I, sandbox)


def _prober(sandbox: dict[str, Any] | None) -> Any:
    def build(dest: Path, name: str, ctx: dict[str, Any]) -> Path:
        constants = {**_secret_constants(ctx), "NEIGHBOUR_ID": ctx["versions"]["asks-inprocess"]}
        return reporting_package(dest, name, SECRETS_AND_NEIGHBOURS, sandbox, **constants)

    return build


def _socket_swapper(dest: Path, name: str, ctx: dict[str, Any]) -> Path:
    return reporting_package(dest, name, SOCKET_SWAP, None, TARGET=str(ctx["home"].parent / "elsewhere.sock"))


def _pickle(sandbox: dict[str, Any] | None) -> Any:
    def build(dest: Path, name: str, ctx: dict[str, Any]) -> Path:
        marker = f"/tmp/mm-hostile-unpickled-{uuid.uuid4().hex}"
        ctx["markers"][name] = Path(marker)
        return pickle_package(dest, name, marker, sandbox)

    return build


CAPS = {"memory_mb": 1_000_000, "pids": 65_536, "timeout_s": 3_600}
"""Within the manifest's bounds, above the operator's caps (16384 MB, 4096 pids, 600 s by default)."""


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The operator's defaults: provider code runs under bwrap at least."""
    build = Build(
        packages=[
            ("asks-inprocess", _who_am_i({"profile": "inprocess"})),
            ("asks-process", _who_am_i({"profile": "process", **CAPS})),
            ("tiny-cpus", _who_am_i({"cpus": 0.001, "memory_mb": 300})),
            ("prober-bwrap", _prober(None)),
            ("prober-gvisor", _prober({"profile": "gvisor"})),
            ("socket-swapper", _socket_swapper),
            ("noisy", lambda dest, name, ctx: reporting_package(dest, name, NOISY, None)),
            ("pickle-bwrap", _pickle(None)),
        ],
        ready=("asks-inprocess", "asks-process", "prober-bwrap", "prober-gvisor", "noisy"),
    )
    yield from _platform(tmp_path_factory.mktemp("strict"), build)


@pytest.fixture(scope="module")
def lax(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The operator lowered the floor to process and lists python and sklearn as in-process runtimes."""
    build = Build(
        packages=[
            ("lax-asks-inprocess", _who_am_i({"profile": "inprocess"})),
            (
                "prober-process",
                lambda dest, name, ctx: reporting_package(
                    dest, name, PROCESS_PROBE, {"profile": "process"}, **_secret_constants(ctx)
                ),
            ),
            ("pickle-process", _pickle({"profile": "process"})),
        ],
        ready=("lax-asks-inprocess", "prober-process"),
        extra_env={"MODELMARKET_SANDBOX_MINIMUM": "process", "MODELMARKET_INPROCESS_RUNTIMES": "python,sklearn"},
    )
    yield from _platform(tmp_path_factory.mktemp("lax"), build)


# -- 1. asking for less confinement ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["asks-inprocess", "asks-process"])
def test_provider_code_asking_for_less_than_bwrap_runs_under_bwrap_outside_the_gateway(
    strict: Served, model: str
) -> None:
    """Attack: a `python` package declares `sandbox: {profile: inprocess}` (or `process`) to run inside the gateway,
    or at least outside bubblewrap. Defence: the operator's minimum (bwrap) wins; the model runs in a pid namespace
    of its own, in a process that is not the gateway, and sees no other process on the host."""
    gateway_pid = strict.gateway.proc.pid
    doc = strict.report(model)
    runner = strict.runners()[model]
    assert runner["profile"] == "bwrap", runner
    assert runner["processes"] and all(p["pid"] not in (None, gateway_pid) for p in runner["processes"]), runner
    assert doc["pid"] != gateway_pid and doc["ppid"] != gateway_pid, doc
    assert doc["visible_pids"] <= 3, f"the model sees {doc['visible_pids']} processes: not its own pid namespace"


def test_provider_code_is_never_run_in_the_gateway_even_when_the_operator_lists_its_runtime(lax: Served) -> None:
    """Attack: the operator lowered the floor to `process` and listed `python` in MODELMARKET_INPROCESS_RUNTIMES; a
    provider's package declares `inprocess`. Defence: provider code is never loaded into the gateway: it runs in a
    runner process of its own under `process`."""
    doc = lax.report("lax-asks-inprocess")
    runner = lax.runners()["lax-asks-inprocess"]
    assert runner["profile"] == "process", runner
    assert doc["pid"] != lax.gateway.proc.pid and [p["pid"] for p in runner["processes"]] != [lax.gateway.proc.pid]


def test_limits_above_the_operators_caps_are_capped(strict: Served) -> None:
    """Attack: a package asks for 1 TB of memory, 65536 processes and an hour per call (within the manifest's own
    bounds). Defence: the grant is capped at the operator's maxima (16384 MB, 4096 pids, 600 s)."""
    limits = strict.runners()["asks-process"]["limits"]
    assert limits["memory_mb"] == 16384 and limits["pids"] == 4096 and limits["timeout_s"] == 600, limits


def test_a_tiny_cpu_quota_does_not_cost_the_runner_its_cgroup(strict: Served) -> None:
    """Attack: `sandbox.cpus: 0.001` is a quota below the kernel's minimum (1 ms per 100 ms period): writing it
    fails, and a supervisor that then gives up on the whole cgroup runs the model without its memory and process
    limits. Defence: the runner is in a memory cgroup limited to what it was granted (and its CPU quota is the
    least the kernel takes: at 1% of a CPU it is still importing numpy, so it is not waited for to be ready)."""
    deadline = time.monotonic() + 30
    while not (processes := strict.runners(fresh=True)["tiny-cpus"]["processes"]) or processes[0]["pid"] is None:
        assert time.monotonic() < deadline, "the tiny-cpus runner was never started"
        time.sleep(0.5)
    [process] = processes
    lines = Path(f"/proc/{process['pid']}/cgroup").read_text().splitlines()
    groups = {
        c: path for _, controllers, path in (line.split(":", 2) for line in lines) for c in controllers.split(",")
    }
    memory = groups.get("memory") or groups.get("")
    assert memory is not None and "/modelmarket/" in memory, (
        f"runner {process['pid']} is in no cgroup of its own: {lines}"
    )
    root = Path("/sys/fs/cgroup/memory") if "memory" in groups else Path("/sys/fs/cgroup")
    limit_file = "memory.limit_in_bytes" if "memory" in groups else "memory.max"
    assert int((root / memory.lstrip("/") / limit_file).read_text()) == 300 * 1024 * 1024


# -- 2. secrets, 3. writes, 4. neighbours ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["prober-bwrap", "prober-gvisor"])
def test_a_sandboxed_model_finds_no_secret_writes_nothing_and_reaches_no_neighbour(strict: Served, model: str) -> None:
    """Attack: the model looks for the gateway's secrets (its environment and every /proc/*/environ), writes into
    its own artifacts (appends to and replaces predict.py), its spec, the runners folder, and reads another
    version's runner folder and socket, the platform's database and event log, and the gateway's working directory.
    Defence: no secret is visible; every write and read is refused; predict.py is unchanged on the host."""
    assert strict.infer("asks-inprocess").status_code == 200  # the neighbour's runner (and socket) is up
    predict = strict.cli.home / "runners" / strict.versions[model] / "artifacts" / "predict.py"
    before = predict.read_bytes()
    doc = strict.report(model)
    assert doc["env_names"] == [] and doc["env_values"] == [] and doc["proc_environ_values"] == [], doc
    refused = {k: v for k, v in doc.items() if not k.startswith(("env_", "proc_")) and k != "write_runners"}
    assert all(v != "done" for v in refused.values()), f"allowed: {[k for k, v in refused.items() if v == 'done']}"
    assert predict.read_bytes() == before
    assert not (predict.parent / "evil.txt").exists() and not (strict.cli.home / "runners" / "evil.txt").exists()
    again = strict.report(model)  # the next call runs the original code, and is refused the same way
    assert {k: v for k, v in again.items() if k in refused} == refused


def test_under_process_the_environment_is_empty_of_secrets_and_the_working_directory_private(lax: Served) -> None:
    """Attack: under `process` the model looks for the gateway's secrets in its environment and for files in its
    working directory. Defence: nothing inherited (no key, no database URL, no MODELMARKET_*); the working
    directory is the runner's own, empty at start, and not the operator's."""
    doc = lax.report("prober-process")
    assert doc["env_names"] == [] and doc["env_values"] == [], doc
    assert doc["cwd_at_start"] == [], doc
    cwd = Path(doc["cwd"])
    assert cwd.is_relative_to(lax.cli.home / "runners" / lax.versions["prober-process"]), cwd
    assert (os.stat(cwd).st_mode & 0o777) == 0o700


# -- 5. pickles ----------------------------------------------------------------------------------------------------


def test_a_plain_pickle_is_refused_under_process_and_never_opened(lax: Served) -> None:
    """Attack: an `sklearn` package ships a plain `.pkl` that runs code when unpickled and declares `process` (the
    operator allows it). Defence: the runner refuses to open it, the call fails naming why, no marker exists."""
    r = lax.infer("pickle-process")
    assert r.status_code in (500, 503), r.text
    assert "plain pickle" in r.json()["error"], r.text
    assert not lax.markers["pickle-process"].exists()


def test_a_plain_pickle_runs_only_inside_bwrap(strict: Served) -> None:
    """Attack: the same pickle under the default profile. Defence: it is opened inside bwrap only: its code ran
    (the model answers its label) but the file it wrote under /tmp is in the sandbox's tmpfs, not on the host."""
    r = strict.infer("pickle-bwrap")
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [7]
    assert strict.runners(fresh=True)["pickle-bwrap"]["profile"] == "bwrap"
    assert not strict.markers["pickle-bwrap"].exists()


# -- 6. manifest bounds ------------------------------------------------------------------------------------------

BAD_SECTIONS = [
    ("sandbox", {"memory_mb": -1}, "sandbox.memory_mb"),
    ("sandbox", {"memory_mb": 0}, "sandbox.memory_mb"),
    ("sandbox", {"memory_mb": 10**12}, "sandbox.memory_mb"),
    ("sandbox", {"memory_mb": "lots"}, "sandbox.memory_mb"),
    ("sandbox", {"memory_mb": 512.5}, "sandbox.memory_mb"),
    ("sandbox", {"pids": 0}, "sandbox.pids"),
    ("sandbox", {"pids": 10**9}, "sandbox.pids"),
    ("sandbox", {"cpus": 0}, "sandbox.cpus"),
    ("sandbox", {"cpus": -2}, "sandbox.cpus"),
    ("sandbox", {"cpus": float("inf")}, "sandbox.cpus"),
    ("sandbox", {"timeout_s": 0}, "sandbox.timeout_s"),
    ("sandbox", {"timeout_s": 1e9}, "sandbox.timeout_s"),
    ("sandbox", {"profile": "host"}, "sandbox.profile"),
    ("sandbox", {"profile": "none"}, "sandbox.profile"),
    ("sandbox", {"privileged": True}, "sandbox.privileged"),
    ("sandbox", {"network": "host"}, "sandbox.network"),
    ("sandbox", "bwrap", "sandbox"),
    ("batching", {"max_batch_size": 0}, "batching.max_batch_size"),
    ("batching", {"max_batch_size": 10**6}, "batching.max_batch_size"),
    ("batching", {"max_batch_size": 8, "max_delay_ms": -1}, "batching.max_delay_ms"),
    ("batching", {"max_batch_size": 8, "max_delay_ms": 10**7}, "batching.max_delay_ms"),
    ("batching", {"max_batch_size": 8, "threads": 64}, "batching.threads"),
    ("replicas", {"max": 0}, "replicas.max"),
    ("replicas", {"max": 10_000}, "replicas.max"),
    ("replicas", {"min": -1}, "replicas.min"),
    ("replicas", {"min": 3, "max": 1}, "replicas"),
    ("replicas", {"min": 1, "max": 2, "burst": 100}, "replicas.burst"),
]


@pytest.fixture(scope="module")
def registry_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Path]]:
    base = tmp_path_factory.mktemp("bounds")
    admin = bootstrap(Settings(home=base / "home", database_url=None))
    admin.accounts.create(PROVIDER, "provider", actor="hostile-tests")
    yield admin, base
    admin.close()


@pytest.mark.parametrize(
    ("section", "value", "where"), BAD_SECTIONS, ids=[f"{s}-{json.dumps(v, default=str)}" for s, v, _ in BAD_SECTIONS]
)
def test_out_of_range_serving_sections_are_refused_at_publish_naming_the_field(
    registry_only: tuple[Platform, Path], section: str, value: Any, where: str
) -> None:
    """Attack: a manifest's `sandbox`, `batching` or `replicas` section with a negative, zero, huge or non-integer
    value, an unknown key, or min above max. Defence: publish refuses it, naming the field; nothing is published."""
    admin, base = registry_only
    name = f"bounds-{uuid.uuid4().hex[:8]}"
    package = write_package(base / name, name, "class Model:\n    def predict(self, inputs):\n        return {}\n", "x")
    doc = yaml.safe_load((package / "modelmarket.yaml").read_text())
    doc[section] = value
    (package / "modelmarket.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(InvalidInput) as refused:
        admin.registry.publish(package, actor="hostile-tests")
    message = str(refused.value)
    assert f"{where}:" in message, message
    print(f"[publish] {section}={value!r}: {message[:200]}")
    with admin.store.read() as uow:
        assert uow.registry.model(name) is None


# -- 7. the socket folder, and noise ------------------------------------------------------------------------------


@dataclass
class UnixListener:
    """A Unix socket on the host that records every connection made to it."""

    path: Path
    connections: list[bytes] = field(default_factory=list)

    def serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    self.connections.append(conn.recv(200))
                except OSError:
                    self.connections.append(b"")


def test_a_model_cannot_redirect_the_gateways_connections_through_its_socket_folder(strict: Served) -> None:
    """Attack: the runner's socket folder is the one place on the host a bwrap runner may write. The model replaces
    its own socket with a symbolic link to another Unix socket on the host (here a listener of the test's; it could
    be another model's runner). Defence: the gateway never connects through the link: the listener sees nothing."""
    target = strict.cli.home.parent / "elsewhere.sock"
    listener = UnixListener(target)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(target))
        sock.listen()
        threading.Thread(target=listener.serve, args=(sock,), daemon=True).start()
        r = strict.infer("socket-swapper")
        planted = r.json() if r.status_code != 200 else json.loads(r.json()["outputs"][0]["data"][0])
        print(f"[socket-swapper] {r.status_code} {planted}")
        deadline = time.monotonic() + PROBE_WAIT_S
        while not listener.connections and time.monotonic() < deadline:
            time.sleep(0.1)
        strict.infer("socket-swapper")  # a call too, on whatever connection the gateway makes now
        time.sleep(0.5)
    assert listener.connections == [], f"the gateway connected through the planted link: {listener.connections[:3]}"


def test_a_model_that_floods_and_closes_its_output_does_not_stall_the_gateway(strict: Served) -> None:
    """Attack: a model writes 4 MB to each of stdout and stderr in every call, and closes both after the first (so
    the runner's next file descriptors take numbers 1 and 2, and the flood lands wherever they point). Defence: the
    first call is answered; every later one is answered or refused with a JSON error; the gateway stays live and
    the other models keep answering."""
    with LiveProbe(strict.url, "a model flooding and closing its stdout and stderr"):
        assert strict.report("noisy") == {"noise": "made"}
        statuses = []
        for _ in range(4):
            r = strict.infer("noisy")
            statuses.append(r.status_code)
            assert r.status_code == 200 or (r.status_code >= 500 and "error" in r.json()), (r.status_code, r.text[:300])
    print(f"[noisy] later calls: {statuses}")
    assert strict.infer("asks-inprocess").status_code == 200
