"""Golden render tests: a ModelDeployment (golden/<case>/input.yaml) renders exactly the
manifests in golden/<case>/expected.yaml, and each validates against Kubernetes' schemas.

Regenerate after an intended change with MODELSHIP_UPDATE_GOLDEN=1 and review the diff:
the expected files are the specification of what the operator applies.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from modelship_operator import analysis
from modelship_operator.planning import DeploymentState, Observed, plan
from modelship_operator.render import APPLIED_HASH, applied_hash, render, to_yaml
from modelship_operator.schema import validate as validate_crd
from modelship_operator.settings import Settings
from modelship_operator.spec import ModelDeployment

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").is_file())
K8S_VERSION = "1.34"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Not core Kubernetes kinds: kubernetes-validate has no schema for the Prometheus
# Operator's or the Gateway API's CRDs, so their shape is pinned by the golden files alone
# (and, for the HTTPRoute, by test_httproute_follows_the_gateway_api_shape below).
NOT_CORE = {"ServiceMonitor", "HTTPRoute"}


def _render_case(case: str, servicemonitor_served: bool | None = None) -> list[dict]:
    body = yaml.safe_load((GOLDEN / case / "input.yaml").read_text())
    assert validate_crd(body) == [], "golden inputs must be valid ModelDeployments"
    observed_file = GOLDEN / case / "observed.yaml"
    observed = yaml.safe_load(observed_file.read_text()) if observed_file.is_file() else {}
    md = ModelDeployment.from_body(body)
    deployments = tuple(
        DeploymentState(d["name"], d["revision"], d["role"], d["replicas"], d["readyReplicas"], d["readyReplicas"],
                        d["replicas"], 1, 1)
        for d in observed.get("deployments") or ()
    )
    obs = Observed(
        deployments=deployments,
        servicemonitor_served=bool(observed.get("servicemonitorServed")) if servicemonitor_served is None
        else servicemonitor_served,
        httproute_served=bool(observed.get("httprouteServed")),
    )
    return render(plan(md, obs, Settings(), NOW))


def test_every_required_case_exists() -> None:
    assert {"cpu", "gpu-type", "mig", "autoscaling", "pvc-model", "http-model"} <= set(CASES)
    assert {"canary-replicas", "canary-gateway"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_render_matches_golden(case: str) -> None:
    manifests = _render_case(case)
    expected_file = GOLDEN / case / "expected.yaml"
    if os.environ.get("MODELSHIP_UPDATE_GOLDEN") == "1":
        expected_file.write_text(to_yaml(manifests))
    assert expected_file.is_file(), f"no {expected_file}: run with MODELSHIP_UPDATE_GOLDEN=1 and review it"
    expected = list(yaml.safe_load_all(expected_file.read_text()))
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        (m["kind"], m["metadata"]["name"]) for m in expected
    ]
    for got, want in zip(manifests, expected):
        assert got == want, f"{got['kind']}/{got['metadata']['name']} differs from {expected_file}"
    # Byte-identical text too: the files are what `kubectl modelship render` prints.
    assert to_yaml(manifests) == expected_file.read_text()


@pytest.mark.parametrize("case", CASES)
def test_rendered_manifests_validate_against_kubernetes(case: str) -> None:
    for manifest in _render_case(case):
        if manifest["kind"] in NOT_CORE:
            continue
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_render_is_deterministic_and_hash_annotated(case: str) -> None:
    first, second = _render_case(case), _render_case(case)
    assert to_yaml(first) == to_yaml(second)
    for manifest in first:
        meta = manifest["metadata"]
        assert meta["annotations"][APPLIED_HASH] == applied_hash(manifest)
        assert meta["namespace"] == "ml"
        owner = meta["ownerReferences"][0]
        assert owner["kind"] == "ModelDeployment" and owner["controller"] is True
        assert owner["blockOwnerDeletion"] is True and owner["uid"].startswith("6f1c2a3e-")


def test_strict_validation_catches_a_broken_manifest() -> None:
    """The Kubernetes check above is not vacuous: a misspelt field fails it."""
    deployment = _render_case("cpu")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_httproute_follows_the_gateway_api_shape() -> None:
    """The fields of gateway.networking.k8s.io/v1 HTTPRoute we set, with their API types."""
    manifests = {(m["kind"], m["metadata"]["name"]): m for m in _render_case("canary-gateway")}
    route = manifests[("HTTPRoute", "fraud")]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways", "sectionName": "https"}]
    (rule,) = route["spec"]["rules"]
    weights = {b["name"]: b["weight"] for b in rule["backendRefs"]}
    assert weights == {"fraud-stable": 75, "fraud-canary": 25}
    assert all(b["port"] == 8080 and set(b) == {"name", "port", "weight"} for b in rule["backendRefs"])
    (mirror,) = rule["filters"]
    assert mirror == {"type": "RequestMirror",
                      "requestMirror": {"backendRef": {"name": "fraud-canary", "port": 8080}, "percent": 10}}
    # Each role Service selects its revision's pods by hash; the Deployments' pods carry it.
    for role in ("stable", "canary"):
        service = manifests[("Service", f"fraud-{role}")]
        revision = service["spec"]["selector"]["modelship.dev/revision"]
        deployment = manifests[("Deployment", f"fraud-{revision}")]
        assert deployment["metadata"]["labels"]["modelship.dev/role"] == role
        assert deployment["spec"]["template"]["metadata"]["labels"]["modelship.dev/revision"] == revision


def _selects(selector: dict, labels: dict) -> bool:
    """A metav1.LabelSelector (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist)
    or a plain Service selector, applied to one object's labels."""
    structured = "matchLabels" in selector or "matchExpressions" in selector
    match = selector.get("matchLabels", {}) if structured else selector
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions", ()):
        key, op, values = expr["key"], expr["operator"], expr.get("values", ())
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


