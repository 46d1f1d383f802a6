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

from modelship_operator.plan import DeploymentState, Observed, plan
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


def _render_case(case: str) -> list[dict]:
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
        servicemonitor_served=bool(observed.get("servicemonitorServed")),
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
