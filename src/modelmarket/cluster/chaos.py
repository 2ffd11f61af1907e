"""``modelmarket cluster chaos``: steady load through Envoy while parts of the cluster die, then a reconciliation.

Client threads call ``digits`` over OIP with a consumer key, each logical call with its own ``Idempotency-Key``,
and record what they saw. A call that fails with a transport error or a 502/503/504 (its replica died, the bus
was away) is retried by the client with the same key for up to ``CALL_DEADLINE_S``: if the first attempt was
committed before its answer was lost, the retry gets the kept answer (same ``x-request-id``) and is not billed
again; otherwise it runs anew. That is the contract the platform offers a client (docs/scale-out.md); Envoy
itself never re-sends a request a gateway received (cluster/envoy.py, ``RETRY_ON``).

Meanwhile: gateway-1 is SIGKILLed and started again, a runner of gateway-2 is SIGKILLed (its supervisor restarts
it), and the NATS server is stopped and started. Then metering catches up and ``reconcile`` compares.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.cluster import manager
from modelmarket.cluster import state as st
from modelmarket.cluster.manager import ClusterError
from modelmarket.cluster.reconcile import Reconciliation, billed_facts, rated_count, reconcile
from modelmarket.cluster.state import ClusterState
from modelmarket.core.errors import NotFound
from modelmarket.registry.catalogue import VersionRecord

MODEL = "digits"
BODY = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [3.0] * 64}]}
CALL_TIMEOUT_S = 30.0
CALL_DEADLINE_S = 45.0
"""How long a client keeps retrying one logical call (same Idempotency-Key) before it counts it failed."""
RETRY_STATUSES = frozenset({502, 503, 504})
RETRY_PAUSE_S = 0.2
READY_TIMEOUT_S = 180.0
METERING_DEADLINE_S = 120.0
WARM_UP_ACCOUNT = "chaos-warm-up"
"""Whose calls start the runners before the drill (billed to it, not to the drill's account)."""
RESTART_PAUSE_S = 2.0
"""How long a killed gateway stays down before it is started again."""

Progress = Callable[[str], None]


@dataclass
class Outcomes:
    """What the clients saw, one entry per logical call."""

    answered: list[str] = field(default_factory=list)
    """The x-request-id of every answered call."""
    replayed: int = 0
    failed: list[str] = field(default_factory=list)
    """Why each failed call failed (its last status or error)."""
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def call_once(http: httpx.Client, out: Outcomes) -> None:
    """One logical call: retried with the same Idempotency-Key while it fails in a way that may be transient."""
    key = f"chaos-{uuid.uuid4().hex}"
    headers = {"Idempotency-Key": key}
    deadline = time.monotonic() + CALL_DEADLINE_S
    last = ""
    while time.monotonic() < deadline:
        with out.lock:
            out.attempts += 1
        try:
            r = http.post(f"/v2/models/{MODEL}/infer", json=BODY, headers=headers)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        else:
            if r.status_code == 200:
                with out.lock:
                    out.answered.append(r.headers["x-request-id"])
                    out.replayed += r.headers.get("idempotency-replayed") == "true"
                return
            last = f"{r.status_code} {r.text[:120]}"
            if r.status_code not in RETRY_STATUSES:
                break
        time.sleep(RETRY_PAUSE_S)
    with out.lock:
        out.failed.append(last)


def client_loop(url: str, api_key: str, stop: threading.Event, out: Outcomes) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=url, headers=auth, timeout=CALL_TIMEOUT_S) as http:
        while not stop.is_set():
            call_once(http, out)


# -- the disruptions --


def kill_gateway(home: Path, state: ClusterState, name: str, progress: Progress) -> None:
    rec = state.parts[name]
    if rec.pid is None or rec.start_ticks is None or not st.kill_process(rec.pid, rec.start_ticks):
        raise ClusterError(f"{name} was not running: cannot kill it")
    progress(f"{name}: SIGKILLed (pid {rec.pid})")
    time.sleep(RESTART_PAUSE_S)
    state.parts[name] = manager.start_part(state, name)
    st.save_state(home, state)
    progress(f"{name}: started again (pid {state.parts[name].pid})")


def kill_runner(state: ClusterState, gateway: str, progress: Progress) -> None:
    """SIGKILL one runner process of ``gateway`` (its child whose command line names the runner)."""
    rec = state.parts[gateway]
    runners = [pid for pid in _children(rec.pid or -1) if "runner" in _cmdline(pid)]
    if not runners:
        progress(f"{gateway}: no runner process found to kill")
        return
    pid = runners[0]
    ticks = st.start_ticks(pid)
    if ticks is not None and st.kill_process(pid, ticks):
        progress(f"{gateway}: runner pid {pid} SIGKILLed")


def restart_nats(home: Path, state: ClusterState, progress: Progress) -> None:
    rec = state.parts["nats"]
    if rec.pid is not None and rec.start_ticks is not None:
        st.stop_process(rec.pid, rec.start_ticks, manager.STOP_TIMEOUTS_S["nats"])
    progress("nats: stopped")
    state.parts["nats"] = manager.start_part(state, "nats")
    st.save_state(home, state)
    progress(f"nats: started again (pid {state.parts['nats'].pid})")


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# -- the drill --


@dataclass(frozen=True)
class Subject:
    account_id: str
    api_key: str
    price: Decimal
    currency: str


