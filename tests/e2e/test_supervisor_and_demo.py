"""The supervisor restarts a runner that dies; `modelmarket demo` prints what a new user needs."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from tests.e2e.conftest import COLD_START_S, MM, Cli, Gateway, start_gateway, stop_gateway

from modelmarket.runtime.supervisor import socket_path_for


def _runner_pids(gateway_pid: int, model: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != gateway_pid or b"modelmarket.runtime.runner" not in cmdline or b"--spec" not in cmdline:
            continue
        spec = json.loads(Path(cmdline[cmdline.index(b"--spec") + 1].decode()).read_text())
        if spec["name"] == model:
            pids.append(int(entry.name))
    return pids


def test_dead_runner_is_restarted_and_failed_calls_are_not_metered(gateway: Gateway) -> None:
    key = gateway.cli.new_consumer("survivor")
    auth = {"Authorization": f"Bearer {key}"}
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
    [pid] = _runner_pids(gateway.proc.pid, "digits")
    os.kill(pid, signal.SIGKILL)
    ok = 0
    failed_statuses = set()
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=gateway.url, headers=auth, timeout=COLD_START_S) as http:
        while time.monotonic() < deadline and ok < 5:
            r = http.post("/v2/models/digits/infer", json=body)
            if r.status_code == 200:
                ok += 1
            else:
                failed_statuses.add(r.status_code)
                assert "error" in r.json()
                time.sleep(0.05)
        assert ok == 5, f"digits never came back; saw {failed_statuses}"
        assert http.get("/v2/models/digits/ready").status_code == 200
        usage = http.get("/api/usage").json()
    assert failed_statuses <= {503}
    [new_pid] = _runner_pids(gateway.proc.pid, "digits")
    assert new_pid != pid
    assert usage["total_events"] == ok  # calls that failed while the runner was down were not metered


def test_demo_prints_url_key_and_working_examples(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    proc = subprocess.Popen(
        [*MM, "demo", "--port", "0"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(line.startswith("Press Ctrl+C") for line in lines):
            line = proc.stdout.readline()
            assert line, f"demo exited early; printed {lines}"
            lines.append(line.rstrip("\n"))
        url = next(re.match(r"URL: (\S+)", x).group(1) for x in lines if x.startswith("URL: "))  # type: ignore[union-attr]
        key = next(x.removeprefix("API key: ") for x in lines if x.startswith("API key: "))
        examples = [x.strip() for x in lines if x.strip().startswith("curl ")]
        assert url.startswith("http://127.0.0.1:") and key.startswith("mm_") and len(examples) == 5
        # Run every example the way a user would paste it (minus curl): same URL, headers and body.
        posted = [_paste(example) for example in examples if " -d " in example]
        assert [r.status_code for r in posted] == [200, 200, 200, 200], [r.text for r in posted]
        assert posted[0].json()["model_name"] == "digits"
        assert posted[2].json()["model_name"] == "smollm2-135m-instruct"
        assert posted[3].json()["choices"][0]["message"]["content"]
        assert posted[3].headers["x-modelmarket-route"].startswith("smollm2-135m-instruct@")
        usage = httpx.get(f"{url}/api/usage", headers={"Authorization": f"Bearer {key}"}).json()
        assert usage["total_events"] == 4 and usage["account"] == "demo-consumer"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _paste(example: str) -> httpx.Response:
    """POST what a printed ``curl -s -H ... -d BODY URL`` example sends, retrying while its model starts (503)."""
    args = shlex.split(example)
    target = next(a for a in args if a.startswith("http"))
    headers = dict(args[i + 1].split(": ", 1) for i, a in enumerate(args) if a == "-H")
    data = args[args.index("-d") + 1]
    body = Path(data[1:]).read_bytes() if data.startswith("@") else data.encode()
    deadline = time.monotonic() + 120
    while True:
        r = httpx.post(target, content=body, headers=headers, timeout=120)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_children_stop_when_the_gateway_is_killed(digits_cli: Cli) -> None:
    cli = digits_cli
    gw = start_gateway(cli, models=("digits",))
    children = _children(gw.proc.pid)
    described = [(c, _cmdline(c)) for c in children]
    assert len(children) == 2, described  # the digits runner and the metering consumer
    gw.proc.kill()
    gw.proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(c) for c in children):
        time.sleep(0.2)
    survivors = [(c, _cmdline(c)) for c in children if _alive(c)]
    assert not survivors, f"outlived the gateway: {survivors}"


def test_concurrent_first_calls_share_one_runner(digits_cli: Cli) -> None:
    cli = digits_cli
    key = cli.new_consumer("eager")
    gw = start_gateway(cli, models=(), extra_args=("--no-preload",))
    try:
        assert _runner_pids(gw.proc.pid, "digits") == []  # nothing started before the first call
        body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}

        def call(_: int) -> int:
            r = httpx.post(
                f"{gw.url}/v2/models/digits/infer", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
            )
            return r.status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(call, range(8)))
        assert statuses == [200] * 8
        assert len(_runner_pids(gw.proc.pid, "digits")) == 1
    finally:
        stop_gateway(gw)


RESTART_READY_BOUND_S = 45
"""A restarted gateway is ready once its runner loads (a few seconds here), far inside start_gateway's 90 s."""


def test_a_gateway_restarted_after_a_sigkill_is_ready_as_soon_as_its_runners_are(digits_cli: Cli) -> None:
    cli = digits_cli
    key = cli.new_consumer("again")
    gw = start_gateway(cli, models=("digits",))
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [2.0] * 64}]}
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            while not stop.is_set():
                try:
                    http.post("/v2/models/digits/infer", json=body)
                except httpx.HTTPError:
                    return  # the gateway is gone

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    old_children = _children(gw.proc.pid)
    gw.proc.kill()  # SIGKILL under load: no shutdown, its runner and socket are left behind for a moment
    gw.proc.wait(timeout=10)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    restarted_at = time.monotonic()
    gw2 = start_gateway(cli, models=("digits",), timeout_s=RESTART_READY_BOUND_S)
    try:
        while (ready := httpx.get(f"{gw2.url}/v2/health/ready")).status_code != 200:
            assert time.monotonic() - restarted_at < RESTART_READY_BOUND_S, ready.text
            time.sleep(0.1)
        r = httpx.post(f"{gw2.url}/v2/models/digits/infer", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        assert not [c for c in old_children if _alive(c)]  # the orphans stopped with their gateway
        [version_dir] = [p for p in (cli.home / "runners").iterdir() if p.is_dir()]
        old_socket = socket_path_for(cli.home / "runners", version_dir.name, gw.proc.pid)
        new_socket = socket_path_for(cli.home / "runners", version_dir.name, gw2.proc.pid)
        assert new_socket.is_socket() and not old_socket.exists()  # the killed gateway's socket was cleared
    finally:
        stop_gateway(gw2)
