"""The Kubernetes deployment: every overlay and worked example builds with `kubectl
kustomize`; each custom resource is valid against the real CRD schema (../shared/crds,
strict: unknown fields are errors, as with kubectl's default field validation) and
each built-in kind against Kubernetes' OpenAPI schema (kubernetes-validate, strict);
every example declares one gpuwatch port per local rank and the PodMonitor keeps
exactly those. CEL rules (x-kubernetes-validations) are not evaluated here."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration
KUBECTL = shutil.which("kubectl")
K8S = ROOT / "deploy" / "kubernetes"
CRDS = ROOT / ".." / "shared" / "crds"
KUBERNETES_VERSION = "1.32"  # the kubectl installed here
OVERLAYS = ["overlays/prometheus-operator", "overlays/kube-prometheus-stack",
            "overlays/grafana-sidecar"]
EXAMPLES = ["examples/torchrun-job", "examples/trainjob", "examples/jobset"]


def build(directory: str) -> list[dict[str, Any]]:
    assert KUBECTL, "kubectl is required"
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / directory)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields forbidden wherever the API server would reject them."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, from every CRD file."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                out[(f"{group}/{version['name']}", kind)] = strict(
                    version["schema"]["openAPIV3Schema"])
    return out


def validate(doc: dict[str, Any]) -> str:
    """Validate one object; returns how ("crd" or "openapi")."""
    key = (doc["apiVersion"], doc["kind"])
    if key in crd_schemas():
        # CRD schemas are OpenAPI v3 (JSON Schema draft 4/5 keywords); some carry Go
        # regexes Python cannot compile, in fields these manifests do not use
        jsonschema.Draft7Validator(crd_schemas()[key]).validate(doc)
        return "crd"
    group = doc["apiVersion"].rpartition("/")[0]
    assert "." not in group or group.endswith(".k8s.io"), f"no CRD in ../shared/crds for {key}"
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    return "openapi"


def test_crds_are_there() -> None:
    assert {k for _, k in crd_schemas()} >= {"PodMonitor", "PrometheusRule", "TrainJob",
                                             "ClusterTrainingRuntime", "JobSet"}


@pytest.mark.parametrize("directory", OVERLAYS + EXAMPLES)
def test_builds_and_every_object_is_schema_valid(directory: str) -> None:
    docs = build(directory)
    how = {f"{d['kind']}": validate(d) for d in docs}
    assert how, directory
    for kind in ("PodMonitor", "PrometheusRule", "JobSet", "TrainJob", "ClusterTrainingRuntime"):
        assert how.get(kind, "crd") == "crd", kind


def test_validation_catches_what_the_api_server_would_reject() -> None:
    """The checks above can fail: an unknown field, a wrong type, a bad built-in."""
    podmonitor = next(d for d in build("overlays/prometheus-operator")
                      if d["kind"] == "PodMonitor")
    typo = copy.deepcopy(podmonitor)
    typo["spec"]["podMetricEndpoints"] = typo["spec"].pop("podMetricsEndpoints")
    with pytest.raises(jsonschema.ValidationError):
        validate(typo)
    wrong = copy.deepcopy(podmonitor)
    wrong["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "keepall"
    with pytest.raises(jsonschema.ValidationError):
        validate(wrong)
    job = next(d for d in build("examples/torchrun-job") if d["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["ports"][1]["containerPort"] = "9410"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)


def test_overlays_label_for_their_stack() -> None:
    kps = {d["kind"]: d for d in build("overlays/kube-prometheus-stack")}
    for kind in ("PodMonitor", "PrometheusRule"):
        assert kps[kind]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert kps[kind]["metadata"]["namespace"] == "monitoring"
    assert kps["PodMonitor"]["spec"]["namespaceSelector"] == {"any": True}
    assert "release" not in kps["PodMonitor"]["spec"]["selector"]["matchLabels"]
    for overlay in ("overlays/kube-prometheus-stack", "overlays/grafana-sidecar"):
        dashboards = next(d for d in build(overlay) if d["kind"] == "ConfigMap")
        assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert dashboards["metadata"]["annotations"]["grafana_folder"] == "gpuwatch"
    plain = {d["kind"]: d for d in build("overlays/prometheus-operator")}
    assert "release" not in plain["PodMonitor"]["metadata"]["labels"]


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod template in a Job, JobSet or ClusterTrainingRuntime."""
    if doc["kind"] == "Job":
        return [doc["spec"]["template"]]
    if doc["kind"] == "JobSet":
        return [r["template"]["spec"]["template"] for r in doc["spec"]["replicatedJobs"]]
    if doc["kind"] == "ClusterTrainingRuntime":
        return [r["template"]["spec"]["template"]
                for r in doc["spec"]["template"]["spec"]["replicatedJobs"]]
    return []


def procs_per_node(docs: list[dict[str, Any]]) -> int:
    for d in docs:
        if d["kind"] == "TrainJob":
            return int(d["spec"]["trainer"]["numProcPerNode"])
        for pod in pod_specs(d):
            for arg in pod["spec"]["containers"][0].get("command", []):
                if arg.startswith("--nproc-per-node="):
                    return int(arg.split("=", 1)[1])
    raise AssertionError("no process count")


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_expose_every_local_rank_on_the_pod_ip(example: str) -> None:
    docs = build(example)
    podmonitor = yaml.safe_load((K8S / "base" / "podmonitor.yaml").read_text())
    keep = podmonitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    assert keep["action"] == "keep"
    assert keep["sourceLabels"] == ["__meta_kubernetes_pod_container_port_name"]
    pods = [p for d in docs for p in pod_specs(d)]
    assert pods
    n = procs_per_node(docs)
    for pod in pods:
        assert pod["metadata"]["labels"]["gpuwatch.io/monitored"] == "true"
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["GPUWATCH_EXPORTER__ADDR"]["valueFrom"]["fieldRef"]["fieldPath"] \
            == "status.podIP"
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        scraped = sorted((p["containerPort"], p["name"]) for p in container["ports"]
                         if re.fullmatch(keep["regex"], p["name"]))
        assert scraped == [(9410 + r, f"gpuwatch-{r}") for r in range(n)]  # every local rank
        assert len(scraped) < len(container["ports"]) or example == "examples/trainjob"
    names = {d["kind"]: d["metadata"].get("namespace") for d in docs}
    assert names.get("Job", names.get("JobSet", names.get("TrainJob"))) == "ml"


def test_plain_prometheus_scrape_config_mirrors_the_podmonitor() -> None:
    """Clusters without the operator use deploy/prometheus/kubernetes.yml: the same
    relabelings, after the ones the operator adds itself."""
    podmonitor = yaml.safe_load((K8S / "base" / "podmonitor.yaml").read_text())
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "kubernetes.yml").read_text())
    job = config["scrape_configs"][0]
    snake = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    tail = [{snake.get(k, k): v for k, v in r.items()}
            for r in podmonitor["spec"]["podMetricsEndpoints"][0]["relabelings"]]
    assert job["relabel_configs"][-len(tail):] == tail
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert "honor_labels" not in job