def run_chaos(home: Path, seconds: int, threads: int, progress: Progress) -> Reconciliation:
    with st.cluster_lock(home):
        state = st.load_state(home)
        if state is None:
            raise ClusterError("no cluster in this home: `modelmarket cluster up` first")
        _require_healthy(home)
        os.environ.update(manager.platform_env(state))  # this process is a client of the cluster's platform
        p = bootstrap()
        try:
            subject = _prepare(p, state, progress)
            out = _drill(home, state, subject, seconds, threads, progress)
            return _settle_and_reconcile(p, subject, out, progress)
        finally:
            p.close()


def _require_healthy(home: Path) -> None:
    _, parts = manager.status(home)
    sick = [f"{s.name} (log {s.log})" for s in parts if not s.healthy]
    if sick:
        raise ClusterError("the cluster is not healthy: " + ", ".join(sick) + "; `modelmarket cluster up` first")


def _prepare(p: Platform, state: ClusterState, progress: Progress) -> Subject:
    """``digits`` published through the gate (once), a fresh consumer account and key for this drill."""
    version = ensure_digits(p, Path(state.home), progress)
    pricing = version.manifest.pricing
    _ensure_account(p, WARM_UP_ACCOUNT, "consumer")
    warm_key = p.accounts.issue_key(WARM_UP_ACCOUNT, actor="chaos").secret
    for g in state.gateway_names():
        warm_up(state.ports[g], warm_key)
    progress(f"{MODEL}: answering on {', '.join(state.gateway_names())}")
    name = "chaos-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    account = p.accounts.create(name, "consumer", actor="chaos")
    key = p.accounts.issue_key(name, actor="chaos").secret
    return Subject(account.id, key, Decimal(pricing.price_per_iu), pricing.currency)


def warm_up(port: int, key: str) -> None:
    """Call the model on one replica until it answers: a replica starts a runner on its first call of a model
    published after the replica started. The key is the warm-up account's: these calls are not the drill's."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}) as http:
        while time.monotonic() < deadline:
            try:
                r = http.post(f"/v2/models/{MODEL}/infer", json=BODY, timeout=CALL_TIMEOUT_S)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
    raise ClusterError(f"{MODEL} did not answer on the replica at port {port} within {READY_TIMEOUT_S:g} s: {last}")


def _drill(
    home: Path, state: ClusterState, subject: Subject, seconds: int, threads: int, progress: Progress
) -> Outcomes:
    out, stop = Outcomes(), threading.Event()
    clients = [
        threading.Thread(target=client_loop, args=(state.front_url, subject.api_key, stop, out), daemon=True)
        for _ in range(threads)
    ]
    for t in clients:
        t.start()
    progress(f"load: {threads} client threads through {state.front_url} for {seconds} s")
    gateways = state.gateway_names()
    steps: list[tuple[float, Callable[[], None]]] = [
        (0.2, lambda: kill_gateway(home, state, gateways[0], progress)),
        (0.45, lambda: kill_runner(state, gateways[-1], progress)),
        (0.65, lambda: restart_nats(home, state, progress)),
    ]
    started = time.monotonic()
    for at, step in steps:
        _sleep_until(started + at * seconds)
        step()
    _sleep_until(started + seconds)
    stop.set()
    for t in clients:
        t.join(timeout=CALL_DEADLINE_S + CALL_TIMEOUT_S)
    progress(f"load: {len(out.answered)} answered, {len(out.failed)} failed, {out.attempts} attempts")
    for reason, n in Counter(out.failed).most_common(5):
        progress(f"load: {n} call(s) failed with: {reason}")
    return out


def _sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))


def _settle_and_reconcile(p: Platform, subject: Subject, out: Outcomes, progress: Progress) -> Reconciliation:
    """Wait until metering rated at least every answered call and the count stays put, then compare."""
    from modelmarket.billing.period import Period

    deadline = time.monotonic() + METERING_DEADLINE_S
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = rated_count(p, subject.account_id)
        if n != last:
            last, stable_since = n, time.monotonic()
        elif n >= len(out.answered) and time.monotonic() - stable_since > 2.0:
            break
        time.sleep(0.25)
    progress(f"metering: {last} usage events rated for the drill's account")
    period = Period.of(datetime.now(UTC).date())
    billed = billed_facts(p, subject.account_id, period, subject.currency)
    return reconcile(out.answered, len(out.failed), out.replayed, subject.price, subject.currency, billed)


def ensure_digits(p: Platform, home: Path, progress: Progress) -> VersionRecord:
    """The demo's ``digits`` model, built under HOME/cluster/demo and published through the gate as ``make demo``
    publishes it (every stage; the demo's operator account approves what passes), unless it is published."""
    from modelmarket.cli.serve import publish_demo_package
    from modelmarket.demo._digits import build_digits

    try:
        return p.registry.catalogue().resolve(MODEL, None)
    except NotFound:
        pass
    _ensure_account(p, "demo-provider", "provider")
    _ensure_account(p, "operator", "operator")
    out = st.cluster_dir(home) / "demo"
    package = build_digits(out / MODEL, out / "examples", progress)
    publish_demo_package(p, package, p.accounts.get("operator").id, progress)
    return p.registry.catalogue().resolve(MODEL, None)


def _ensure_account(p: Platform, name: str, role: str) -> None:
    try:
        p.accounts.get(name)
    except NotFound:
        p.accounts.create(name, role, actor="chaos")
