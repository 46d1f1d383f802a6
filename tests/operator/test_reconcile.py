"""reconcile() against the in-memory kube double: real plan, real render, real store semantics."""
from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_double import KubeDouble, ResourceType
from modelship_operator.kube import TemporaryError
from modelship_operator.reconcile import APPLIED_HASH, Discovery, ReconcileResult, reconcile, status_patch
from modelship_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NS = "ml"
MD_API = "modelship.dev/v1alpha1"
SETTINGS = Settings(server_image="registry.example/modelship-server:test")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def example(name: str) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / name).read_text())
    body["metadata"]["namespace"] = NS
    return body


class Cluster:
    """A KubeDouble with the CRD installed, plus the moves a test makes."""

    def __init__(self) -> None:
        self.kube = KubeDouble()
        store = self.kube.store
        crd = yaml.safe_load((ROOT / "crds" / "modeldeployments.modelship.dev.yaml").read_text())
        store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None, crd)
        store.create(store.type_for("v1", "Namespace"), None, {"metadata": {"name": NS}})
        self.md_type = store.type_for(MD_API, "ModelDeployment")
        self.now = T0

    def create(self, body: dict) -> dict:
        return self.kube.store.create(self.md_type, NS, body)

    def md(self, name: str) -> dict:
        return self.kube.store.get(self.md_type, NS, name)

    def patch_spec(self, name: str, spec_patch: dict) -> dict:
        return self.kube.store.patch(self.md_type, NS, name, "application/merge-patch+json", {"spec": spec_patch})

    def reconcile(self, name: str) -> ReconcileResult:
        self.now += timedelta(seconds=5)
        return asyncio.run(reconcile(self.md(name), self.kube, SETTINGS, self.now, discovery=Discovery(ttl=0)))

    def children(self, kind: str, api_version: str) -> list[dict]:
        return self.kube.store.list(self.kube.store.type_for(api_version, kind), NS)

    def deployments(self) -> list[dict]:
        return self.children("Deployment", "apps/v1")

    def available(self, name: str, ready: int | None = None) -> None:
        self.kube.store.mark_deployment_available(NS, name, ready)


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


