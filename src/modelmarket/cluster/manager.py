"""``modelmarket cluster up|status|down``: the platform on real engines, all on loopback, from one home.

``up`` starts, in order, PostgreSQL, NATS JetStream, SeaweedFS (S3), one metering consumer (``modelmarket
meter``), N gateway replicas (``modelmarket serve --no-metering``, each its own ``MODELMARKET_GATEWAY_ID`` and
port) and Envoy in front of them. Each runs in its own session with its output in ``HOME/cluster/logs/``, so it
outlives ``up``; ``cluster.json`` records its pid, start time, address and log. ``down`` stops exactly those
processes, in the reverse order, with bounded waits, and leaves every data folder. Every process of the platform
gets the same settings (``platform_env``): the store, the bus, the blob store and the S3 credentials.

The replicas share the home: the audit checkpoint key (``HOME/keys``) must be one, and runner sockets and metric
folders are named per process. The store is migrated once by ``up`` before any replica starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from modelmarket.cluster import state as st
from modelmarket.cluster.engine import ServerProcess, free_port, tcp_open
from modelmarket.cluster.envoy import EnvoyPorts, admin_ready, envoy_proxy, write_bootstrap
from modelmarket.cluster.postgres import PersistentPostgres, ensure_database, find_pg_tools
from modelmarket.cluster.state import ClusterState, PartRecord

GATEWAY_START_TIMEOUT_S = 120.0
METERING_SETTLE_S = 1.5
"""A metering consumer still running this long after its start has opened the store and the bus."""
STOP_TIMEOUTS_S = {"envoy": 10.0, "gateway": 35.0, "metering": 20.0, "seaweedfs": 25.0, "nats": 15.0}
INIT_TIMEOUT_S = 180.0
MM = [sys.executable, "-m", "modelmarket.cli.main"]

Progress = Callable[[str], None]


class ClusterError(RuntimeError):
    """A part failed to start or stop; the message names the part and its log file."""


@dataclass(frozen=True)
class PartStatus:
    name: str
    healthy: bool
    running: bool
    pid: int | None
    address: str
    log: str

    def to_json(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("name", "healthy", "running", "pid", "address", "log")}


def part_order(state: ClusterState) -> list[str]:
    return ["postgres", "nats", "seaweedfs", "metering", *state.gateway_names(), "envoy"]


def new_state(home: Path, replicas: int, partitions: int) -> ClusterState:
    ports = {"postgres": free_port(), "nats": free_port(), "nats_monitor": free_port(), "s3": free_port()}
    ports |= {"envoy": free_port(), "envoy_admin": free_port()}
    ports |= {f"gateway-{i}": free_port() for i in range(1, replicas + 1)}
    return ClusterState(str(home.resolve()), replicas, partitions, ports)


def logs_dir(state: ClusterState) -> Path:
    return st.cluster_dir(Path(state.home)) / "logs"


def log_of(state: ClusterState, name: str) -> Path:
    return logs_dir(state) / f"{name}.log"


def database_url(state: ClusterState) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{state.ports['postgres']}/{st.DATABASE}"


def cluster_settings(state: ClusterState) -> dict[str, str]:
    """The settings every platform process of this cluster runs with (and a CLI needs to reach it)."""
    creds = st.s3_credentials(Path(state.home))
    return {
        "MODELMARKET_HOME": state.home,
        "MODELMARKET_DATABASE_URL": database_url(state),
        "MODELMARKET_BUS_URL": f"nats://127.0.0.1:{state.ports['nats']}",
        "MODELMARKET_BUS_PARTITIONS": str(state.partitions),
        # several replicas on one store: each leases a tenth of a limit at a time (docs/scale-out.md)
        "MODELMARKET_LIMIT_LEASE_FRACTION": "0.1",
        "MODELMARKET_BLOB_URL": f"s3://{st.BUCKET}",
        "MODELMARKET_S3_ENDPOINT": f"http://127.0.0.1:{state.ports['s3']}",
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
    }


def platform_env(state: ClusterState, gateway: str | None = None) -> dict[str, str]:
    """The environment of a platform process of this cluster: the caller's, with the cluster's settings; a
    replica also gets its own id and port."""
    env = dict(os.environ) | cluster_settings(state)
    if gateway is not None:
        env |= {"MODELMARKET_GATEWAY_ID": gateway, "MODELMARKET_HOST": "127.0.0.1"}
        env["MODELMARKET_PORT"] = str(state.ports[gateway])
    return env


# -- each part: how it starts, how healthy it is --


def pg_server(state: ClusterState) -> PersistentPostgres:
    base = st.cluster_dir(Path(state.home)) / "postgres"
    return PersistentPostgres(find_pg_tools(), base, state.ports["postgres"], log_of(state, "postgres"))


def process_of(state: ClusterState, name: str) -> ServerProcess:
    """The process of part ``name`` (everything but PostgreSQL, which pg_ctl runs); not started yet, except NATS:
    ``nats_server`` starts its process itself."""
    home, log = Path(state.home), log_of(state, name)
    if name == "nats":
        return _nats(state, log)
    if name == "seaweedfs":
        from modelmarket.cluster.seaweed import seaweed_server

        creds = st.s3_credentials(home)
        data = st.cluster_dir(home) / "seaweedfs"
        return seaweed_server(data, state.ports["s3"], log, access_key=creds.access_key, secret_key=creds.secret_key)
    if name == "metering":
        started = time.monotonic()
        return ServerProcess(
            "metering",
            [*MM, "meter"],
            log,
            lambda: time.monotonic() - started > METERING_SETTLE_S,
            env=platform_env(state),
            cwd=home,
            stop_timeout_s=STOP_TIMEOUTS_S["metering"],
        )
    if name.startswith("gateway-"):
        port = state.ports[name]
        argv = [*MM, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-metering"]
        return ServerProcess(
            name,
            argv,
            log,
            lambda: gateway_ready(port),
            env=platform_env(state, name),
            cwd=home,
            start_timeout_s=GATEWAY_START_TIMEOUT_S,
            stop_timeout_s=STOP_TIMEOUTS_S["gateway"],
        )
    if name == "envoy":
        config = write_bootstrap(
            st.cluster_dir(home) / "envoy.json",
            EnvoyPorts(state.ports["envoy"], state.ports["envoy_admin"]),
            [state.ports[g] for g in state.gateway_names()],
        )
        return envoy_proxy(config, log, state.ports["envoy_admin"])
    raise ValueError(f"no part named {name!r}")


def _nats(state: ClusterState, log: Path) -> ServerProcess:
    from modelmarket.cluster.nats import nats_server

    data = st.cluster_dir(Path(state.home)) / "nats"
    return nats_server(data, state.ports["nats"], log, monitor_port=state.ports["nats_monitor"])


def address_of(state: ClusterState, name: str) -> str:
    ports = state.ports
    if name == "postgres":
        return database_url(state).replace("postgresql+psycopg", "postgresql")
    if name == "nats":
        return f"nats://127.0.0.1:{ports['nats']} (monitor http://127.0.0.1:{ports['nats_monitor']})"
    if name == "seaweedfs":
        return f"http://127.0.0.1:{ports['s3']} (S3, bucket {st.BUCKET})"
    if name == "envoy":
        return f"{state.front_url} (admin http://127.0.0.1:{ports['envoy_admin']})"
    if name.startswith("gateway-"):
        return f"http://127.0.0.1:{ports[name]}"
    return "-"


def gateway_ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def probe(state: ClusterState, name: str) -> bool:
    """Whether the part answers as it should (not only whether its process runs)."""
    ports = state.ports
    if name == "postgres":
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={ports['postgres']} user=postgres dbname=postgres", connect_timeout=2
            ):
                return True
        except psycopg.OperationalError:
            return False
    if name == "nats":
        return tcp_open(ports["nats"])
    if name == "seaweedfs":
        return s3_answers(ports["s3"])
    if name == "envoy":
        return admin_ready(ports["envoy_admin"])
    if name.startswith("gateway-"):
        return gateway_ready(ports[name])
    rec = state.parts.get(name)
    return rec is not None and st.is_same_process(rec.pid, rec.start_ticks)


def s3_answers(port: int) -> bool:
    """Whether the S3 gateway answers HTTP (an anonymous request gets an S3 error document: it is serving)."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def is_running(state: ClusterState, name: str) -> bool:
    rec = state.parts.get(name)
    if name == "postgres":
        pid = pg_server(state).pid()
        return rec is not None and pid is not None and st.is_same_process(pid, rec.start_ticks)
    return rec is not None and st.is_same_process(rec.pid, rec.start_ticks)


