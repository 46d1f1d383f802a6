"""The traffic mode: decided by the spec and discovery, fixed for the life of a rollout, and
never flipped away from gateway by one wrong "HTTPRoute not served" answer. Pure plan tables on
the World of test_rollout (the plan, the renderer and a converging Deployment controller)."""
from __future__ import annotations

import copy

from modelship_operator.planning import Observed
from modelship_operator.planning.traffic import traffic_mode
from modelship_operator.render import render
from modelship_operator.spec import ModelDeployment
from test_rollout import World, spec, start_canary


def gateway_spec(**kw: object) -> dict:
    return spec(traffic="auto", gateway={"parentRefs": [{"name": "public"}], "hostnames": ["fraud.example.com"]},
                **kw)


def children(w: World) -> set[tuple[str, str]]:
    assert w.last is not None
    return {(m["kind"], m["metadata"]["name"]) for m in render(w.last)}


GATEWAY_CHILDREN = {("Service", "fraud-stable"), ("Service", "fraud-canary"), ("HTTPRoute", "fraud")}


def test_a_wrong_not_served_answer_mid_rollout_keeps_gateway_mode_and_its_services() -> None:
    w = World(gateway_spec(steps=[{"setWeight": 25}, {"pause": {}}]), httproute=True)
    w.settle()
    start_canary(w)
    assert w.status["trafficMode"] == "gateway" and GATEWAY_CHILDREN <= children(w)
    replicas = w.replicas()

    w.httproute = False  # discovery answers "not served" once (the HTTPRoute is still there)
    w.settle()
    assert w.status["trafficMode"] == "gateway"
    assert GATEWAY_CHILDREN <= children(w)  # the role Services the live route sends to stay
    assert w.replicas() == replicas  # no replica split: the stable keeps every pod
    assert [b.service for b in w.last.route.backends] == ["fraud-stable", "fraud-canary"]


def test_a_gateway_object_stays_in_gateway_mode_between_rollouts() -> None:
    w = World(gateway_spec(steps=[]), httproute=True)
    w.settle()
    assert w.status["trafficMode"] == "gateway"
    w.httproute = False
    w.settle()
    assert w.status["trafficMode"] == "gateway" and ("Service", "fraud-stable") in children(w)


def test_a_replicas_rollout_stays_replicas_when_the_gateway_api_appears_meanwhile() -> None:
    w = World(gateway_spec(steps=[{"setWeight": 50}, {"pause": {}}]), httproute=False)
    w.settle()
    assert w.status["trafficMode"] == "replicas"
    start_canary(w)
    split = w.replicas()
    assert split == {"stable": 2, "canary": 2}

    w.httproute = True  # installed mid-rollout: the running rollout keeps splitting replicas
    w.settle()
    assert w.status["trafficMode"] == "replicas" and w.last.route is None and w.replicas() == split
    assert not GATEWAY_CHILDREN & children(w)


def test_the_spec_decides_first() -> None:
    def mode(rollout: dict, served: bool, previous: dict | None = None, in_rollout: bool = False) -> str:
        body = {"metadata": {"name": "fraud", "namespace": "ml"},
                "spec": {"model": {"uri": "pvc://m/model.pt", "version": "1"}, "rollout": rollout}}
        return traffic_mode(ModelDeployment.from_body(copy.deepcopy(body)), Observed(httproute_served=served),
                            previous, rollout=in_rollout)

    gateway = {"parentRefs": [{"name": "public"}]}
    assert mode({}, True) == "replicas"  # no gateway to attach to
    assert mode({"gateway": gateway}, True) == "gateway"
    assert mode({"gateway": gateway}, False) == "replicas"  # never used gateway: falls back
    assert mode({"gateway": gateway}, False, {"trafficMode": "gateway"}) == "gateway"
    # the user's explicit choice wins, even mid-rollout
    assert mode({"gateway": gateway, "traffic": "replicas"}, True, {"trafficMode": "gateway"}, True) == "replicas"