def test_first_reconcile_creates_every_child_owned_and_labelled(cluster: Cluster) -> None:
    md = cluster.create(example("autoscaling.yaml"))  # 2 replicas, autoscaling set
    result = cluster.reconcile("recommender")

    kinds = sorted(a.split("/")[0] for a in result.applied)
    # Two Services: `recommender` and the headless `recommender-peers` (feedback is on by default).
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Service"]
    children = (cluster.deployments() + cluster.children("Service", "v1")
                + cluster.children("HorizontalPodAutoscaler", "autoscaling/v2")
                + cluster.children("PodDisruptionBudget", "policy/v1"))
    assert len(children) == 5
    for child in children:
        meta = child["metadata"]
        assert meta["ownerReferences"] == [{
            "apiVersion": MD_API, "kind": "ModelDeployment", "name": "recommender",
            "uid": md["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        assert meta["labels"]["app.kubernetes.io/instance"] == "recommender"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelship-operator"
        assert meta["annotations"][APPLIED_HASH]
        assert any(f["manager"] == "modelship-operator" and f["operation"] == "Apply"
                   for f in meta["managedFields"])
    (dep,) = cluster.deployments()
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == SETTINGS.server_image
    (hpa,) = cluster.children("HorizontalPodAutoscaler", "autoscaling/v2")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": MD_API, "kind": "ModelDeployment",
                                             "name": "recommender"}

    status = cluster.md("recommender")["status"]
    assert status["observedGeneration"] == 1
    assert status["phase"] == "Pending"
    assert status["selector"] == "app.kubernetes.io/name=modelship,app.kubernetes.io/instance=recommender"
    assert [e["reason"] for e in cluster.kube.events_for("recommender")] == ["RevisionCreated"]
    assert cluster.md("recommender")["spec"] == md["spec"]  # spec never written


def test_second_reconcile_writes_nothing(cluster: Cluster) -> None:
    cluster.create(example("autoscaling.yaml"))
    assert cluster.reconcile("recommender").wrote
    mark = len(cluster.kube.writes)
    rv = cluster.md("recommender")["metadata"]["resourceVersion"]

    again = cluster.reconcile("recommender")

    assert not again.wrote
    assert cluster.kube.writes_since(mark) == []
    assert cluster.md("recommender")["metadata"]["resourceVersion"] == rv


def test_pdb_only_when_more_than_one_replica_and_no_hpa_without_autoscaling(cluster: Cluster) -> None:
    body = example("quickstart-cpu.yaml")
    body["spec"]["replicas"] = 1
    cluster.create(body)
    result = cluster.reconcile("digits")
    assert sorted(a.split("/")[0] for a in result.applied) == ["Deployment", "Service", "Service"]

    cluster.patch_spec("digits", {"replicas": 3})
    result = cluster.reconcile("digits")
    assert sorted(a.split("/")[0] for a in result.applied) == ["Deployment", "PodDisruptionBudget"]


def test_replicas_only_change_scales_the_same_revision(cluster: Cluster) -> None:
    cluster.create(example("quickstart-cpu.yaml"))
    cluster.reconcile("digits")
    (before,) = cluster.deployments()

    cluster.patch_spec("digits", {"replicas": 4})
    result = cluster.reconcile("digits")

    (after,) = cluster.deployments()
    assert after["metadata"]["name"] == before["metadata"]["name"]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["spec"]["replicas"] == 4
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert result.pruned == []
    assert cluster.md("digits")["status"]["observedGeneration"] == 2
    assert cluster.md("digits")["status"]["stable"]["revision"] == 1


def test_model_version_change_replaces_the_revision_and_prunes_the_old_one(cluster: Cluster) -> None:
    """Without rollout steps the new revision is a canary only until it is ready, then promoted."""
    cluster.create(example("quickstart-cpu.yaml"))
    cluster.reconcile("digits")
    (old,) = cluster.deployments()
    cluster.available(old["metadata"]["name"])
    cluster.reconcile("digits")
    assert cluster.md("digits")["status"]["phase"] == "Healthy"

    cluster.patch_spec("digits", {"model": {"version": "1.1.0", "uri": "file:///models/digits/v2/model.pt"}})
    result = cluster.reconcile("digits")
    names = sorted(d["metadata"]["name"] for d in cluster.deployments())
    (new_name,) = [n for n in names if n != old["metadata"]["name"]]
    # The old revision keeps serving until the new one is available.
    assert names == sorted([old["metadata"]["name"], new_name])
    assert result.pruned == []
    status = cluster.md("digits")["status"]
    assert status["phase"] == "Progressing"
    assert status["stable"]["version"] == "1.0.0" and status["stable"]["revision"] == 1
    assert status["canary"]["version"] == "1.1.0" and status["canary"]["revision"] == 2
    assert status["canary"]["weight"] == 0  # not ready: no traffic yet

    cluster.available(new_name)
    result = cluster.reconcile("digits")
    # The old revision is scaled to 0 first and deleted only once its pods are gone: a pod
    # whose ReplicaSet is deleted under it has no controller the disruption budget can count.
    assert result.retired == [f"Deployment/{old['metadata']['name']}"] and result.pruned == []
    assert "Promoted" in [e.reason for e in result.events]
    assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in cluster.deployments()} == {
        old["metadata"]["name"]: 0, new_name: 2}
    assert not cluster.reconcile("digits").wrote  # its pods still terminate: nothing to do
    cluster.available(old["metadata"]["name"])  # the Deployment controller: no pod left
    result = cluster.reconcile("digits")
    assert result.pruned == [f"Deployment/{old['metadata']['name']}"] and result.retired == []
    assert [d["metadata"]["name"] for d in cluster.deployments()] == [new_name]
    status = cluster.md("digits")["status"]
    assert status["phase"] == "Healthy"
    assert status["stable"]["version"] == "1.1.0" and status["stable"]["revision"] == 2
    assert [h["version"] for h in status["history"]] == ["1.0.0"]
    assert not cluster.reconcile("digits").wrote


def test_unavailable_old_revision_is_pruned_at_once(cluster: Cluster) -> None:
    cluster.create(example("quickstart-cpu.yaml"))
    cluster.reconcile("digits")
    (old,) = cluster.deployments()
    cluster.patch_spec("digits", {"server": {"batching": {"maxBatchSize": 64}}})  # pod-shaping
    result = cluster.reconcile("digits")
    # Nothing to wait for (it serves nothing), but its pods may exist: scaled to 0 at once...
    assert result.retired == [f"Deployment/{old['metadata']['name']}"]
    cluster.available(old["metadata"]["name"])
    # ...and deleted once the Deployment controller reports none left.
    result = cluster.reconcile("digits")
    assert result.pruned == [f"Deployment/{old['metadata']['name']}"]
    (new,) = cluster.deployments()
    assert new["metadata"]["name"] != old["metadata"]["name"]


def test_child_status_flows_into_phase_and_conditions(cluster: Cluster) -> None:
    cluster.create(example("quickstart-cpu.yaml"))  # 2 replicas
    cluster.reconcile("digits")
    (dep,) = cluster.deployments()
    name = dep["metadata"]["name"]
    status = cluster.md("digits")["status"]
    assert status["phase"] == "Pending"
    assert condition(status, "Ready")["status"] == "False"

    cluster.available(name, ready=1)
    cluster.reconcile("digits")
    status = cluster.md("digits")["status"]
    assert status["phase"] == "Progressing"
    assert condition(status, "Progressing")["status"] == "True"
    assert condition(status, "Available")["status"] == "True"
    assert status["stable"]["readyReplicas"] == 1

    cluster.available(name)
    result = cluster.reconcile("digits")
    status = cluster.md("digits")["status"]
    assert status["phase"] == "Healthy"
    ready = condition(status, "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert condition(status, "Degraded")["status"] == "False"
    assert status["stable"]["readyReplicas"] == 2 and status["readyReplicas"] == 2
    assert [e.reason for e in result.events] == ["Ready"]

    # A pod lost later: Degraded, with a Warning event.
    cluster.available(name, ready=1)
    result = cluster.reconcile("digits")
    assert cluster.md("digits")["status"]["phase"] == "Degraded"
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "ReplicasUnavailable")]


