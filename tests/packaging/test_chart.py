"""The Helm chart: rendered and linted by Helm's engine, every manifest schema-checked."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

from chart_render import CHART, NAMESPACE, ROOT, VALUE_SETS, by_kind, manifests, render
from modelship_operator.planning.children import METRICS_PORT_NAME
from modelship_operator.settings import Settings

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (the test extra) renders the chart")

K8S_VERSION = "1.34"
# prometheus-operator kinds: their CRDs are not shipped here; checked structurally below.
CRD_TYPED = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def test_chart_ships_the_canonical_crd(tmp_path: Any) -> None:
    """charts/modelship/crds is a symlink to crds/ (no copy); Helm packages and shows its file."""
    import tarfile

    assert (CHART / "crds").is_symlink() and (CHART / "crds").resolve() == (ROOT / "crds").resolve()
    canonical = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    assert helm.show(str(CHART), output_format="crds").strip() == "---\n" + b"".join(canonical.values()).decode().strip()
    with tarfile.open(helm.package(CHART, destination=tmp_path)) as tgz:
        shipped = {m.name.rsplit("/", 1)[1]: tgz.extractfile(m).read()  # type: ignore[union-attr]
                   for m in tgz.getmembers() if m.name.startswith("modelship/crds/")}
    assert shipped == canonical


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version="v1.34.0")
    assert report["errors"] == []
    # severity 2 = warning, 3 = error; info (e.g. "icon is recommended") is fine.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_manifest_is_valid(name: str) -> None:
    docs = manifests(VALUE_SETS[name])
    assert by_kind(docs, "Deployment"), "the operator Deployment is always rendered"
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_TYPED:
            assert doc["metadata"]["name"] and doc["spec"], key
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validate_catches_a_broken_manifest() -> None:
    """The validation above has teeth: a typo in a rendered Deployment fails it."""
    dep = copy.deepcopy(by_kind(manifests(), "Deployment")[0])
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["prot"] = 8080
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def _operator(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    (dep,) = by_kind(manifests(values), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_operator_pod_is_locked_down_with_kopf_liveness() -> None:
    pod, c = _operator({})
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_env_is_accepted_by_the_operator_settings(name: str) -> None:
    values = VALUE_SETS[name]
    _, c = _operator(values)
    env = {e["name"]: e["value"] for e in c["env"]}
    settings = Settings.from_env(env)  # raises on any value the operator would refuse at start
    assert env["MODELSHIP_NAMESPACES"] == ",".join(values.get("watchNamespaces", []))
    assert env["MODELSHIP_GPU_LABEL_KEY"] == values.get("gpuLabelKey", "nvidia.com/gpu.product")
    # the PromQL windows are sized from the scrape interval the chart passes on
    assert settings.prometheus_scrape_interval == 30.0 and env["MODELSHIP_PROMETHEUS_SCRAPE_INTERVAL"] == "30s"


def test_custom_values_reach_the_pod() -> None:
    pod, c = _operator(VALUE_SETS["custom"])
    env = {e["name"]: e["value"] for e in c["env"]}
    assert c["image"] == "registry.example.com/modelship/operator@sha256:" + "a" * 64
    assert env["MODELSHIP_SERVER_IMAGE"] == "registry.example.com/modelship/server:0.1.0-cuda"
    assert env["MODELSHIP_LOG_FORMAT"] == "text" and env["MODELSHIP_RESYNC_SECONDS"] == "30"
    assert "--verbose" in c["args"]
    assert pod["serviceAccountName"] == "ms-op"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    _, default = _operator({})
    assert default["image"] == "ghcr.io/modelship/operator:0.1.0" and "--verbose" not in default["args"]


def _rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def _deploy_rules() -> set[tuple[str, str, str]]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()))
    (role,) = [d for d in docs if d and d["kind"] == "ClusterRole"]
    return _rule_set(role["rules"])


def _leader_election(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith("-leader-election")]


def _workload(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in by_kind(docs, kind) if not d["metadata"]["name"].endswith("-leader-election")]


def test_cluster_mode_rbac_mirrors_deploy_rbac_without_wildcards() -> None:
    docs = manifests()
    assert not _workload(docs, "Role")
    (role,) = by_kind(docs, "ClusterRole")
    granted = _rule_set(role["rules"])
    assert granted == _deploy_rules()
    assert not any("*" in part for triple in granted for part in triple)
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    (sa,) = by_kind(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]


def test_namespaced_mode_grants_namespaced_rights_only_in_the_watched_namespaces() -> None:
    docs = manifests(VALUE_SETS["namespaced"])
    roles = _workload(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "ml-staging"]
    bindings = _workload(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "ml-staging"]
    (cluster_role,) = by_kind(docs, "ClusterRole")
    cluster = _rule_set(cluster_role["rules"])
    # Cluster-wide only what is cluster-scoped, and read-only.
    assert {r for _, r, _ in cluster} == {"customresourcedefinitions", "namespaces"}
    assert {v for _, _, v in cluster} == {"list", "watch"}
    for role in roles:
        assert _rule_set(role["rules"]) | cluster == _deploy_rules()


def test_optional_monitoring_is_off_by_default_and_complete_when_on() -> None:
    kinds = {d["kind"] for d in manifests()}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment"}
    docs = manifests(VALUE_SETS["monitoring"])
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"] == "modelship-operator"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    # The container port the operator renders for /metrics: the admin port, never inference.
    assert endpoint["port"] == METRICS_PORT_NAME == "admin" and endpoint["path"] == "/metrics"
    assert {r["targetLabel"] for r in endpoint["relabelings"]} >= {"modeldeployment", "revision"}
    assert len(by_kind(docs, "PrometheusRule")) == 1
    names = {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}
    assert names == {"modelship-operator-dashboard", "modelship-operator-ksm-config",
                     "modelship-operator-prometheus-adapter"}
    custom = manifests(VALUE_SETS["custom"])
    (pm,) = by_kind(custom, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert pm["metadata"]["labels"]["release"] == "kps"


def test_pod_monitor_selects_the_pods_the_operator_renders() -> None:
    """The PodMonitor's selector and port match the model pods `kubectl-modelship render` prints."""
    proc = subprocess.run([sys.executable, "-m", "modelship_operator.cli", "render", "-f",
                           str(ROOT / "examples" / "quickstart-cpu.yaml")],
                          capture_output=True, text=True, timeout=60, env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    (dep,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Deployment"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    (pm,) = by_kind(manifests(VALUE_SETS["monitoring"]), "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in ports
    # The relabelings read labels the pods really carry.
    for relabel in pm["spec"]["podMetricsEndpoints"][0]["relabelings"]:
        (source,) = relabel["sourceLabels"]
        if source.startswith("__meta_kubernetes_pod_label_"):
            wanted = source.removeprefix("__meta_kubernetes_pod_label_")
            assert wanted in {re.sub(r"[^a-zA-Z0-9_]", "_", k) for k in pod_labels}, source


@pytest.mark.parametrize("bad", [
    {"operator": {"logLevel": "loud"}},
    {"operator": {"logFormat": "xml"}},
    {"watchNamespaces": ["Not_A_Namespace"]},
    {"prometheus": {"url": "prometheus:9090"}},
    {"monitoring": {"prometheusRule": {"errorRate": {"threshold": 5}}}},
    {"operator": {"image": {"repository": "x", "digest": "latest"}}},
    {"unknownKey": True},
])
def test_values_schema_rejects_bad_values(bad: dict[str, Any]) -> None:
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmError):
        chart.validate_schema(bad)
    with pytest.raises(helm.HelmError):
        render(bad)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_values_schema_accepts_the_tested_value_sets(name: str) -> None:
    helm.Chart.load(CHART).validate_schema(VALUE_SETS[name])


def test_values_yaml_documents_every_schema_property() -> None:
    """values.yaml (the documentation users read) and the schema describe the same keys."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, path: str) -> None:
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        if node.get("type") != "object" or "properties" not in node or not isinstance(value, dict):
            return
        assert set(value) <= set(node["properties"]), f"{path}: {set(value) - set(node['properties'])} not in schema"
        for key, sub in node["properties"].items():
            if key in value:
                walk(sub, value[key], f"{path}.{key}")

    walk(schema, values, "values")


def test_chart_sets_every_setting_the_plain_manifest_sets() -> None:
    """deploy/operator.yaml and the chart configure the same operator settings."""
    plain = [d for d in yaml.safe_load_all((ROOT / "deploy" / "operator.yaml").read_text()) if d and d["kind"] == "Deployment"]
    (container,) = plain[0]["spec"]["template"]["spec"]["containers"]
    _, chart = _operator({})
    assert {e["name"] for e in container["env"]} <= {e["name"] for e in chart["env"]}
    assert container["args"] == chart["args"]


@pytest.mark.parametrize("name", ["defaults", "namespaced", "custom"])
def test_leader_election_may_use_only_its_own_lease_in_the_release_namespace(name: str) -> None:
    docs = manifests(VALUE_SETS[name])
    (role,) = _leader_election(docs, "Role")
    (binding,) = _leader_election(docs, "RoleBinding")
    (sa,) = by_kind(docs, "ServiceAccount")
    _, container = _operator(VALUE_SETS[name])
    lease = {e["name"]: e.get("value") for e in container["env"]}["MODELSHIP_LEASE_NAME"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease],
         "verbs": ["get", "patch"]},
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    plain = [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text())
             if d and d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election")]
    assert [_rule_set(p["rules"]) for p in plain] == [_rule_set(role["rules"])]
    assert Settings().lease_name in plain[0]["rules"][1]["resourceNames"]