# -- up, down, status --


def up(home: Path, replicas: int | None, partitions: int | None, progress: Progress) -> ClusterState:
    """Start what is not running (idempotent); returns the state with every part recorded."""
    with st.cluster_lock(home):
        state = _state_for_up(home, replicas, partitions)
        st.save_state(home, state)
        initialized = False
        for name in part_order(state):
            if is_running(state, name):
                progress(f"{name}: already running (pid {state.parts[name].pid}) at {address_of(state, name)}")
                continue
            if name in platform_parts(state) and not initialized:
                _initialize_platform(state, progress)
                initialized = True
            progress(f"{name}: starting ...")
            state.parts[name] = start_part(state, name)
            st.save_state(home, state)
            progress(f"{name}: up (pid {state.parts[name].pid}) at {address_of(state, name)}")
        return state


def platform_parts(state: ClusterState) -> set[str]:
    """The platform's own processes (they open the store): the store is migrated before the first starts."""
    return {"metering", *state.gateway_names()}


def _state_for_up(home: Path, replicas: int | None, partitions: int | None) -> ClusterState:
    state = st.load_state(home)
    if state is None:
        return new_state(home, replicas or 2, partitions or 1)
    if partitions is not None and partitions != state.partitions:
        raise ClusterError(
            f"this cluster's event log has {state.partitions} partition(s): the count is fixed once events exist "
            f"(`--partitions {state.partitions}` or leave it out)"
        )
    if replicas is not None and replicas != state.replicas:
        if any(is_running(state, g) for g in state.gateway_names()):
            raise ClusterError(
                f"the cluster runs {state.replicas} replica(s): `modelmarket cluster down` before changing --replicas"
            )
        state.replicas = replicas
        for i in range(1, replicas + 1):
            state.ports.setdefault(f"gateway-{i}", free_port())
        state.parts = {k: v for k, v in state.parts.items() if k in part_order(state)}
        state.parts.pop("envoy", None)  # its bootstrap lists the replicas: regenerated at its start
    return state