def test_invalid_spec_fails_with_event_and_touches_no_child(cluster: Cluster) -> None:
    body = example("quickstart-cpu.yaml")
    body["spec"]["model"]["uri"] = "ftp://nowhere/model.pt"
    cluster.create(body)

    result = cluster.reconcile("digits")

    assert result.error and "uri" in result.error
    assert result.applied == [] and cluster.deployments() == []
    assert [w.verb for w in cluster.kube.writes] == ["patch_status", "event"]
    status = cluster.md("digits")["status"]
    assert status["phase"] == "Failed"
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Degraded")["reason"] == "InvalidSpec"
    (event,) = cluster.kube.events_for("digits")
    assert event["type"] == "Warning" and event["reason"] == "InvalidSpec"
    # no event storm: the same failure again writes nothing
    mark = len(cluster.kube.writes)
    assert not cluster.reconcile("digits").wrote
    assert cluster.kube.writes_since(mark) == []


def test_permanent_api_error_becomes_condition_and_event(cluster: Cluster) -> None:
    cluster.create(example("quickstart-cpu.yaml"))
    cluster.kube.fail_next("apply", 422, "Deployment.apps is invalid: spec.template: bad", kind="Deployment")

    result = cluster.reconcile("digits")

    assert result.error and "spec.template: bad" in result.error
    status = cluster.md("digits")["status"]
    assert status["phase"] == "Failed"
    assert condition(status, "Degraded")["reason"] == "ApplyFailed"
    assert "spec.template: bad" in condition(status, "Degraded")["message"]
    assert [e["reason"] for e in cluster.kube.events_for("digits")] == ["ApplyFailed"]

    # The cause goes away: the next reconcile recovers.
    result = cluster.reconcile("digits")
    assert result.error is None and len(cluster.deployments()) == 1
    assert cluster.md("digits")["status"]["phase"] == "Pending"


