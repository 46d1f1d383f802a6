"""The CRD itself: identity, structural schema, descriptions, subresources, printer columns,
defaults and the cost bounds the API server's CEL budget needs."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from modelship_operator.api import crdgen
from modelship_operator.api import validate as schema
from modelship_operator.api.validate import walk

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "modeldeployments.modelship.dev.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def root(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def resolve(root: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = root
    for part in json_path.strip(".").split("."):
        node = (node or {}).get("properties", {}).get(part)
    return node


def test_identity_and_names(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "modeldeployments.modelship.dev"
    s = crd["spec"]
    assert (s["group"], s["scope"]) == ("modelship.dev", "Namespaced")
    names = s["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "ModelDeployment", "modeldeployments", "modeldeployment")
    assert names["shortNames"] == ["mdep"]
    assert "all" not in names.get("categories", [])  # `kubectl get all` must not list model CRs
    [version] = s["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]


def test_checked_in_crd_is_generated_from_the_models() -> None:
    assert CRD_PATH.read_text() == crdgen.crd_yaml(), (
        "crds/modeldeployments.modelship.dev.yaml is stale: run `make crd` "
        "(python -m modelship_operator.api.crdgen > crds/modeldeployments.modelship.dev.yaml) and commit it")
    assert schema.crd_text() == CRD_PATH.read_text()
    loaded = schema.load_crd()
    loaded["spec"]["group"] = "mutated"  # load_crd hands out copies
    assert schema.load_crd()["spec"]["group"] == "modelship.dev"


def test_one_crd_file_in_the_repository() -> None:
    """The chart gets the CRD through a symlink and the package generates it: no copies."""
    assert (ROOT / "charts" / "modelship" / "crds").is_symlink()
    assert (ROOT / "charts" / "modelship" / "crds").resolve() == CRD_PATH.parent.resolve()
    copies = [p for p in ROOT.rglob("modeldeployments.modelship.dev.yaml")
              if p.resolve() != CRD_PATH.resolve() and ".venv" not in p.parts and "build" not in p.parts]
    assert copies == []


def test_every_field_has_a_description(root: dict[str, Any]) -> None:
    missing = [
        path for path, node in walk(root)
        # additionalProperties values and anyOf branches are not fields
        if not path.endswith("}") and ">" not in path and path != ".metadata" and not node.get("description")
    ]
    assert missing == []


def test_schema_is_structural(root: dict[str, Any]) -> None:
    assert schema.structural_errors(root) == []
    # The API server accepts nothing on metadata but its type (not even a description).
    assert root["properties"]["metadata"] == {"type": "object"}


def test_the_structural_check_catches_what_the_api_server_rejects(root: dict[str, Any]) -> None:
    bad = copy.deepcopy(root)
    spec = bad["properties"]["spec"]["properties"]
    spec["model"].pop("type")
    spec["replicas"] = {"type": "array"}
    spec["server"]["additionalProperties"] = {"type": "string"}
    bad["properties"]["metadata"]["description"] = "x"
    errors = "\n".join(schema.structural_errors(bad))
    for expected in (".spec.model: no type", ".spec.replicas: array without items",
                     ".spec.server: properties and additionalProperties together", ".metadata: only"):
        assert expected in errors, errors


def test_subresources_point_to_existing_fields(crd: dict[str, Any], root: dict[str, Any]) -> None:
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    scale = version["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                     "labelSelectorPath": ".status.selector"}
    assert resolve(root, scale["specReplicasPath"])["type"] == "integer"
    assert resolve(root, scale["statusReplicasPath"])["type"] == "integer"
    assert resolve(root, scale["labelSelectorPath"])["type"] == "string"


def test_printer_columns_point_to_existing_fields(crd: dict[str, Any], root: dict[str, Any]) -> None:
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    names = [c["name"] for c in columns]
    for wanted in ("Version", "Weight", "Phase", "Ready", "Age"):
        assert wanted in names
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        node = resolve(root, column["jsonPath"])
        assert node is not None, column
        assert node["type"] == column["type"], column


def test_defaults_validate_as_written_like_the_api_server(crd: dict[str, Any], root: dict[str, Any]) -> None:
    """At CRD creation the API server validates every `default` against its node's schema and
    CEL rules exactly as written, without filling in nested defaults first."""
    assert len([p for p, n in walk(root) if "default" in n]) >= 15
    assert schema.default_errors(root) == []
    assert schema.crd_errors(crd) == []


# The CRD as it was before the models were the source: a real kube-apiserver v1.36 rejected it.
OLD_SERVER_DEFAULTS = {"type": "object", "default": {}, "properties": {
    "maxQueue": {"type": "integer", "default": 2048}, "maxBatchSize": {"type": "integer", "default": 32}},
    "x-kubernetes-validations": [{"rule": "self.maxQueue >= self.maxBatchSize", "message": "queue below batch"}]}


def test_an_empty_object_default_that_a_rule_reads_is_rejected() -> None:
    """`default: {}` is not filled in before the rules run, so `self.maxQueue` has no such key:
    the check the API server makes, and the one the old CRD failed."""
    root = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "batching": OLD_SERVER_DEFAULTS}}}}
    errors = schema.default_errors(root)
    assert len(errors) == 1 and errors[0].startswith("spec.batching.default: queue below batch"), errors
    assert "no such member" in errors[0]
    fixed = copy.deepcopy(root)
    fixed["properties"]["spec"]["properties"]["batching"]["default"] = {"maxQueue": 2048, "maxBatchSize": 32}
    assert schema.default_errors(fixed) == []


def test_the_pre_generator_crd_fails_the_default_check() -> None:
    """The hand-written CRD of before (git history) fails exactly where the API server said."""
    import subprocess

    old = subprocess.run(["git", "show", "496c2e9:crds/modeldeployments.modelship.dev.yaml"], cwd=ROOT,
                         capture_output=True, text=True)
    if old.returncode != 0:
        pytest.skip("no git history here")
    errors = schema.crd_errors(yaml.safe_load(old.stdout))
    where = sorted({e.split(":", 1)[0] for e in errors})
    assert where == ["spec.gpu.default", "spec.rollout.default", "spec.server.batching.default"], errors


def test_defaulting_applies_nested_defaults_of_an_inserted_default() -> None:
    """apiextensions-apiserver's Default(): a missing field gets its default, then every field
    present, the inserted one included, is defaulted in turn; a present parent object is
    completed field by field; an absent optional object without a default stays absent."""
    root = schema.openapi_schema()
    spec = schema.apply_defaults({"server": {"batching": {"maxBatchSize": 64}}}, root["properties"]["spec"])
    assert spec["server"]["batching"] == {"maxBatchSize": 64, "maxDelayMs": 5, "maxQueue": 2048, "timeoutMs": 30000}
    assert spec["rollout"]["analysis"]["interval"] == "30s" and spec["gpu"]["resourceName"] == "nvidia.com/gpu"
    assert "autoscaling" not in spec and "monitoring" not in spec
    with_monitoring = schema.apply_defaults({"monitoring": {}}, root["properties"]["spec"])
    assert with_monitoring["monitoring"]["feedback"]["ttl"] == "1h"


def test_enums_cover_the_design(root: dict[str, Any]) -> None:
    spec = root["properties"]["spec"]["properties"]
    status = root["properties"]["status"]["properties"]
    assert spec["model"]["properties"]["format"]["enum"] == ["auto", "torchscript", "torch-export"]
    assert spec["server"]["properties"]["precision"]["enum"] == ["fp32", "fp16", "bf16"]
    assert spec["rollout"]["properties"]["traffic"]["enum"] == ["auto", "gateway", "replicas"]
    assert status["phase"]["enum"] == ["Pending", "Progressing", "Paused", "Healthy", "Degraded", "Failed"]
    cond = status["conditions"]["items"]["properties"]
    assert set(cond) == {"type", "status", "observedGeneration", "lastTransitionTime", "reason", "message"}


def all_rules(root: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(path, node, rule) for path, node in walk(root)
            for rule in node.get("x-kubernetes-validations") or ()]


def test_every_rule_compiles_and_has_a_message(root: dict[str, Any]) -> None:
    env = celpy.Environment()
    rules = all_rules(root)
    assert len(rules) >= 20
    for path, _, rule in rules:
        env.compile(rule["rule"])  # raises on a syntax error
        assert rule.get("message") and len(rule["message"]) > 20, path


def test_rules_respect_cel_cost_bounds(root: dict[str, Any]) -> None:
    """The API server estimates each rule's worst-case cost from maxItems/maxLength;
    unbounded lists or strings that a rule iterates or matches get the CRD rejected."""
    problems = []
    for path, node, rule in all_rules(root):
        text = rule["rule"]
        # self.a.b.matches(...) / self.matches(...): the matched string needs a maxLength
        for chain in re.findall(r"self((?:\.\w+)*)\.(?:matches|startsWith)\(", text):
            if chain.startswith(".metadata"):
                continue  # the API server bounds metadata.name itself
            target = node
            for part in filter(None, chain.split(".")):
                target = target["properties"][part]
            if "maxLength" not in target:
                problems.append(f"{path}: {text!r} matches an unbounded string")
        for chain in re.findall(r"self((?:\.\w+)*)\.(?:all|exists|exists_one)\(", text):
            target = node
            for part in filter(None, chain.split(".")):
                target = target["properties"][part]
            if "maxItems" not in target:
                problems.append(f"{path}: {text!r} iterates an unbounded list")
    assert problems == []
    # Every list a user writes is bounded, so rules added later stay within budget.
    unbounded = [p for p, n in walk(root["properties"]["spec"], ".spec")
                 if n.get("type") == "array" and "maxItems" not in n]
    assert unbounded == []


# --- the plain install manifests (deploy/) -------------------------------------------------
DEPLOY = ROOT / "deploy"


def deploy_docs() -> list[dict[str, Any]]:
    return [d for f in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def test_manifests_validate_against_kubernetes_schemas() -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for doc in [yaml.safe_load(CRD_PATH.read_text()), *deploy_docs()]:
        kubernetes_validate.validate(doc, version, strict=True)


def test_rbac_is_least_privilege_and_covers_every_child() -> None:
    from modelship_operator import reconcile

    [role] = [d for d in deploy_docs() if d["kind"] == "ClusterRole"]
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for field_name in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field_name], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    plural = {"Deployment": "deployments", "Service": "services", "HorizontalPodAutoscaler": "horizontalpodautoscalers",
              "PodDisruptionBudget": "poddisruptionbudgets", "ServiceMonitor": "servicemonitors",
              "HTTPRoute": "httproutes", "ScaledObject": "scaledobjects"}
    for api_version, kind, _ in reconcile.CHILD_KINDS:
        group = api_version.split("/")[0] if "/" in api_version else ""
        # watch caches (list, watch), server-side apply (patch; create when it creates), prune (delete)
        assert grants[(group, plural[kind])] == {"list", "watch", "create", "patch", "delete"}, kind
    custom = grants[("modelship.dev", "modeldeployments")]
    assert {"get", "list", "watch"} <= custom and not custom & {"create", "update", "delete", "deletecollection"}
    assert "patch" in grants[("modelship.dev", "modeldeployments/status")]
    assert ("modelship.dev", "modeldeployments/scale") not in grants  # the HPA scales, not us
    assert {"create", "patch"} <= grants[("", "events")]
    assert grants[("", "pods")] == {"list"}  # analysis finds the pods it scrapes
    # blockOwnerDeletion on the children's ownerReference (OwnerReferencesPermissionEnforcement)
    assert grants[("modelship.dev", "modeldeployments/finalizers")] == {"update"}
    assert not any(r in ("secrets", "configmaps", "pods/proxy", "pods/exec") for _, r in grants)


def test_operator_deployment_is_restricted_and_wired_to_its_settings() -> None:
    from modelship_operator.settings import Settings

    docs = deploy_docs()
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    [binding] = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"] == binding["subjects"][0]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # The liveness probe hits kopf's --liveness endpoint.
    [liveness_arg] = [a for a in container["args"] if a.startswith("--liveness=")]
    port = int(re.search(r":(\d+)/", liveness_arg).group(1))  # type: ignore[union-attr]
    probe = container["livenessProbe"]["httpGet"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert liveness_arg.endswith(probe["path"]) and named[probe["port"]] == port
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) == {"MODELSHIP_SERVER_IMAGE", "MODELSHIP_GPU_LABEL_KEY", "MODELSHIP_NAMESPACES",
                        "MODELSHIP_LOG_FORMAT", "MODELSHIP_RESYNC_SECONDS", "MODELSHIP_PROMETHEUS_URL"}
    settings = Settings.from_env(env)  # the shipped values are valid settings
    assert settings.server_image == env["MODELSHIP_SERVER_IMAGE"]
    assert settings.namespaces == ()  # empty: all namespaces


def test_operator_dockerfile_has_no_torch_and_runs_non_root() -> None:
    text = (ROOT / "Dockerfile.operator").read_text()
    assert re.search(r"^FROM python:3\.11|^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim", text, re.M)
    assert '".[operator]"' in text and "server" not in re.findall(r"\.\[(\w+)\]", text)
    assert 'import torch' in text  # the build fails if torch slipped in
    assert re.search(r"^USER \d+", text, re.M)
    assert 'ENTRYPOINT ["python", "-m", "modelship_operator"]' in text


def test_the_api_double_rejects_a_crd_whose_defaults_fail_as_written() -> None:
    """The tests' API server double installs CRDs the way the real one does: not this one."""
    from kube_double import ApiError, ObjectStore

    store = ObjectStore()
    crd_type = store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    broken = schema.load_crd()
    spec_node = broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_node["properties"]["server"]["properties"]["batching"]["default"] = {}
    with pytest.raises(ApiError) as info:
        store.create(crd_type, None, broken)
    assert info.value.status == 422 and "spec.server.batching.default" in info.value.message
    store.create(crd_type, None, schema.load_crd())  # the generated CRD installs
    installed = store.get(crd_type, None, crdgen.CRD_NAME)
    installed_spec = installed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    installed_spec["properties"]["gpu"]["default"] = {"count": 1, "resourceName": "kubernetes.io/gpu"}
    with pytest.raises(ApiError):  # an update is checked too
        store.replace(crd_type, None, crdgen.CRD_NAME, installed)


def test_readme_counts_the_cel_rules(root: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    [count] = re.findall(r"(\d+) CEL\s+rules", readme)
    assert int(count) == len(all_rules(root))


NULLS = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "nulls"},
         "spec": {"model": {"uri": "file:///m/m.pt", "version": "1", "name": None}, "server": None,
                  "autoscaling": None, "rollout": {"analysis": None, "steps": None}, "monitoring": {"drift": None}}}


def test_nulls_are_pruned_or_defaulted_like_the_api_server() -> None:
    """A null in a non-nullable field: dropped, or replaced by the field's default (what a
    v1.36.2 API server stored for this body in a dry-run create, compared field by field)."""
    stored = schema.defaulted(NULLS)["spec"]
    assert "name" not in stored["model"] and "autoscaling" not in stored
    assert stored["server"]["batching"]["maxQueue"] == 2048 and stored["rollout"]["steps"] == []
    assert stored["rollout"]["analysis"]["interval"] == "30s" and stored["monitoring"]["drift"]["window"] == 1000
    assert schema.validate(NULLS) == []