def start_part(state: ClusterState, name: str) -> PartRecord:
    """Start part ``name`` (in its own session, output to its log) and return its record (the caller saves it)."""
    log = log_of(state, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    if name == "postgres":
        return _start_postgres(state)
    try:
        proc = process_of(state, name)
        if not proc.running():  # nats_server starts its process itself; the others leave it to the caller
            proc.start()
    except Exception as exc:
        raise ClusterError(f"{name} failed to start (log: {log}): {exc}") from None
    assert proc.pid is not None
    ticks = st.start_ticks(proc.pid)
    extra: dict[str, object] = {}
    sockets = getattr(proc, "sockets", ())
    if sockets:
        extra["sockets"] = [str(s) for s in sockets]
    data = st.cluster_dir(Path(state.home)) / name if name in ("nats", "seaweedfs") else None
    return PartRecord(proc.pid, ticks, address_of(state, name), str(log), str(data) if data else None, extra)


def _start_postgres(state: ClusterState) -> PartRecord:
    pg = pg_server(state)
    try:
        server = pg.start()
        ensure_database(server, st.DATABASE)
    except Exception as exc:
        raise ClusterError(f"postgres failed to start (log: {pg.log}): {exc}") from None
    pid = pg.pid()
    return PartRecord(
        pid, st.start_ticks(pid) if pid else None, address_of(state, "postgres"), str(pg.log), str(pg.data)
    )


def _initialize_platform(state: ClusterState, progress: Progress) -> None:
    """Migrate the store and make the home's keys once, before any replica or consumer starts (N processes
    migrating one database at once would race)."""
    log = log_of(state, "init")
    progress("platform: migrating the store ...")
    code = "from modelmarket.bootstrap import bootstrap; bootstrap().close()"
    with open(log, "ab") as out:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=platform_env(state),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=INIT_TIMEOUT_S,
            check=False,
            cwd=state.home,
        )
    if proc.returncode != 0:
        raise ClusterError(f"initializing the platform failed ({proc.returncode}); log: {log}")


def down(home: Path, progress: Progress) -> list[str]:
    """Stop every recorded part in the reverse order (only processes that are still the ones started); the data
    stays. Returns the names of the parts stopped."""
    with st.cluster_lock(home):
        state = st.load_state(home)
        if state is None:
            progress("no cluster in this home")
            return []
        stopped = []
        for name in reversed(part_order(state)):
            rec = state.parts.get(name)
            if rec is None:
                continue
            outcome = _stop(state, name, rec)
            progress(f"{name}: {outcome}")
            if outcome != "not running":
                stopped.append(name)
            rec.pid, rec.start_ticks = None, None
            st.save_state(home, state)
        return stopped


def _stop(state: ClusterState, name: str, rec: PartRecord) -> str:
    if name == "postgres":
        if not is_running(state, "postgres"):
            return "not running"
        pg_server(state).stop()
        return "stopped"
    if rec.pid is None or rec.start_ticks is None or not st.is_same_process(rec.pid, rec.start_ticks):
        return "not running"
    kind = "gateway" if name.startswith("gateway-") else name
    outcome = st.stop_process(rec.pid, rec.start_ticks, STOP_TIMEOUTS_S.get(kind, 15.0))
    for sock in rec.extra.get("sockets", []):
        Path(sock).unlink(missing_ok=True)
    return outcome


def status(home: Path) -> tuple[ClusterState | None, list[PartStatus]]:
    state = st.load_state(home)
    if state is None:
        return None, []
    out = []
    for name in part_order(state):
        rec = state.parts.get(name)
        running = is_running(state, name)
        out.append(
            PartStatus(
                name,
                running and probe(state, name),
                running,
                rec.pid if rec is not None and running else None,
                address_of(state, name),
                rec.log if rec is not None else str(log_of(state, name)),
            )
        )
    return state, out