@pytest.mark.parametrize("status_code", [409, 429, 500, 503])
def test_temporary_api_error_raises_for_retry(cluster: Cluster, status_code: int) -> None:
    cluster.create(example("quickstart-cpu.yaml"))
    cluster.kube.fail_next("apply", status_code, "try again", kind="Service")
    with pytest.raises(TemporaryError) as info:
        cluster.reconcile("digits")
    assert info.value.status == status_code and "try again" in str(info.value)
    assert "status" not in cluster.md("digits")  # nothing half-reported
    assert cluster.reconcile("digits").error is None  # the retry converges


def test_prunes_only_children_this_modeldeployment_controls(cluster: Cluster) -> None:
    """Issue 9 item 8: pruning follows the controller ownerReference (uid), never a label alone."""
    uid = cluster.create(example("quickstart-cpu.yaml"))["metadata"]["uid"]
    cluster.reconcile("digits")
    store = cluster.kube.store
    svc = store.type_for("v1", "Service")
    ours = {"app.kubernetes.io/instance": "digits", "app.kubernetes.io/managed-by": "modelship-operator"}

    def ref(owner_uid: str, controller: bool = True) -> list[dict]:
        return [{"apiVersion": MD_API, "kind": "ModelDeployment", "name": "digits", "uid": owner_uid,
                 "controller": controller, "blockOwnerDeletion": True}]

    store.create(svc, NS, {"metadata": {"name": "digits-stale", "labels": ours, "ownerReferences": ref(uid)},
                           "spec": {}})
    # A user's copy of our Service that kept every label: not ours to delete.
    store.create(svc, NS, {"metadata": {"name": "digits-copy", "labels": ours}, "spec": {}})
    # Controlled by another (say a deleted and re-created) ModelDeployment of the same name.
    store.create(svc, NS, {"metadata": {"name": "digits-other", "labels": ours,
                                        "ownerReferences": ref("0000-other")}, "spec": {}})
    # Our uid, but not as its controller.
    store.create(svc, NS, {"metadata": {"name": "digits-dependent", "labels": ours,
                                        "ownerReferences": ref(uid, controller=False)}, "spec": {}})
    store.create(svc, NS, {"metadata": {"name": "digits-handmade",
                                        "labels": {"app.kubernetes.io/instance": "digits"}}, "spec": {}})

    result = cluster.reconcile("digits")

    assert result.pruned == ["Service/digits-stale"]
    names = sorted(s["metadata"]["name"] for s in cluster.children("Service", "v1"))
    assert names == ["digits", "digits-copy", "digits-dependent", "digits-handmade", "digits-other",
                     "digits-peers"]
    assert not cluster.reconcile("digits").wrote


def test_the_peers_service_follows_feedback(cluster: Cluster) -> None:
    """Feedback on (the default): a headless `<name>-peers` Service the server is pointed at;
    turned off: the Service is pruned and the variable is gone."""
    cluster.create(example("quickstart-cpu.yaml"))
    cluster.reconcile("digits")
    peers = {s["metadata"]["name"]: s for s in cluster.children("Service", "v1")}["digits-peers"]
    assert peers["spec"]["clusterIP"] == "None"
    # /feedback lives on the servers' admin port: that is the one port the peers Service names.
    assert [(p["name"], p["port"], p["targetPort"]) for p in peers["spec"]["ports"]] == [("admin", 9090, "admin")]
    (dep,) = cluster.deployments()
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELSHIP_FEEDBACK_PEERS"] == f"digits-peers.{NS}.svc.cluster.local:9090"

    cluster.patch_spec("digits", {"monitoring": {"feedback": {"enabled": False}}})
    result = cluster.reconcile("digits")
    assert "Service/digits-peers" in result.pruned
    assert sorted(s["metadata"]["name"] for s in cluster.children("Service", "v1")) == ["digits"]


