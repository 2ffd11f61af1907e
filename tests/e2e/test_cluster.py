"""`modelmarket cluster up|status|down`: PostgreSQL, NATS, SeaweedFS, a metering consumer, two gateway replicas and
Envoy, started from one home, outliving `up`; `down` leaves no process of the home and keeps the data, which the
next `up` finds."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from tests.e2e.cluster_home import cluster_cli, cluster_json, processes_of, require_engines, run_up
from tests.e2e.conftest import EnvCli

from modelmarket.cluster.state import start_ticks

PARTS = ["postgres", "nats", "seaweedfs", "metering", "gateway-1", "gateway-2", "envoy"]


def test_up_status_call_down_and_up_again() -> None:
    require_engines()
    with cluster_cli() as cli:
        up = run_up(cli, "--replicas", "2")
        front = re.search(r"^URL: (http://127\.0\.0\.1:\d+)$", up.stdout, re.M)
        assert front, up.stdout
        url = front.group(1)
        assert "gateway-2: up (pid" in up.stderr

        status = cluster_json(cli, "cluster", "status")
        assert status["healthy"] is True, status
        assert status["front_url"] == url
        assert [p["name"] for p in status["parts"]] == PARTS
        pids = {p["name"]: p["pid"] for p in status["parts"]}
        assert all(isinstance(pid, int) and Path(f"/proc/{pid}").exists() for pid in pids.values()), pids

        # one metering consumer for the cluster: the replicas run none of their own (serve --no-metering)
        consumers = [c for c in _children(pids["gateway-1"]) + _children(pids["gateway-2"]) if "metering" in c]
        assert consumers == [], consumers
        assert "modelmarket.cli.main meter" in _cmdline(pids["metering"])

        again = run_up(cli)  # idempotent: says what runs, starts nothing
        assert all(f"{name}: already running (pid {pids[name]})" in again.stderr for name in PARTS), again.stderr

        # a CLI on the cluster's store (its settings from `cluster env`), then a keyed call through Envoy
        env = cluster_json(cli, "cluster", "env")
        assert env["MODELMARKET_BUS_URL"].startswith("nats://127.0.0.1:")
        on_cluster = EnvCli(cli.home, extra_env=env)
        key = on_cluster.new_consumer("cluster-user")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            assert http.get("/v2/health/ready").json() == {"ready": True}
            usage = [http.get("/api/usage") for _ in range(6)]  # least-request spreads them over both replicas
        assert [r.status_code for r in usage] == [200] * 6
        assert "server" in usage[0].headers and usage[0].headers["server"] == "envoy"

        home = cli.home.resolve()
        cli.run("cluster", "down", timeout_s=300)
        assert processes_of(home) == []
        assert [pid for pid in pids.values() if start_ticks(pid) is not None] == []  # gone (a zombie counts as gone)
        data = home / "cluster"
        assert (data / "postgres" / "data" / "PG_VERSION").exists()
        assert any((data / "nats").rglob("*")) and any((data / "seaweedfs").rglob("*"))
        down_status = cluster_json(cli, "cluster", "status")
        assert down_status["healthy"] is False and all(p["pid"] is None for p in down_status["parts"])

        run_up(cli)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            assert http.get("/api/usage").status_code == 200  # the key issued before `down` is in the kept store
        assert cluster_json(cli, "cluster", "status")["healthy"] is True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[str]:
    """The command lines of ``pid``'s child processes."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(_cmdline(int(entry.name)))
        except OSError:
            continue
    return out
