"""Header routes with the real operator (`python -m modelship_operator`, kopf, watch caches)
against the HTTP API server double, with an HTTPRoute CRD built from the Gateway API schema
pinned in test_header_routes (the double prunes what it does not declare, so a rendered field
outside it would show as drift and be applied forever). A rollout of [setHeaderRoute, setWeight
10, pause {}]: the HTTPRoute gets the header rule, keeps it through the pause and across an
operator restart (nothing rewritten), `kubectl modelship status` lists it, and an abort through
the CLI takes it out.

No Gateway controller runs here: the HTTPRoute the API server stores is what is checked, no
request is routed through a gateway.
"""
from __future__ import annotations

import copy
import io
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from apiserver_double import ApiServerDouble
from modelship_operator.cli import main as cli_main
from modelship_operator.kube import Kube
from test_e2e import MD, ROOT, Env, free_port, install_crd
from test_header_routes import GATEWAY_HTTPROUTE_SPEC, gateway_errors

NAME = "fraud"
HTTPROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")
STEPS = [{"setHeaderRoute": {"name": "beta", "match": [
    {"headerName": "X-User-Group", "headerValue": {"exact": "beta"}},
    {"cookieName": "ab", "cookieValue": {"prefix": "b"}}]}},
    {"setWeight": 10}, {"pause": {}}]


def _structural(node: Any) -> Any:
    """The pinned schema as a CRD may hold it: no `additionalProperties: false` (pruning does that)."""
    if isinstance(node, dict):
        return {k: _structural(v) for k, v in node.items() if not (k == "additionalProperties" and v is False)}
    if isinstance(node, list):
        return [_structural(v) for v in node]
    return node


def httproute_crd() -> dict[str, Any]:
    spec = _structural(GATEWAY_HTTPROUTE_SPEC)
    spec["properties"]["parentRefs"]["items"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    spec["properties"]["rules"]["items"]["properties"]["filters"]["items"] = {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "httproutes.gateway.networking.k8s.io",  # a protected group: approval required
                     "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api"}},
        "spec": {
            "group": "gateway.networking.k8s.io", "scope": "Namespaced",
            "names": {"kind": "HTTPRoute", "listKind": "HTTPRouteList", "plural": "httproutes",
                      "singular": "httproute"},
            "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                              "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                              "metadata": {"type": "object"}, "spec": spec,
                              "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}],
        },
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("e2e-header-routes")
    double = ApiServerDouble()
    double.start()
    e = Env(kubeconfig=double.write_kubeconfig(tmp / "kubeconfig"), namespace="ml", double=double,
            log_path=tmp / "operator.log", liveness=f"http://127.0.0.1:{free_port()}/healthz")

    async def setup(kube: Kube) -> None:
        await install_crd(kube)
        await kube.create(httproute_crd())
        await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": e.namespace}})
    e.call(setup)
    e.environ = dict(os.environ, MODELSHIP_NAMESPACES=e.namespace, MODELSHIP_LOG_FORMAT="json",
                     MODELSHIP_RESYNC_SECONDS="2", MODELSHIP_SERVER_IMAGE="ghcr.io/modelship/server:e2e")
    e.start_operator()
    try:
        yield e
    finally:
        assert e.process is not None
        e.process.terminate()
        e.process.wait(15)
        double.stop()