def test_service_monitor_when_its_crd_is_served(cluster: Cluster) -> None:
    cluster.kube.store.register(ResourceType("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor"))
    cluster.create(example("quickstart-cpu.yaml"))
    result = cluster.reconcile("digits")
    assert "ServiceMonitor/digits" in result.applied
    assert not cluster.reconcile("digits").wrote


def test_drifted_child_is_reapplied_when_its_hash_annotation_changes(cluster: Cluster) -> None:
    cluster.create(example("quickstart-cpu.yaml"))
    cluster.reconcile("digits")
    store = cluster.kube.store
    svc = store.type_for("v1", "Service")
    store.patch(svc, NS, "digits", "application/merge-patch+json",
                {"metadata": {"annotations": {APPLIED_HASH: "tampered"}}})
    result = cluster.reconcile("digits")
    assert result.applied == ["Service/digits"]
    live = store.get(svc, NS, "digits")
    assert live["metadata"]["annotations"][APPLIED_HASH] != "tampered"


def _gateway_cluster(cluster: Cluster) -> dict[str, ResourceType]:
    """canary-gateway with the HTTPRoute and ServiceMonitor CRDs served: every kind of child."""
    store = cluster.kube.store
    extra = {"HTTPRoute": ResourceType("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
             "ServiceMonitor": ResourceType("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor")}
    for rtype in extra.values():
        store.register(rtype)
    cluster.create(example("canary-gateway.yaml"))
    first = cluster.reconcile("fraud")
    assert {a.split("/")[0] for a in first.applied} == {"Deployment", "Service", "HTTPRoute", "PodDisruptionBudget",
                                                        "HorizontalPodAutoscaler", "ServiceMonitor"}
    assert not cluster.reconcile("fraud").wrote  # against server-defaulted children
    return {**extra, **{kind: store.type_for(api, kind) for api, kind in (
        ("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"))}}


MERGE, JSON = "application/merge-patch+json", "application/json-patch+json"
# (child kind, name suffix, patch type or "scale", patch, a field read back to prove the repair)
EDITS = {
    "deployment-scaled-to-zero": ("Deployment", "", "scale", {"spec": {"replicas": 0}}, ("spec", "replicas")),
    "deployment-image": ("Deployment", "", JSON, [{"op": "replace", "path": "/spec/template/spec/containers/0/image",
                                                   "value": "evil/image:1"}], ("spec", "template")),
    "deployment-strategy": ("Deployment", "", MERGE, {"spec": {"strategy": {"rollingUpdate": {"maxUnavailable": 3}}}},
                            ("spec", "strategy")),
    "deployment-labels-removed": ("Deployment", "", MERGE,
                                  {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}},
                                  ("metadata", "labels")),
    "service-selector-replaced": ("Service", "fraud", MERGE,
                                  {"spec": {"selector": {"app.kubernetes.io/instance": "nowhere"}}},
                                  ("spec", "selector")),
    "service-selector-key-added": ("Service", "fraud", MERGE, {"spec": {"selector": {"extra": "key"}}},
                                   ("spec", "selector")),
    "service-port": ("Service", "fraud", JSON, [{"op": "replace", "path": "/spec/ports/0/port", "value": 9999}],
                     ("spec", "ports")),
    "peers-service-selector": ("Service", "fraud-peers", MERGE,
                               {"spec": {"selector": {"app.kubernetes.io/instance": "other"}}},
                               ("spec", "selector")),
    "hpa-max": ("HorizontalPodAutoscaler", "fraud", MERGE, {"spec": {"maxReplicas": 99}}, ("spec", "maxReplicas")),
    "pdb-budget": ("PodDisruptionBudget", "fraud", MERGE, {"spec": {"maxUnavailable": 5}},
                   ("spec", "maxUnavailable")),
    "httproute-backend": ("HTTPRoute", "fraud", JSON, [{"op": "replace", "path": "/spec/rules/0/backendRefs/0/port",
                                                        "value": 1}], ("spec", "rules")),
    "servicemonitor-endpoints": ("ServiceMonitor", "fraud", MERGE, {"spec": {"endpoints": []}},
                                 ("spec", "endpoints")),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_child_is_put_back_and_then_left_alone(cluster: Cluster, edit: str) -> None:
    """Issue 9 item 2: a change by someone else to any field we own, on any child kind, is
    reverted by the next reconcile (level-triggered, not trust in our annotation); the one
    after writes nothing."""
    types = _gateway_cluster(cluster)
    store = cluster.kube.store
    kind, name, patch_type, patch, field_path = EDITS[edit]
    rtype = types[kind]
    name = name or next(d["metadata"]["name"] for d in cluster.deployments())
    before = store.get(rtype, NS, name)
    if patch_type == "scale":
        store.patch(rtype, NS, name, MERGE, patch, subresource="scale")
    else:
        store.patch(rtype, NS, name, patch_type, patch)
    edited = store.get(rtype, NS, name)
    assert edited["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]

    result = cluster.reconcile("fraud")

    assert result.applied == [f"{kind}/{name}"]
    assert result.pruned == []
    after = store.get(rtype, NS, name)
    part, key = field_path
    assert after[part][key] == before[part][key]
    assert not cluster.reconcile("fraud").wrote


def test_a_field_someone_else_adds_is_left_to_them(cluster: Cluster) -> None:
    """Fields we do not apply (another controller's annotation, a label on the pod template)
    are not ours to revert: no write, no loop."""
    types = _gateway_cluster(cluster)
    store = cluster.kube.store
    dep = cluster.deployments()[0]["metadata"]["name"]
    store.patch(types["Deployment"], NS, dep, MERGE, {"metadata": {"annotations": {"example.com/owner": "team-a"}},
                                                      "spec": {"template": {"metadata": {"labels": {"x": "y"}}}}})
    store.patch(types["Service"], NS, "fraud", MERGE, {"metadata": {"labels": {"example.com/cost": "ml"}}})
    assert not cluster.reconcile("fraud").wrote


def test_status_patch_nulls_removed_keys_and_keeps_equal_ones() -> None:
    live = {"phase": "Healthy", "canary": {"weight": 10}, "stable": {"revision": 1, "version": "a"}}
    desired = {"phase": "Healthy", "stable": {"revision": 2, "version": "a"}, "url": "http://x"}
    assert status_patch(live, desired) == {"canary": None, "stable": {"revision": 2}, "url": "http://x"}
    assert status_patch(desired, copy.deepcopy(desired)) == {}


def test_a_modeldeployment_being_deleted_is_left_alone(cluster: Cluster) -> None:
    cluster.create(example("quickstart-cpu.yaml"))
    cluster.reconcile("digits")
    store = cluster.kube.store
    # Foreground deletion: the API server sets deletionTimestamp and holds the object.
    store.patch(cluster.md_type, NS, "digits", "application/merge-patch+json",
                {"metadata": {"finalizers": ["foregroundDeletion"]}})
    store.delete(cluster.md_type, NS, "digits", "Foreground")
    for dep in cluster.deployments():
        store.delete(store.type_for("apps/v1", "Deployment"), NS, dep["metadata"]["name"])
    mark = len(cluster.kube.writes)

    result = cluster.reconcile("digits")

    assert not result.wrote and cluster.kube.writes_since(mark) == []
    assert cluster.deployments() == []
