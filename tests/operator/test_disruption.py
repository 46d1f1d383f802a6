"""The PodDisruptionBudget covers the pods of every revision, for the whole of a rollout, and an
outgoing revision is drained (scaled to 0) before its Deployment is deleted (issue 9 item 3).

The pure plan is driven by a small loop that plays the Deployment controller (each rendered
Deployment converges, ready; a retired one keeps its pods until the test drains it); the I/O
side runs reconcile() against the in-memory kube double.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from modelship_operator.planning import PROMOTE_ANNOTATION, DeploymentState, Observed, Plan, plan
from modelship_operator.render import render
from modelship_operator.settings import Settings
from modelship_operator.spec import ModelDeployment
from test_reconcile import Cluster, example

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings()


def spec(version: str, replicas: int, traffic: str = "replicas") -> dict:
    rollout: dict[str, Any] = {"steps": [{"setWeight": 50}, {"pause": {}}], "traffic": traffic}
    if traffic == "gateway":
        rollout["gateway"] = {"parentRefs": [{"name": "edge"}]}
    return {"model": {"uri": f"pvc://models/fraud/{version}/model.pt", "version": version},
            "replicas": replicas, "rollout": rollout}


@dataclass
class Loop:
    """The plan plus a Deployment controller; retired Deployments keep their pods until drained."""

    spec: dict
    httproute: bool = False
    now: datetime = T0
    status: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)
    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    plans: list[Plan] = field(default_factory=list)

    def step(self) -> Plan:
        self.now += timedelta(seconds=5)
        md = ModelDeployment.from_body({
            "metadata": {"name": "fraud", "namespace": "ml", "uid": "uid-1", "generation": 1,
                         "annotations": dict(self.annotations)},
            "spec": copy.deepcopy(self.spec), "status": json.loads(json.dumps(self.status))})
        p = plan(md, Observed(tuple(self.deployments.values()), self.httproute, False), SETTINGS, self.now)
        self.status = json.loads(json.dumps(p.status))
        for name in p.consumed_actions:
            self.annotations.pop(name, None)
        rendered = {m["metadata"]["name"]: m for m in render(p) if m["kind"] == "Deployment"}
        kept = {n: d for n, d in self.deployments.items() if n in p.retain or n in p.retire}
        for n in p.retire:  # reconcile scales it to 0; its pods are still terminating
            kept[n] = DeploymentState(n, kept[n].revision, kept[n].role, replicas=kept[n].replicas, ready_replicas=0,
                                      available_replicas=0, updated_replicas=0, generation=2, observed_generation=2,
                                      spec_replicas=0, terminating_replicas=kept[n].replicas)
        self.deployments = {**kept, **{
            r.name: DeploymentState.from_manifest({**rendered[r.name], "status": {
                "replicas": r.replicas, "readyReplicas": r.replicas, "availableReplicas": r.replicas,
                "updatedReplicas": r.replicas, "observedGeneration": 1}})
            for r in p.revisions}}
        self.plans.append(p)
        return p

    def settle(self) -> Plan:
        for _ in range(6):
            p = self.step()
        return p


@pytest.mark.parametrize("traffic", ["replicas", "gateway"])
def test_the_budget_covers_every_revision_through_a_whole_rollout(traffic: str) -> None:
    loop = Loop(spec("1.0.0", 2, traffic), httproute=traffic == "gateway")
    loop.settle()
    assert loop.plans[-1].pdb

    loop.spec = spec("2.0.0", 2, traffic)
    p = loop.settle()
    assert p.revision("canary") is not None and loop.status["canary"]["requestedWeight"] == 50
    if traffic == "replicas":  # one pod each side: no revision has more than one
        assert [r.replicas for r in p.revisions] == [1, 1]
    loop.annotations[PROMOTE_ANNOTATION] = "full"
    p = loop.settle()
    assert p.revision("canary") is None and loop.status["stable"]["version"] == "2.0.0"
    old = next(n for n in loop.deployments if n != p.revisions[0].name)
    assert p.retire == (old,)  # still terminating: kept at 0

    # Drained: the Deployment controller reports no pod left; now it goes.
    d = loop.deployments[old]
    loop.deployments[old] = DeploymentState(old, d.revision, d.role, 0, 0, 0, 0, 2, 2, spec_replicas=0)
    p = loop.step()
    assert p.retire == () and p.retain == ()

    # Never pruned mid-rollout: every plan of the whole story kept the budget.
    assert all(p.pdb for p in loop.plans)
    (pdb,) = [m for m in render(loop.plans[-1]) if m["kind"] == "PodDisruptionBudget"]
    # Over the pods of every revision: no revision in the selector.
    assert pdb["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "modelship",
                                                       "app.kubernetes.io/instance": "fraud"}}
    assert pdb["spec"]["maxUnavailable"] == 1


def test_one_replica_gets_a_budget_only_while_two_revisions_have_pods() -> None:
    loop = Loop(spec("1.0.0", 1))
    assert not loop.settle().pdb  # one pod: a budget of 1 would never block anything
    loop.spec = spec("2.0.0", 1)
    assert loop.settle().pdb  # a stable and a canary Deployment


@pytest.mark.parametrize("replicas,autoscaling,want", [
    (2, None, True), (1, None, False), (0, None, False),
    (1, {"minReplicas": 1, "maxReplicas": 3}, True), (1, {"minReplicas": 1, "maxReplicas": 1}, False),
])
def test_the_budget_follows_the_total_and_the_autoscaler(replicas: int, autoscaling: dict | None, want: bool) -> None:
    body = spec("1.0.0", replicas)
    if autoscaling:
        body["autoscaling"] = autoscaling
    assert Loop(body).settle().pdb is want


def test_promotion_drains_the_old_deployment_before_deleting_it_and_keeps_the_budget() -> None:
    cluster = Cluster()
    body = example("quickstart-cpu.yaml")  # 2 replicas
    body["spec"]["rollout"] = {"steps": [{"setWeight": 50}, {"pause": {}}]}
    cluster.create(body)
    cluster.reconcile("digits")
    (old,) = cluster.deployments()
    old_name = old["metadata"]["name"]
    cluster.available(old_name)
    cluster.reconcile("digits")
    mark = len(cluster.kube.writes)

    cluster.patch_spec("digits", {"model": {"version": "1.1.0", "uri": "file:///models/digits/v2/model.pt"}})
    cluster.reconcile("digits")
    (new_name,) = [d["metadata"]["name"] for d in cluster.deployments() if d["metadata"]["name"] != old_name]
    cluster.available(old_name)
    cluster.available(new_name)
    cluster.reconcile("digits")
    assert cluster.md("digits")["status"]["canary"]["weight"] == 50
    assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in cluster.deployments()} == {old_name: 1, new_name: 1}
    assert len(cluster.children("PodDisruptionBudget", "policy/v1")) == 1

    cluster.kube.store.patch(cluster.md_type, "ml", "digits", "application/merge-patch+json",
                             {"metadata": {"annotations": {PROMOTE_ANNOTATION: "full"}}})
    for _ in range(3):
        cluster.reconcile("digits")
        cluster.available(new_name)
    assert cluster.md("digits")["status"]["stable"]["version"] == "1.1.0"
    # The old Deployment is at 0 and still there while its pod terminates (status says 1 pod).
    live = {d["metadata"]["name"]: d for d in cluster.deployments()}
    assert live[old_name]["spec"]["replicas"] == 0
    assert cluster.reconcile("digits").pruned == []
    cluster.available(old_name)  # no pod left
    assert cluster.reconcile("digits").pruned == [f"Deployment/{old_name}"]

    writes = cluster.kube.writes_since(mark)
    # The old Deployment: one scale to 0 (a patch), then one delete, in that order.
    on_old = [w.verb for w in writes if w.kind == "Deployment" and w.name == old_name and w.verb != "apply"]
    assert on_old == ["patch", "delete"]
    # The budget was never deleted, and exists at the end.
    assert not [w for w in writes if w.kind == "PodDisruptionBudget" and w.verb == "delete"]
    assert len(cluster.children("PodDisruptionBudget", "policy/v1")) == 1
