"""The chaos drill on a real cluster: load through Envoy while a gateway replica is SIGKILLed (and started again), a
runner is SIGKILLed and NATS restarts; afterwards every call a client saw answered has exactly one usage event and
one ledger posting, no failed call is billed, and the invoice totals answered calls x price exactly."""

from __future__ import annotations

import json

from tests.e2e.cluster_home import cluster_cli, require_engines, run_up

DRILL_S = 20


def test_chaos_drill_reconciles_exactly() -> None:
    require_engines()
    with cluster_cli() as cli:
        run_up(cli, "--replicas", "2")
        proc = cli.run(
            "cluster", "chaos", "--seconds", str(DRILL_S), "--threads", "4", "--json", check=False, timeout_s=600
        )
        assert proc.stdout.strip(), proc.stderr
        report = json.loads(proc.stdout)
        _print_table(report)
        print("\n".join(line for line in proc.stderr.splitlines() if "load:" in line or "SIGKILL" in line))

        # the disruptions happened while the clients called
        assert "gateway-1: SIGKILLed" in proc.stderr and "gateway-1: started again" in proc.stderr, proc.stderr
        assert "runner pid" in proc.stderr and "SIGKILLed" in proc.stderr, proc.stderr
        assert "nats: started again" in proc.stderr, proc.stderr

        assert report["answered"] > 50, report
        mismatched = [c for c in report["checks"] if not c["ok"]]
        assert mismatched == [], mismatched
        assert report["ok"] is True and proc.returncode == 0
        checks = {c["name"]: c for c in report["checks"]}
        assert checks["usage events billed"]["actual"] == str(report["answered"])
        assert checks["usage events no client saw answered"]["actual"] == "0"  # no failed call billed


def _print_table(report: dict[str, object]) -> None:
    checks = report["checks"]
    assert isinstance(checks, list)
    print(f"\nchaos drill: {report['answered']} answered, {report['failed']} failed, {report['replayed']} replayed")
    for c in checks:
        print(f"  {c['name']:<40} {c['expected']:>10} {c['actual']:>10}  {'ok' if c['ok'] else 'MISMATCH'}")
