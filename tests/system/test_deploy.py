"""deploy/ checked by the tools that can check it here (hadolint, kubectl kustomize, kubernetes-validate,
promtool), and each file against the gateway itself (its flags, its config parser, its metric names)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from gateway.cli import build_parser, settings_from_args
from gateway.config.settings import read_config_file
from gateway.observability.metrics import ALL_FAMILIES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
KUSTOMIZATIONS = sorted(p.parent for p in (DEPLOY / "k8s").rglob("kustomization.yaml"))
# Kinds Kubernetes itself defines: kubernetes-validate has their schemas.
BUILT_IN_GROUPS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2", "batch/v1"}
# Custom resources: the fields their controllers require (from their CRDs), checked by hand.
CUSTOM_REQUIRED = {
    "ServingRuntime": ["spec.containers", "spec.supportedModelFormats"],
    "InferenceService": ["spec.predictor"],
    "ServiceMonitor": ["spec.selector", "spec.endpoints"],
    "ScaledObject": ["spec.scaleTargetRef.name", "spec.triggers"],
}


def test_every_dockerfile_passes_hadolint():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.nvidia"}
    hadolint = BIN / "hadolint"
    for dockerfile in DOCKERFILES:
        result = subprocess.run(
            [str(hadolint), "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True
        )
        assert result.returncode == 0, f"{dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_dockerfiles_follow_the_image_rules():
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
        assert len(stages) >= 2, f"{dockerfile.name}: build tools stay in a builder stage"
        assert re.search(r"^ARG BASE_IMAGE=", text, re.M), dockerfile.name
        assert re.search(r"^USER (?!root|0\b)", text, re.M), f"{dockerfile.name}: runs as non-root"
        assert "HEALTHCHECK" in text and "gateway.healthcheck" in text, dockerfile.name
        entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
        assert entrypoint[0] == "ovgw", dockerfile.name
        # The OVMS-style command line, after the entrypoint's own flags, is one the gateway accepts.
        args = entrypoint[1:] + ["--model_name", "m", "--model_path", "/models/m", "--port", "9000",
                                 "--rest_port", "8000"]  # fmt: skip
        settings_from_args(build_parser().parse_args(args))


def test_every_image_ships_the_one_pinned_openvino_that_the_package_accepts():
    constraints = (DEPLOY / "docker" / "constraints.txt").read_text()
    pins = re.findall(r"^openvino==(\S+)$", constraints, re.M)
    assert len(pins) == 1, "constraints.txt pins OpenVINO exactly once"
    pinned = Version(pins[0])
    (line,) = re.findall(r'^\s*"(openvino[<>=!~][^"]*)",', (ROOT / "pyproject.toml").read_text(), re.M)
    requirement = Requirement(line)
    assert requirement.specifier.contains(pinned), f"openvino {pinned} does not satisfy {requirement}"
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        # No second place sets it: every builder installs with the shared constraints file.
        assert "OPENVINO_VERSION" not in text and not re.search(r"openvino==\d", text), dockerfile.name
        assert re.search(r"COPY [^\n]*deploy/docker/constraints\.txt", text), dockerfile.name
        assert re.search(r"pip install [^\n]*-c constraints\.txt", text), dockerfile.name
    nvidia = (DEPLOY / "docker" / "Dockerfile.nvidia").read_text()
    # The plugin is built from the same tag of openvino and openvino_contrib, read from the same file.
    assert "sed -n 's/^openvino==//p' constraints.txt" in nvidia
    for repository in ("openvino.git", "openvino_contrib.git"):
        assert re.search(r'--branch "\$\{version\}"[^\n]*(\n[^\n]*)?' + re.escape(repository), nvidia), (
            repository
        )
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!deploy/docker/constraints.txt" in ignored, "the build context carries the pins"


def test_healthcheck_reads_the_ports_from_the_server_command_line():
    from gateway.healthcheck import server_ports

    assert server_ports(["ovgw", "--model_name", "m", "--port", "9000", "--rest_port", "8000"]) == (
        9000,
        8000,
    )
    assert server_ports(["ovgw", "--port=9000"]) == (9000, 0)
    assert server_ports(["ovgw", "--config_path", "/c.json"]) == (8001, 8000)


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        result = subprocess.run(
            ["make", "--no-print-directory", "kubectl"], cwd=ROOT, capture_output=True, text=True
        )
        path = shutil.which("kubectl")
        if path is None:
            pytest.skip(
                f"Debian's kubernetes-client (kubectl) could not be installed: {result.stderr[-500:]}"
            )
    return path


def _render(kubectl: str, folder: Path) -> list[dict]:
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {folder.relative_to(ROOT)}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _get(doc: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


@pytest.fixture(scope="module")
def rendered(kubectl) -> dict[str, list[dict]]:
    return {str(folder.relative_to(DEPLOY / "k8s")): _render(kubectl, folder) for folder in KUSTOMIZATIONS}


def test_every_kustomization_renders_and_validates(rendered):
    import kubernetes_validate

    expected = {"base", "overlays/cpu", "overlays/intel-gpu", "overlays/nvidia", "overlays/autoscaling-hpa",
                "overlays/autoscaling-keda", "overlays/object-storage", "kserve",
                "servicemonitor"}  # fmt: skip
    assert expected <= set(rendered)
    for name, docs in rendered.items():
        assert docs, name
        for doc in docs:
            where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
            if doc["apiVersion"] in BUILT_IN_GROUPS:
                try:
                    kubernetes_validate.validate(doc, "1.30.0", strict=True)
                except kubernetes_validate.ValidationError as e:
                    pytest.fail(f"{where}: {e.message} at {list(e.path)}")
            else:
                required = CUSTOM_REQUIRED.get(doc["kind"])
                assert required is not None, f"{where}: no known schema for this kind"
                missing = [field for field in required if not _get(doc, field)]
                assert not missing, f"{where}: missing {missing}"


def _deployment(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "Deployment")


def test_deployments_run_the_gateway_with_probes_ports_and_a_valid_config(rendered, tmp_path):
    for name in ("overlays/cpu", "overlays/intel-gpu", "overlays/nvidia"):
        docs = rendered[name]
        container = _deployment(docs)["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live", name
        assert {p["name"] for p in container["ports"]} == {"grpc", "http"}, name
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits == requests, f"{name}: Guaranteed QoS (whole CPUs) lets the CPU manager pin OpenVINO"
        args = build_parser().parse_args(container["args"])
        service = next(d for d in docs if d["kind"] == "Service")
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
            "grpc": args.port,
            "http": args.rest_port,
        }
        # The ConfigMap's config.json is one the gateway parses without a model error.
        config_map = next(d for d in docs if d["kind"] == "ConfigMap")
        (tmp_path / "config.json").write_text(config_map["data"]["config.json"])
        config = read_config_file(str(tmp_path / "config.json"))
        assert config.models and not config.model_errors, (name, config.model_errors)
    devices = {
        name: json.loads(next(d for d in rendered[name] if d["kind"] == "ConfigMap")["data"]["config.json"])
        for name in ("overlays/cpu", "overlays/intel-gpu", "overlays/nvidia")
    }
    targets = {n: c["model_config_list"][0]["config"]["target_device"] for n, c in devices.items()}
    assert targets == {"overlays/cpu": "CPU", "overlays/intel-gpu": "GPU", "overlays/nvidia": "NVIDIA"}


def test_autoscaling_follows_the_ovms_recipe(rendered):
    hpa_docs = rendered["overlays/autoscaling-hpa"]
    hpa = next(d for d in hpa_docs if d["kind"] == "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = next(d for d in hpa_docs if d["kind"] == "ConfigMap" and "adapter" in d["metadata"]["name"])
    rule = yaml.safe_load(adapter["data"]["config.yaml"])["rules"][0]
    assert rule["name"]["as"] == metric
    assert "ovms_current_requests" in rule["metricsQuery"] and "ovms_streams" in rule["metricsQuery"]
    scaled = next(d for d in rendered["overlays/autoscaling-keda"] if d["kind"] == "ScaledObject")
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 3)
    assert (
        scaled["spec"]["scaleTargetRef"]["name"] == _deployment(rendered["overlays/cpu"])["metadata"]["name"]
    )
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert "ovms_current_requests" in query and "ovms_streams" in query


def test_kserve_runtime_serves_v2_with_the_gateway(rendered):
    docs = {d["kind"]: d for d in rendered["kserve"]}
    runtime, service = docs["ServingRuntime"], docs["InferenceService"]
    assert {f["name"] for f in runtime["spec"]["supportedModelFormats"]} == {"openvino", "onnx"}
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    args = [a.replace("{{.Name}}", "resnet") for a in runtime["spec"]["containers"][0]["args"]]
    parsed = build_parser().parse_args(args)
    assert parsed.rest_port == runtime["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]


def _metric_names(text: str) -> set[str]:
    names = set(re.findall(r"\b((?:ovms|ovgw|nv)_[a-z_]+)\b", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_monitoring_files_use_metrics_the_gateway_exposes(kubectl):
    promtool = ROOT / ".cache" / "prometheus" / "usr" / "bin" / "promtool"
    if not promtool.exists():
        subprocess.run(["make", "--no-print-directory", "prometheus"], cwd=ROOT, capture_output=True)
    if not promtool.exists():
        pytest.skip("Debian's prometheus package (promtool) could not be installed")
    rules = DEPLOY / "monitoring" / "rules.yaml"
    result = subprocess.run([str(promtool), "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for where, text in (("rules.yaml", rules.read_text()), ("grafana-dashboard.json", exprs)):
        unknown = _metric_names(text) - set(ALL_FAMILIES)
        assert not unknown, f"{where} uses metrics the gateway does not expose: {unknown}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "errors", "latency", "queue", "batch", "stream"):
        assert topic in titles, topic


def test_the_object_storage_overlay_is_ovms_recipe_without_a_models_volume(rendered, tmp_path):
    docs = rendered["overlays/object-storage"]
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"], "models come from the bucket"
    pod = _deployment(docs)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "/models" not in {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, "the model cache is writable"
    assert {v["name"] for v in pod["volumes"]} == {m["name"] for m in container["volumeMounts"]}
    assert container["envFrom"] == [{"secretRef": {"name": "ovgw-storage", "optional": True}}]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    (tmp_path / "config.json").write_text(config_map["data"]["config.json"])
    args = [f"--config_path={tmp_path / 'config.json'}" if a.startswith("--config_path") else a
            for a in container["args"]]  # fmt: skip
    settings = settings_from_args(build_parser().parse_args(args))
    assert settings.object_store_poll_wait_seconds == 15 and settings.file_system_poll_wait_seconds == 1
    config = read_config_file(str(tmp_path / "config.json"))
    assert not config.model_errors
    assert [m.base_path for m in config.models] == ["gs://ovms-public-eu/resnet50-binary"]
