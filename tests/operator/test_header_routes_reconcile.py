"""Header routes through reconcile() against the in-memory API double (server-side apply, field
ownership, status subresource), and `kubectl modelship status` over HTTP against the API server
double: a rollout of [setHeaderRoute, setWeight 10, pause {}] applies the header rule, keeps it
through the pause, removes it on promote and on abort, and rebuilds it identically from nothing
but the cluster's objects after a lost status.

No Gateway controller runs in the tests (nor in the local control plane), so no request is routed
through a real gateway: the HTTPRoute the API server stores is what is checked.
"""
from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest

from kube_double import ResourceType
from modelship_operator.cli import format_status, header_route_lines, main
from modelship_operator.planning import ABORT_ANNOTATION, PROMOTE_ANNOTATION
from modelship_operator.schema import load_crd
from test_header_routes import gateway_errors
from test_reconcile import NS, Cluster, cluster, example  # noqa: F401 (fixture)

HTTPROUTE = ResourceType("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
STEPS = [{"setHeaderRoute": {"name": "beta", "match": [
    {"headerName": "X-User-Group", "headerValue": {"exact": "beta"}},
    {"cookieName": "ab", "cookieValue": {"prefix": "b"}}]}},
    {"setWeight": 10}, {"pause": {}}]
MERGE = "application/merge-patch+json"


def _ab(c: Cluster, steps: list | None = None) -> None:
    c.kube.store.register(HTTPROUTE)
    body = example("ab-header-route.yaml")
    body["spec"]["rollout"]["steps"] = copy.deepcopy(STEPS if steps is None else steps)
    c.create(body)
    _settle(c)
    assert c.md("fraud")["status"]["trafficMode"] == "gateway"


def _settle(c: Cluster) -> None:
    for _ in range(8):
        for dep in c.deployments():
            c.available(dep["metadata"]["name"])
        if not c.reconcile("fraud").wrote:
            return
    raise AssertionError("reconcile did not settle")


def _new_version(c: Cluster) -> None:
    c.patch_spec("fraud", {"model": {"uri": "s3://ml-models/fraud/1.6.0/model.pt2", "version": "1.6.0"}})
    _settle(c)


def _route(c: Cluster) -> dict:
    (hr,) = c.children("HTTPRoute", "gateway.networking.k8s.io/v1")
    return hr


def _header_rules(c: Cluster) -> list[dict]:
    return [r for r in _route(c)["spec"]["rules"] if r.get("matches")]


def _act(c: Cluster, annotation: str, value: str) -> None:
    c.kube.store.patch(c.md_type, NS, "fraud", MERGE, {"metadata": {"annotations": {annotation: value}}})


def test_the_rule_is_applied_kept_through_the_pause_and_removed_on_promote(cluster: Cluster) -> None:  # noqa: F811
    _ab(cluster)
    assert _header_rules(cluster) == []
    _new_version(cluster)
    status = cluster.md("fraud")["status"]
    assert status["canary"]["step"] == 1 and status["canary"]["headerRoutes"] == ["beta"]
    (rule,) = _header_rules(cluster)
    assert rule["backendRefs"] == [{"name": "fraud-canary", "port": 8080, "weight": 100}]
    assert [h["name"] for h in rule["matches"][0]["headers"]] == ["X-User-Group", "Cookie"]
    assert gateway_errors(_route(cluster)) == []
    assert any(e["reason"] == "RolloutStep" and "setWeight 10" in e["message"]
               for e in cluster.kube.events_for("fraud"))

    _act(cluster, PROMOTE_ANNOTATION, "step@1")  # past setWeight 10 (no traffic here to analyse)
    _settle(cluster)
    status = cluster.md("fraud")["status"]
    assert status["canary"]["step"] == 2 and status["phase"] == "Paused"
    assert status["canary"]["headerRoutes"] == ["beta"] and len(_header_rules(cluster)) == 1
    mark = len(cluster.kube.writes)
    assert not cluster.reconcile("fraud").wrote and cluster.kube.writes_since(mark) == []  # a steady pause

    _act(cluster, PROMOTE_ANNOTATION, "step@2")
    _settle(cluster)
    status = cluster.md("fraud")["status"]
    assert "canary" not in status and status["stable"]["version"] == "1.6.0"
    assert _header_rules(cluster) == []
    (rule,) = _route(cluster)["spec"]["rules"]
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [("fraud-stable", 100)]


def test_abort_removes_the_rule_in_the_same_reconcile(cluster: Cluster) -> None:  # noqa: F811
    _ab(cluster)
    _new_version(cluster)
    assert len(_header_rules(cluster)) == 1
    _act(cluster, ABORT_ANNOTATION, "abort@1")
    result = cluster.reconcile("fraud")
    assert any(a.startswith("HTTPRoute/") for a in result.applied)
    assert _header_rules(cluster) == []
    (rule,) = _route(cluster)["spec"]["rules"]
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [("fraud-stable", 100), ("fraud-canary", 0)]
    status = cluster.md("fraud")["status"]
    assert status["canary"]["aborted"] and "headerRoutes" not in status["canary"]
    _settle(cluster)
    assert _header_rules(cluster) == []


def test_a_lost_status_rebuilds_the_same_route_without_rewriting_it(cluster: Cluster) -> None:  # noqa: F811
    """A fresh operator state: nothing but the cluster's objects. The status is wiped (as a restore
    without status would), and the next reconcile -- fresh discovery, no memory -- recovers the
    rollout from the Deployments' records and renders the same HTTPRoute, so it does not touch it."""
    _ab(cluster)
    _new_version(cluster)
    _act(cluster, PROMOTE_ANNOTATION, "step@1")
    _settle(cluster)
    before = _route(cluster)
    cluster.kube.store.set_status(cluster.md_type, NS, "fraud", {})
    result = cluster.reconcile("fraud")
    assert "RolloutStateRecovered" in [e.reason for e in result.events]
    assert not any(a.startswith("HTTPRoute/") for a in result.applied)
    after = _route(cluster)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    status = cluster.md("fraud")["status"]
    assert status["canary"]["step"] == 2 and status["canary"]["headerRoutes"] == ["beta"]


def test_auto_without_the_httproute_crd_holds_at_the_step(cluster: Cluster) -> None:  # noqa: F811
    body = example("ab-header-route.yaml")  # traffic auto; the API double serves no HTTPRoute
    cluster.create(body)
    _settle(cluster)
    assert cluster.md("fraud")["status"]["trafficMode"] == "replicas"
    _new_version(cluster)
    status = cluster.md("fraud")["status"]
    assert status["canary"]["step"] == 0 and status["phase"] == "Paused"
    assert "HTTPRoute CRD" in status["canary"]["holdReason"]
    warnings = [e for e in cluster.kube.events_for("fraud") if e["reason"] == "HeaderRoutesUnavailable"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning" and warnings[0].get("count", 1) == 1
    assert status["canary"]["requestedWeight"] == 0 and "headerRoutes" not in status["canary"]
    assert not cluster.reconcile("fraud").wrote  # held: nothing more to write, no second Warning


# --------------------------------------------------------------------------- kubectl modelship status


def _status_over_http(tmp_path: Path, obj: dict[str, Any]) -> str:
    from apiserver_double import ApiServerDouble

    server = ApiServerDouble()
    server.start()
    try:
        store = server.store

        def seed() -> None:
            store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None, load_crd())
            store.create(store.type_for("v1", "Namespace"), None, {"metadata": {"name": NS}})
            rtype = store.type_for("modelship.dev/v1alpha1", "ModelDeployment")
            store.create(rtype, NS, {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                                     "metadata": {"name": "fraud", "namespace": NS}, "spec": obj["spec"]})
            store.set_status(rtype, NS, "fraud", obj["status"])

        server.call(seed)
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        out, err = io.StringIO(), io.StringIO()
        code = main(["status", "fraud", "--kubeconfig", str(kubeconfig)], env={}, stdout=out, stderr=err)
        assert code == 0, err.getvalue()
        return out.getvalue()
    finally:
        server.stop()


def test_status_shows_the_active_header_routes(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    _ab(cluster, [*STEPS[:1], {"setHeaderRoute": {"name": "ids", "match": [
        {"headerName": "X-Customer", "headerValue": {"regex": "1[0-9]{3}"}}]}}, *STEPS[1:]])
    _new_version(cluster)
    text = _status_over_http(tmp_path, cluster.md("fraud"))
    assert "  Header routes (matching requests go to the canary):\n" \
           "    beta: header X-User-Group=beta, cookie ab^=b\n" \
           "    ids: header X-Customer=~1[0-9]{3}\n" in text
    _act(cluster, ABORT_ANNOTATION, "abort@1")
    _settle(cluster)
    assert "Header routes" not in format_status(cluster.md("fraud"))


def test_header_route_lines_take_the_conditions_from_the_step_that_last_set_the_route() -> None:
    spec = {"rollout": {"steps": [
        {"setHeaderRoute": {"name": "beta", "match": [{"headerName": "X-G", "headerValue": {"exact": "a"}}]}},
        {"setWeight": 10},
        {"setHeaderRoute": {"name": "beta", "match": [{"cookieName": "ab", "cookieValue": {"prefix": "b"}}]}},
        {"pause": {}},
        {"setHeaderRoute": {"name": "beta", "match": [{"headerName": "X-G", "headerValue": {"exact": "z"}}]}}]}}
    assert header_route_lines(spec, {"step": 2, "headerRoutes": ["beta"]}) == ["beta: header X-G=a"]
    assert header_route_lines(spec, {"step": 3, "headerRoutes": ["beta"]}) == ["beta: cookie ab^=b"]
    assert header_route_lines(spec, {"step": 3, "headerRoutes": ["gone"]}) == ["gone: (not in the current spec)"]
    assert header_route_lines(spec, {"step": 3}) == []


@pytest.mark.parametrize("steps", [[{"setWeight": 10}]])
def test_status_without_routes_has_no_header_route_section(steps: list) -> None:
    obj = {"metadata": {"name": "fraud", "namespace": NS}, "spec": {"rollout": {"steps": steps}},
           "status": {"phase": "Progressing", "canary": {"step": 0, "weight": 10, "hash": "abc"}}}
    assert "Header routes" not in format_status(obj)