def _cli(env: Env, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main([*argv, "-n", env.namespace, "--kubeconfig", str(env.kubeconfig)], env={}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def _mark_available(k: Kube, env: Env) -> None:
    """The Deployment controller: every Deployment of the ModelDeployment is available."""
    assert env.double is not None
    for dep in await k.list("apps/v1", "Deployment", env.namespace, {"app.kubernetes.io/instance": NAME}):
        env.double.mark_deployment_available(env.namespace, dep["metadata"]["name"])


def _header_rules(route: dict | None) -> list[dict]:
    return [r for r in ((route or {}).get("spec") or {}).get("rules", ()) if r.get("matches")]


def _status(k_md: dict | None) -> dict:
    return (k_md or {}).get("status") or {}


def test_a_header_route_is_applied_kept_and_listed(env: Env) -> None:
    env.wait_live()
    body = yaml.safe_load((ROOT / "examples" / "ab-header-route.yaml").read_text())
    body["spec"]["rollout"]["steps"] = copy.deepcopy(STEPS)
    body["spec"]["gpu"] = {"count": 0}
    env.call(lambda k: k.create(body))

    async def healthy(k: Kube) -> dict | None:
        await _mark_available(k, env)
        md = await k.get(*MD, env.namespace, NAME)
        return md if _status(md).get("phase") == "Healthy" else None
    md = env.eventually(healthy, "the first version Healthy")
    assert md["status"]["trafficMode"] == "gateway"

    env.call(lambda k: k.patch(*MD, env.namespace, NAME, {"spec": {"model": {
        "uri": "s3://ml-models/fraud/1.6.0/model.pt2", "version": "1.6.0"}}}))

    async def routed(k: Kube) -> dict | None:
        await _mark_available(k, env)
        route = await k.get(*HTTPROUTE, env.namespace, NAME)
        return route if _header_rules(route) else None
    route = env.eventually(routed, "the header rule on the HTTPRoute")
    assert gateway_errors(route) == []
    (rule,) = _header_rules(route)
    assert rule["backendRefs"] == [{"name": "fraud-canary", "port": 8080, "weight": 100}]
    assert rule["matches"][0]["headers"][0] == {"name": "X-User-Group", "type": "Exact", "value": "beta"}
    assert route["spec"]["rules"][0] == rule and "matches" not in route["spec"]["rules"][1]  # ahead of the weighted one

    async def at_step_1(k: Kube) -> dict | None:
        md = await k.get(*MD, env.namespace, NAME)
        canary = _status(md).get("canary") or {}
        return md if canary.get("step") == 1 and canary.get("headerRoutes") == ["beta"] else None
    env.eventually(at_step_1, "status.canary at step 2 with the route")

    code, out, err = _cli(env, "promote", NAME)  # past setWeight 10 (no traffic here to analyse)
    assert code == 0, err

    async def paused(k: Kube) -> dict | None:
        md = await k.get(*MD, env.namespace, NAME)
        return md if _status(md).get("phase") == "Paused" and _status(md)["canary"]["step"] == 2 else None
    env.eventually(paused, "the manual pause")
    code, out, err = _cli(env, "status", NAME)
    assert code == 0, err
    assert "  Header routes (matching requests go to the canary):\n    beta: header X-User-Group=beta, cookie ab^=b\n" \
        in out, out


def test_an_operator_restart_rewrites_nothing_and_keeps_the_route(env: Env) -> None:
    before = env.call(lambda k: k.get(*HTTPROUTE, env.namespace, NAME))
    assert len(_header_rules(before)) == 1
    assert env.process is not None
    env.process.terminate()
    env.process.wait(15)
    env.start_operator()
    env.wait_live()
    time.sleep(5)  # > two resyncs of the new operator
    after = env.call(lambda k: k.get(*HTTPROUTE, env.namespace, NAME))
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], env.log_tail()
    md = env.call(lambda k: k.get(*MD, env.namespace, NAME))
    assert md["status"]["canary"]["headerRoutes"] == ["beta"] and md["status"]["phase"] == "Paused"


def test_abort_through_the_cli_takes_the_route_out(env: Env) -> None:
    code, out, err = _cli(env, "abort", NAME)
    assert code == 0, err

    async def aborted(k: Kube) -> dict | None:  # the children are applied before the status is written
        md = await k.get(*MD, env.namespace, NAME)
        return md if (_status(md).get("canary") or {}).get("aborted") else None
    md = env.eventually(aborted, "status.canary.aborted")
    assert "headerRoutes" not in md["status"]["canary"]
    route = env.call(lambda k: k.get(*HTTPROUTE, env.namespace, NAME))
    (rule,) = route["spec"]["rules"]  # the header rule went with the same reconcile, before the status
    assert {b["name"]: b["weight"] for b in rule["backendRefs"]}.get("fraud-canary", 0) == 0
    code, out, err = _cli(env, "status", NAME)
    assert "Header routes" not in out and "ABORTED" in out
    lines = env.log_lines()
    assert [line for line in lines if line["level"] in ("error", "critical") or "exception" in line] == []
