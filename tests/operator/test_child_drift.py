"""drift.difference: does a live object (as the API server stores it) still hold what we apply?"""
from __future__ import annotations

from decimal import Decimal

import pytest

from modelship_operator.drift import difference, drifted, quantity
from server_defaults import apply_defaults

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "m", "namespace": "ml", "labels": {"a": "1"},
                 "ownerReferences": [{"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
                                      "name": "m", "uid": "u1", "controller": True}]},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"a": "1"}},
        "template": {
            "metadata": {"labels": {"a": "1"}},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [{
                    "name": "server", "image": "img:1",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "resources": {"requests": {"cpu": "1000m", "memory": "1024Mi"}, "limits": {"cpu": 2}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp", "readOnly": False}],
                }],
                "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1024Mi"}}],
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
            },
        },
    },
}


def live_of(desired: dict) -> dict:
    """What a real API server returns for `desired`: defaulted, quantities canonical, bools
    that are false dropped, plus bookkeeping."""
    import copy
    live = copy.deepcopy(desired)
    apply_defaults(live["apiVersion"], live["kind"], live)
    live["metadata"].update(uid="x", resourceVersion="7", generation=1, managedFields=[{"manager": "m"}])
    live["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0].pop("readOnly")
    live["status"] = {"replicas": 2}
    return live


def test_a_defaulted_live_object_holds_what_we_apply() -> None:
    live = live_of(DEPLOYMENT)
    assert live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert live["spec"]["revisionHistoryLimit"] == 10 and live["spec"]["strategy"]["type"] == "RollingUpdate"
    assert drifted(DEPLOYMENT, live) is None


@pytest.mark.parametrize(("path", "value", "where"), [
    (("spec", "replicas"), 0, ".spec.replicas"),
    (("spec", "template", "spec", "containers", 0, "image"), "evil", ".spec.template.spec.containers[name=server].image"),
    (("spec", "template", "spec", "containers", 0, "env", 1, "value"), "3",
     ".spec.template.spec.containers[name=server].env[name=B].value"),
    (("spec", "template", "spec", "containers", 0, "resources", "requests", "cpu"), "2",
     ".spec.template.spec.containers[name=server].resources.requests.cpu"),
    (("spec", "template", "spec", "automountServiceAccountToken"), True,
     ".spec.template.spec.automountServiceAccountToken"),
    (("metadata", "labels", "a"), "2", ".metadata.labels.a"),
    (("spec", "template", "spec", "tolerations", 0, "key"), "other", ".spec.template.spec.tolerations[0].key"),
])
def test_a_changed_field_of_ours_is_a_difference(path: tuple, value: object, where: str) -> None:
    live = live_of(DEPLOYMENT)
    node = live
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert drifted(DEPLOYMENT, live) == where


def test_removed_items_and_fields_are_differences() -> None:
    live = live_of(DEPLOYMENT)
    live["spec"]["template"]["spec"]["containers"][0]["env"].pop(0)
    assert drifted(DEPLOYMENT, live) == ".spec.template.spec.containers[name=server].env[name=A]"
    live = live_of(DEPLOYMENT)
    del live["metadata"]["ownerReferences"]
    assert drifted(DEPLOYMENT, live) == ".metadata.ownerReferences"
    live = live_of(DEPLOYMENT)
    live["spec"]["template"]["spec"]["tolerations"].append({"key": "x", "operator": "Exists"})
    assert drifted(DEPLOYMENT, live) == ".spec.template.spec.tolerations"  # atomic list: ours replaces it


def test_what_others_add_is_theirs() -> None:
    """Items of associative lists, map keys and fields we never apply: server-side apply keeps
    them, so they are no difference (else every reconcile would write, forever)."""
    live = live_of(DEPLOYMENT)
    live["metadata"]["labels"]["team"] = "x"
    live["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "3"
    live["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "INJECTED", "value": "1"})
    live["spec"]["template"]["spec"]["containers"].append({"name": "istio-proxy", "image": "proxy"})
    live["spec"]["template"]["metadata"]["labels"]["sidecar"] = "yes"
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    assert drifted(DEPLOYMENT, live) is None


def test_selectors_are_atomic() -> None:
    live = live_of(DEPLOYMENT)
    live["spec"]["selector"]["matchLabels"]["extra"] = "1"
    assert drifted(DEPLOYMENT, live) == ".spec.selector.matchLabels"
    service = {"spec": {"selector": {"a": "1"}}}
    assert difference(service, {"spec": {"selector": {"a": "1", "b": "2"}}}) == ".spec.selector"
    assert difference(service, {"spec": {"selector": {"a": "1"}, "clusterIP": "10.0.0.1"}}) is None


def test_zero_values_match_absent_fields_but_not_other_values() -> None:
    assert difference({"a": False, "b": 0, "c": "", "d": {}, "e": []}, {}) is None
    assert difference({"a": False}, {"a": True}) == ".a"
    assert difference({"a": 0}, {"a": 1}) == ".a"
    assert difference({"a": True}, {}) == ".a"
    assert difference({"a": 1}, {"a": True}) == ".a"  # a bool is not a number
    assert difference({"a": 1}, {"a": "1"}) == ".a"


def test_quantities_compare_by_value() -> None:
    assert quantity("1000m") == quantity("1") == quantity(1) == Decimal(1)
    assert quantity("1024Mi") == quantity("1Gi")
    assert quantity("1e3") == quantity("1k") == 1000
    assert quantity("fast") is None
    res = {"resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}}
    assert difference(res, {"resources": {"requests": {"cpu": "0.5"}, "limits": {"memory": "1024Mi"}}}) is None
    assert difference(res, {"resources": {"requests": {"cpu": "0.6"}, "limits": {"memory": "1Gi"}}}) \
        == ".resources.requests.cpu"
    # Outside a quantity field, strings compare as strings.
    assert difference({"name": "1000m"}, {"name": "1"}) == ".name"