@pytest.mark.parametrize("case", CASES)
def test_feedback_peers_resolve_to_the_pods_of_every_revision(case: str) -> None:
    """The headless `<name>-peers` Service's DNS name is what each server gets as
    MODELSHIP_FEEDBACK_PEERS, and its endpoints are the pods of every Deployment rendered
    (stable and canary alike) and nothing else of this ModelDeployment."""
    manifests = _render_case(case)
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    services = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Service"}
    name = yaml.safe_load((GOLDEN / case / "input.yaml").read_text())["metadata"]["name"]
    peers = services.get(f"{name}-peers")
    envs = [{e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
            for d in deployments]
    feedback_on = [env.get("MODELSHIP_FEEDBACK_MAX_ENTRIES", "1") != "0" for env in envs]
    if not any(feedback_on):
        assert peers is None and all("MODELSHIP_FEEDBACK_PEERS" not in env for env in envs)
        return
    assert peers is not None
    spec = peers["spec"]
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is False
    address = f"{name}-peers.{peers['metadata']['namespace']}.svc.cluster.local:{spec['ports'][0]['port']}"
    for deployment, env, on in zip(deployments, envs, feedback_on):
        pod = deployment["spec"]["template"]
        assert _selects(spec["selector"], pod["metadata"]["labels"])
        assert _selects(deployment["spec"]["selector"], pod["metadata"]["labels"])
        # The port the peers are asked on is the server's own port (headless: no port mapping).
        (port,) = [p for p in pod["spec"]["containers"][0]["ports"] if p["name"] == spec["ports"][0]["targetPort"]]
        assert port["containerPort"] == spec["ports"][0]["port"]
        assert env.get("MODELSHIP_FEEDBACK_PEERS") == (address if on else None)
    # The selector is exactly the instance's pods: another ModelDeployment's pods are not peers.
    other = dict(deployments[0]["spec"]["template"]["metadata"]["labels"], **{"app.kubernetes.io/instance": "other"})
    assert not _selects(spec["selector"], other)


def test_no_feedback_means_no_peers_service() -> None:
    kinds = [(m["kind"], m["metadata"]["name"]) for m in _render_case("monitoring")]
    assert ("Service", "digits") in kinds and ("Service", "digits-peers") not in kinds


def test_the_service_monitor_scrapes_each_pod_through_one_service_only() -> None:
    """Every server pod is scraped exactly once: through `<name>` in replicas mode, through its
    role Service in gateway mode (where `<name>` selects the stable alone); never through the
    headless `<name>-peers` too (each pod would be counted twice)."""
    for case in ("autoscaling", "canary-replicas", "canary-gateway"):
        manifests = _render_case(case, servicemonitor_served=True)
        (monitor,) = [m for m in manifests if m["kind"] == "ServiceMonitor"]
        scraped = [m for m in manifests
                   if m["kind"] == "Service" and _selects(monitor["spec"]["selector"], m["metadata"]["labels"])]
        pods = [d["spec"]["template"]["metadata"]["labels"] for d in manifests if d["kind"] == "Deployment"]
        assert len(pods) >= (2 if case.startswith("canary") else 1)
        for labels in pods:
            through = [s["metadata"]["name"] for s in scraped if _selects(s["spec"]["selector"], labels)]
            assert len(through) == 1, (case, labels, through)


def test_the_service_monitor_labels_series_with_what_the_analysis_selects_by() -> None:
    """The PromQL analysis selects a revision's series by `modeldeployment` and `revision`
    (analysis.SERIES_LABELS); the ServiceMonitor copies them from the pod labels."""
    manifests = _render_case("canary-gateway", servicemonitor_served=True)
    (monitor,) = [m for m in manifests if m["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabel == {"modeldeployment": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                       "revision": ["__meta_kubernetes_pod_label_modelship_dev_revision"]}
    assert set(analysis.SERIES_LABELS.values()) == set(relabel)
    for deployment in (m for m in manifests if m["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert set(analysis.SERIES_LABELS) <= set(labels)  # the pods carry what is copied
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert endpoint["port"] in [p["name"] for p in container["ports"]]
    # the interval follows the operator's setting (the query windows are sized from it)
    body = yaml.safe_load((GOLDEN / "autoscaling" / "input.yaml").read_text())
    desired = plan(ModelDeployment.from_body(body), Observed(servicemonitor_served=True),
                   Settings(prometheus_scrape_interval=15.0), NOW)
    (monitor,) = [m for m in render(desired) if m["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"


def test_the_name_service_does_not_bypass_the_gateway_weights() -> None:
    """Gateway mode: `<name>` (status.url) selects the stable revision only; the canary gets
    traffic through the HTTPRoute's weighted backendRefs alone."""
    manifests = _render_case("canary-gateway")
    pods = {d["metadata"]["labels"]["modelship.dev/role"]: d["spec"]["template"]["metadata"]["labels"]
            for d in manifests if d["kind"] == "Deployment"}
    (service,) = [m for m in manifests if m["kind"] == "Service" and m["metadata"]["name"] == "fraud"]
    assert _selects(service["spec"]["selector"], pods["stable"])
    assert not _selects(service["spec"]["selector"], pods["canary"])
    # replicas mode: one Service over every revision (the replica split is the weight)
    manifests = _render_case("canary-replicas")
    (service,) = [m for m in manifests if m["kind"] == "Service" and m["metadata"]["name"] == "fraud"]
    assert all(_selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
               for d in manifests if d["kind"] == "Deployment")
