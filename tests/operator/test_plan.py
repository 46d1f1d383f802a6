"""Pure unit tests of the plan: revisions, replica decisions, status, conditions, events."""
from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from modelship_operator.planning import (
    DeploymentState,
    Observed,
    failed_status,
    plan,
    revision_hash,
)
from modelship_operator.settings import Settings
from modelship_operator.spec import ModelDeployment

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)
T2 = T0 + timedelta(minutes=10)
SETTINGS = Settings()


def body(**spec: Any) -> dict:
    base: dict[str, Any] = {
        "model": {"uri": "pvc://models/fraud/1.4.0/model.pt", "version": "1.4.0"},
        "replicas": 2,
    }
    base.update(spec)
    return {
        "apiVersion": "modelship.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": base,
    }


def md(b: dict | None = None, status: dict | None = None, generation: int = 1) -> ModelDeployment:
    b = copy.deepcopy(b or body())
    b["metadata"]["generation"] = generation
    if status is not None:
        b["status"] = copy.deepcopy(status)
    return ModelDeployment.from_body(b)


def dep(
    hash_: str,
    *,
    replicas: int = 2,
    ready: int = 2,
    available: int | None = None,
    updated: int | None = None,
    generation: int = 1,
    observed_generation: int = 1,
    conditions: tuple = (),
    name: str | None = None,
) -> DeploymentState:
    return DeploymentState(
        name=name or f"fraud-{hash_}",
        revision=hash_,
        role="stable",
        replicas=replicas,
        ready_replicas=ready,
        available_replicas=ready if available is None else available,
        updated_replicas=replicas if updated is None else updated,
        generation=generation,
        observed_generation=observed_generation,
        conditions=conditions,
    )


def cond(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def conds(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def h(b: dict | None = None, settings: Settings = SETTINGS) -> str:
    return revision_hash(md(b), settings)


# --------------------------------------------------------------------------- revision hash


def test_revision_hash_is_stable_and_short() -> None:
    assert h() == h()
    assert len(h()) == 10 and int(h(), 16) >= 0
    # Written-out defaults are the same spec as omitted ones.
    assert h(body(server={"precision": "fp32", "batching": {"maxBatchSize": 32}})) == h()


@pytest.mark.parametrize(
    "change",
    [
        {"replicas": 7},
        {"autoscaling": {"minReplicas": 1, "maxReplicas": 5}},
        {"rollout": {"steps": [{"setWeight": 10}]}},
        {"historyLimit": 3},
    ],
)
def test_revision_hash_ignores_what_does_not_shape_pods(change: dict) -> None:
    assert h(body(**change)) == h()


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"uri": "pvc://models/fraud/1.5.0/model.pt", "version": "1.4.0"}},
        {"model": {"uri": "pvc://models/fraud/1.4.0/model.pt", "version": "1.4.1"}},
        {"server": {"batching": {"maxBatchSize": 16}}},
        {"server": {"image": "registry.example.com/modelship:custom"}},
        {"server": {"env": [{"name": "A", "value": "1"}]}},
        {"gpu": {"count": 1}},
        {"scheduling": {"nodeSelector": {"pool": "inference"}}},
        {"scheduling": {"priorityClassName": "high"}},
    ],
)
def test_revision_hash_changes_with_pod_shaping_fields(change: dict) -> None:
    assert h(body(**change)) != h()


def test_revision_hash_ignores_the_operator_default_image() -> None:
    # An operator upgrade with a new default image rolls each Deployment in place, no new revision...
    assert h(settings=Settings(server_image="ghcr.io/modelship/server:0.2.0")) == h()
    # ...while an image the spec pins is the user's intent.
    pinned = body(server={"image": "registry.example.com/modelship:1"})
    assert h(pinned, Settings(server_image="x/y:2")) == h(pinned) != h()


# --------------------------------------------------------------------------- numbering


def test_revision_numbers_count_up_and_are_kept_while_the_hash_is_unchanged() -> None:
    first = plan(md(), Observed(), SETTINGS, T0)
    assert first.revisions[0].number == 1 and first.revisions[0].role == "stable"
    again = plan(md(status=dict(first.status)), Observed(), SETTINGS, T1)
    assert again.revisions[0].number == 1
    changed = body(model={"uri": "pvc://models/fraud/1.5.0/model.pt", "version": "1.5.0"})
    second = plan(md(changed, status=dict(first.status), generation=2), Observed(), SETTINGS, T1)
    assert second.revisions[0].number == 2
    # Numbers already used in history are never reused.
    status = dict(second.status, history=[{"revision": 9, "hash": "x", "outcome": "Superseded"}])
    third = plan(md(body(replicas=2, model={"uri": "file:///m/model.pt", "version": "2"}), status), Observed(), SETTINGS, T2)
    assert third.revisions[0].number == 10


def test_deployment_name_and_labels_follow_the_hash() -> None:
    p = plan(md(), Observed(), SETTINGS, T0)
    rev = p.revisions[0]
    assert rev.name == f"fraud-{rev.hash}" and rev.replicas == 2
    assert p.labels["app.kubernetes.io/instance"] == "fraud"
    assert p.owner == {
        "apiVersion": "modelship.dev/v1alpha1",
        "kind": "ModelDeployment",
        "name": "fraud",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


# --------------------------------------------------------------------------- status per situation


def test_nothing_observed_yet_is_pending() -> None:
    p = plan(md(), Observed(), SETTINGS, T0)
    s = p.status
    assert s["phase"] == "Pending" and s["observedGeneration"] == 1
    assert conds(s) == {"Ready": "False", "Available": "False", "Progressing": "True", "Degraded": "False"}
    assert all(c["lastTransitionTime"] == "2026-03-01T12:00:00Z" for c in s["conditions"])
    assert all(c["observedGeneration"] == 1 and c["reason"] for c in s["conditions"])
    assert s["stable"] == {
        "revision": 1,
        "hash": p.revisions[0].hash,
        "version": "1.4.0",
        "uri": "pvc://models/fraud/1.4.0/model.pt",
        "replicas": 2,
        "readyReplicas": 0,
        # The pod-shaping spec as written: the stable is rendered from it during a canary.
        "spec": {"model": {"uri": "pvc://models/fraud/1.4.0/model.pt", "version": "1.4.0"}},
        "image": SETTINGS.server_image,
    }
    assert s["replicas"] == 0 and s["readyReplicas"] == 0
    assert s["selector"] == "app.kubernetes.io/name=modelship,app.kubernetes.io/instance=fraud"
    assert s["url"] == "http://fraud.ml.svc.cluster.local:8080"
    assert [e.reason for e in p.events] == ["RevisionCreated"]


def test_url_without_cluster_domain() -> None:
    s = plan(md(), Observed(), Settings(cluster_domain=""), T0).status
    assert s["url"] == "http://fraud.ml.svc:8080"


def test_pods_starting_without_any_ready_is_still_pending() -> None:
    hash_ = h()
    s = plan(md(), Observed((dep(hash_, ready=0, available=0),)), SETTINGS, T0).status
    assert s["phase"] == "Pending" and s["replicas"] == 2 and s["readyReplicas"] == 0


def test_partially_ready_is_progressing() -> None:
    hash_ = h()
    s = plan(md(), Observed((dep(hash_, ready=1),)), SETTINGS, T0).status
    assert s["phase"] == "Progressing"
    assert conds(s) == {"Ready": "False", "Available": "True", "Progressing": "True", "Degraded": "False"}
    assert cond(s, "Progressing")["reason"] == "RolloutInProgress"
    assert s["stable"]["readyReplicas"] == 1 and s["readyReplicas"] == 1


def test_all_ready_is_healthy() -> None:
    hash_ = h()
    p = plan(md(), Observed((dep(hash_),)), SETTINGS, T0)
    s = p.status
    assert s["phase"] == "Healthy"
    assert conds(s) == {"Ready": "True", "Available": "True", "Progressing": "False", "Degraded": "False"}
    assert cond(s, "Ready")["reason"] == "AllReplicasReady"
    assert cond(s, "Progressing")["reason"] == "RolloutComplete"
    assert s["stable"]["readyReplicas"] == 2 and s["replicas"] == 2


def test_generation_lag_is_progressing_even_with_all_pods_ready() -> None:
    hash_ = h()
    s = plan(md(), Observed((dep(hash_, generation=3, observed_generation=2),)), SETTINGS, T0).status
    assert s["phase"] == "Progressing" and cond(s, "Progressing")["status"] == "True"
    assert cond(s, "Ready")["status"] == "True"  # the pods serve at full capacity meanwhile


def test_surplus_old_pods_mean_the_rollout_is_not_done() -> None:
    hash_ = h()
    s = plan(md(), Observed((dep(hash_, replicas=3, ready=3, updated=2),)), SETTINGS, T0).status
    assert s["phase"] == "Progressing"


def test_progress_deadline_exceeded_is_degraded() -> None:
    hash_ = h()
    stuck = dep(
        hash_,
        ready=0,
        available=0,
        conditions=(
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": 'ReplicaSet "fraud-x" has timed out progressing.'},
        ),
    )
    p = plan(md(), Observed((stuck,)), SETTINGS, T0)
    s = p.status
    assert s["phase"] == "Degraded"
    assert conds(s) == {"Ready": "False", "Available": "False", "Progressing": "False", "Degraded": "True"}
    degraded = cond(s, "Degraded")
    assert degraded["reason"] == "ProgressDeadlineExceeded" and "timed out progressing" in degraded["message"]
    assert [(e.type, e.reason) for e in p.events] == [("Normal", "RevisionCreated"), ("Warning", "ProgressDeadlineExceeded")]


def test_replica_failure_is_degraded() -> None:
    hash_ = h()
    failing = dep(
        hash_,
        ready=1,
        conditions=({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                     "message": 'pods "fraud-x" is forbidden: exceeded quota'},),
    )
    s = plan(md(), Observed((failing,)), SETTINGS, T0).status
    assert s["phase"] == "Degraded" and cond(s, "Degraded")["reason"] == "ReplicaFailure"
    assert "exceeded quota" in cond(s, "Degraded")["message"]


def test_losing_pods_after_being_healthy_is_degraded_then_recovers() -> None:
    hash_ = h()
    healthy = plan(md(), Observed((dep(hash_),)), SETTINGS, T0)
    lost = plan(md(status=dict(healthy.status)), Observed((dep(hash_, ready=1),)), SETTINGS, T1)
    assert lost.status["phase"] == "Degraded"
    assert cond(lost.status, "Degraded")["reason"] == "ReplicasUnavailable"
    assert cond(lost.status, "Available")["status"] == "True"  # one pod still serves
    assert [(e.type, e.reason) for e in lost.events] == [("Warning", "ReplicasUnavailable")]
    # Still short at the next reconcile: stays Degraded, and says so only once.
    still = plan(md(status=dict(lost.status)), Observed((dep(hash_, ready=1),)), SETTINGS, T2)
    assert still.status["phase"] == "Degraded" and still.events == ()
    back = plan(md(status=dict(still.status)), Observed((dep(hash_),)), SETTINGS, T2)
    assert back.status["phase"] == "Healthy"
    assert [(e.type, e.reason) for e in back.events] == [("Normal", "Ready"), ("Normal", "Recovered")]


def test_scaling_up_a_healthy_deployment_is_progressing_not_degraded() -> None:
    hash_ = h()
    healthy = plan(md(), Observed((dep(hash_),)), SETTINGS, T0)
    scaled = plan(
        md(body(replicas=3), status=dict(healthy.status), generation=2),
        Observed((dep(hash_, replicas=3, ready=2, updated=3),)),
        SETTINGS,
        T1,
    )
    assert scaled.revisions[0].hash == hash_  # replicas alone make no new revision
    assert scaled.status["phase"] == "Progressing" and scaled.status["stable"]["replicas"] == 3
    assert scaled.status["observedGeneration"] == 2


def test_scaled_to_zero_is_healthy_but_not_ready() -> None:
    b = body(replicas=0)
    p = plan(md(b), Observed((dep(h(b), replicas=0, ready=0),)), SETTINGS, T0)
    assert p.status["phase"] == "Healthy"
    assert cond(p.status, "Ready")["reason"] == "ScaledToZero" and cond(p.status, "Ready")["status"] == "False"
    assert p.pdb is False


# --------------------------------------------------------------------------- transitions and events


def test_steady_state_is_a_fixed_point_with_no_events() -> None:
    """Feeding the status back with the same observation changes nothing: no write, no event."""
    hash_ = h()
    observed = Observed((dep(hash_),))
    first = plan(md(), observed, SETTINGS, T0)
    second = plan(md(status=dict(first.status)), observed, SETTINGS, T1)
    assert second.status == first.status
    assert second.events == ()


def test_last_transition_time_moves_only_for_conditions_that_flip() -> None:
    hash_ = h()
    pending = plan(md(), Observed(), SETTINGS, T0)
    ready = plan(md(status=dict(pending.status)), Observed((dep(hash_),)), SETTINGS, T1)
    times = {c["type"]: c["lastTransitionTime"] for c in ready.status["conditions"]}
    assert times["Ready"] == times["Available"] == times["Progressing"] == "2026-03-01T12:05:00Z"
    assert times["Degraded"] == "2026-03-01T12:00:00Z"  # stayed False
    assert [e.reason for e in ready.events] == ["Ready"]
    assert "2/2" in ready.events[0].message


def test_a_spec_change_without_steps_promotes_once_the_canary_is_ready() -> None:
    """No rollout.steps: the new revision is a canary at 100% at once (stable only gives up pods
    the canary has replaced) and is promoted as soon as all its replicas are ready."""
    old_hash = h()
    healthy = plan(md(), Observed((dep(old_hash),)), SETTINGS, T0)
    # (T1 to T2 is 5 minutes, the default rollout.readyTimeout: a canary half-ready that long aborts)
    changed = body(model={"uri": "pvc://models/fraud/1.5.0/model.pt", "version": "1.5.0"},
                   rollout={"readyTimeout": "15m"})
    new_hash = h(changed)
    old = dep(old_hash)

    # New Deployment not there yet: the stable keeps all its pods and serves.
    p1 = plan(md(changed, dict(healthy.status), 2), Observed((old,)), SETTINGS, T1)
    assert [(r.hash, r.role, r.replicas) for r in p1.revisions] == [(old_hash, "stable", 2), (new_hash, "canary", 2)]
    assert p1.status["phase"] == "Progressing"
    assert cond(p1.status, "Available")["status"] == "True"
    assert p1.status["stable"]["revision"] == 1 and p1.status["canary"]["revision"] == 2
    assert p1.status["canary"]["requestedWeight"] == 100 and p1.status["canary"]["weight"] == 0
    assert [e.reason for e in p1.events] == ["CanaryStarted"]

    # Half-way: one canary pod ready, so the stable drops to one; status counts both.
    p2 = plan(md(changed, dict(p1.status), 2), Observed((old, dep(new_hash, ready=1))), SETTINGS, T2)
    assert [r.replicas for r in p2.revisions] == [1, 2] and p2.status["readyReplicas"] == 3
    assert p2.status["canary"]["weight"] == 50 and p2.events == ()

    # Canary fully available: promoted, the old revision is no longer rendered (pruned).
    p3 = plan(md(changed, dict(p2.status), 2), Observed((dep(old_hash, replicas=1, ready=1), dep(new_hash))), SETTINGS, T2)
    assert [(r.hash, r.role, r.replicas) for r in p3.revisions] == [(new_hash, "stable", 2)]
    assert p3.retain == () and p3.status["phase"] == "Healthy" and "canary" not in p3.status
    assert p3.status["stable"]["revision"] == 2 and p3.status["stable"]["version"] == "1.5.0"
    assert p3.status["history"] == [
        {"revision": 1, "hash": old_hash, "version": "1.4.0", "uri": "pvc://models/fraud/1.4.0/model.pt",
         "time": "2026-03-01T12:10:00Z", "outcome": "Superseded",
         "spec": {"model": {"uri": "pvc://models/fraud/1.4.0/model.pt", "version": "1.4.0"}},
         "image": SETTINGS.server_image}
    ]
    # capacity never dropped (the old revision served until the canary was available): no Ready flip
    assert p3.status["replicas"] == 2 and [e.reason for e in p3.events] == ["Promoted"]


def test_a_broken_new_revision_keeps_the_old_one_serving() -> None:
    old_hash = h()
    healthy = plan(md(), Observed((dep(old_hash),)), SETTINGS, T0)
    changed = body(model={"uri": "pvc://models/fraud/1.5.0/model.pt", "version": "1.5.0"})
    stuck = dep(h(changed), ready=0, available=0, conditions=(
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"},))
    p = plan(md(changed, dict(healthy.status), 2), Observed((dep(old_hash), stuck)), SETTINGS, T1)
    assert p.status["phase"] == "Degraded" and cond(p.status, "Degraded")["reason"] == "ProgressDeadlineExceeded"
    assert [(r.role, r.replicas) for r in p.revisions] == [("stable", 2), ("canary", 2)]
    assert cond(p.status, "Available")["status"] == "True"


def test_history_is_trimmed_to_the_limit() -> None:
    status: dict = {}
    for i in range(5):
        b = body(historyLimit=2, model={"uri": f"pvc://models/fraud/{i}/model.pt", "version": f"{i}"})
        status = dict(plan(md(b, status, i + 1), Observed(), SETTINGS, T0 + timedelta(minutes=i)).status)
    assert [e["revision"] for e in status["history"]] == [3, 4]
    assert status["stable"]["revision"] == 5
    b0 = body(historyLimit=0, model={"uri": "pvc://models/fraud/9/model.pt", "version": "9"})
    assert plan(md(b0, status, 9), Observed(), SETTINGS, T2).status["history"] == []


# --------------------------------------------------------------------------- children decisions


def test_autoscaling_clamps_replicas_and_wants_a_pdb() -> None:
    b = body(replicas=1, autoscaling={"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilization": 60})
    p = plan(md(b), Observed(), SETTINGS, T0)
    assert p.revisions[0].replicas == 2 and p.pdb is True
    assert p.autoscaling is not None and (p.autoscaling.min_replicas, p.autoscaling.max_replicas) == (2, 6)
    assert p.autoscaling.metrics[0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}


def test_cpu_autoscaling_without_cpu_requests_is_warned_once_per_spec_change() -> None:
    b = body(autoscaling={"maxReplicas": 4})
    first = plan(md(b), Observed(), SETTINGS, T0)
    assert ("Warning", "CPUTargetWithoutRequests") in [(e.type, e.reason) for e in first.events]
    again = plan(md(b, dict(first.status)), Observed(), SETTINGS, T1)
    assert again.events == ()
    fixed = body(autoscaling={"maxReplicas": 4}, server={"resources": {"requests": {"cpu": "1"}}})
    assert "CPUTargetWithoutRequests" not in [e.reason for e in plan(md(fixed), Observed(), SETTINGS, T0).events]


def test_single_replica_has_no_pdb_and_servicemonitor_follows_observation() -> None:
    p = plan(md(body(replicas=1)), Observed(), SETTINGS, T0)
    assert p.pdb is False and p.autoscaling is None and p.service_monitor is False
    assert plan(md(), Observed(servicemonitor_served=True), SETTINGS, T0).service_monitor is True


def test_gpu_shapes_the_pod() -> None:
    b = body(gpu={"count": 2, "type": "NVIDIA-L4"}, scheduling={"tolerations": [{"key": "x", "operator": "Exists"}]})
    rev = plan(md(b), Observed(), Settings(gpu_label_key="cloud.example.com/accelerator"), T0).revisions[0]
    assert rev.resources == {"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "2"}}
    assert rev.node_selector == {"cloud.example.com/accelerator": "NVIDIA-L4"}
    assert rev.tolerations == (
        {"key": "x", "operator": "Exists"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    env = {e["name"]: e.get("value") for e in rev.env}
    assert env["MODELSHIP_DEVICE"] == "cuda"


@pytest.mark.parametrize(
    ("uri", "kind", "server_uri"),
    [
        ("pvc://models/a/b/model.pt", "pvc", "file:///mnt/models/a/b/model.pt"),
        ("https://h.example.com/m/model.pt2?sig=1", "download", "file:///mnt/models/model.pt2"),
        ("s3://bucket/k/model.pt", "download", "file:///mnt/models/model.pt"),
        ("file:///models/model.pt", "image", "file:///models/model.pt"),
    ],
)
def test_model_sources(uri: str, kind: str, server_uri: str) -> None:
    rev = plan(md(body(model={"uri": uri, "version": "1"})), Observed(), SETTINGS, T0).revisions[0]
    assert rev.model.kind == kind and rev.model.server_uri == server_uri
    env = {e["name"]: e.get("value") for e in rev.env}
    assert env["MODELSHIP_MODEL_URI"] == server_uri and env["MODELSHIP_MODEL_VERSION"] == "1"
    if kind == "download":
        assert uri in rev.model.fetch_command


def test_deployment_state_from_a_real_deployment_manifest() -> None:
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "fraud-abc",
            "generation": 4,
            "labels": {"modelship.dev/revision": "abc", "modelship.dev/role": "stable"},
        },
        "spec": {"replicas": 3},
        "status": {
            "observedGeneration": 3,
            "replicas": 3,
            "updatedReplicas": 2,
            "readyReplicas": 2,
            "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}],
        },
    }
    state = DeploymentState.from_manifest(obj)
    assert state == DeploymentState(
        name="fraud-abc", revision="abc", role="stable", replicas=3, ready_replicas=2, available_replicas=1,
        updated_replicas=2, generation=4, observed_generation=3,
        conditions=({"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},),
        spec_replicas=3,
    )
    fresh = DeploymentState.from_manifest({"metadata": {"name": "x"}})  # no status yet
    assert (fresh.replicas, fresh.ready_replicas, fresh.observed_generation) == (0, 0, 0)


# --------------------------------------------------------------------------- failed status


def test_failed_status_marks_failure_and_keeps_the_rest() -> None:
    hash_ = h()
    healthy = dict(plan(md(), Observed((dep(hash_),)), SETTINGS, T0).status)
    status = failed_status(md(status=healthy, generation=2), "ChildRejected", "Deployment fraud-x: invalid", T1)
    assert status["phase"] == "Failed" and status["observedGeneration"] == 2
    assert conds(status) == {"Ready": "False", "Available": "True", "Progressing": "False", "Degraded": "True"}
    assert cond(status, "Degraded") == {
        "type": "Degraded", "status": "True", "observedGeneration": 2, "lastTransitionTime": "2026-03-01T12:05:00Z",
        "reason": "ChildRejected", "message": "Deployment fraud-x: invalid",
    }
    assert cond(status, "Available") == cond(healthy, "Available")  # untouched
    for key in ("stable", "history", "replicas", "readyReplicas", "selector", "url"):
        assert status[key] == healthy[key]
    # Failing again later does not move lastTransitionTime.
    again = failed_status(md(status=status, generation=2), "ChildRejected", "still invalid", T2)
    assert cond(again, "Degraded")["lastTransitionTime"] == "2026-03-01T12:05:00Z"


def test_failed_status_from_a_raw_body_that_does_not_parse() -> None:
    raw = {"metadata": {"name": "fraud", "generation": 5}, "spec": {"model": {}}}
    status = failed_status(raw, "InvalidSpec", "spec.model.uri is required", T0)
    assert status["phase"] == "Failed" and status["observedGeneration"] == 5
    assert cond(status, "Ready")["reason"] == "InvalidSpec"
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}


# --------------------------------------------------------------------------- monitoring


def test_monitoring_is_rendered_into_the_server_env_and_shapes_the_revision() -> None:
    plain = plan(md(), Observed(), SETTINGS, T0).revisions[0]
    # Without spec.monitoring the server's defaults apply; only the (derived) peers name is set.
    assert [e["name"] for e in plain.env if e["name"].startswith(("MODELSHIP_DRIFT", "MODELSHIP_FEEDBACK", "MODELSHIP_AUDIT"))
            ] == ["MODELSHIP_FEEDBACK_PEERS"]
    b = body(monitoring={
        "drift": {"reference": "file:///profiles/fraud.json", "window": 500, "interval": "1m", "threshold": 0.25},
        "feedback": {"enabled": False, "ttl": "2h", "maxBytes": "48Mi"},
        "audit": {"enabled": True, "sampleRate": 0.1, "inputs": "digest", "maskFields": ["client", "card"],
                  "maxBytes": "2Mi"},
    })
    rev = plan(md(b), Observed(), SETTINGS, T0).revisions[0]
    env = {e["name"]: e["value"] for e in rev.env}
    assert {k: v for k, v in env.items() if k.startswith(("MODELSHIP_DRIFT", "MODELSHIP_FEEDBACK", "MODELSHIP_AUDIT"))} == {
        "MODELSHIP_DRIFT_REFERENCE": "/profiles/fraud.json",
        "MODELSHIP_DRIFT_WINDOW": "500",
        "MODELSHIP_DRIFT_INTERVAL_S": "60",
        "MODELSHIP_DRIFT_THRESHOLD": "0.25",
        "MODELSHIP_FEEDBACK_TTL_S": "7200",
        "MODELSHIP_FEEDBACK_MAX_ENTRIES": "0",  # the server's "feedback off"
        "MODELSHIP_FEEDBACK_MAX_BYTES": "50331648",  # 48Mi, in bytes
        "MODELSHIP_AUDIT_LOG": "stdout",
        "MODELSHIP_AUDIT_SAMPLE_RATE": "0.1",
        "MODELSHIP_AUDIT_INPUTS": "digest",
        "MODELSHIP_AUDIT_MASK": "client,card",
        "MODELSHIP_AUDIT_MAX_BYTES": "2097152",  # 2Mi, in bytes
    }
    assert rev.hash != plain.hash  # a monitoring change is a new revision
    defaults = plan(md(body(monitoring={"drift": {"enabled": False}})), Observed(), SETTINGS, T0).revisions[0]
    env = {e["name"]: e["value"] for e in defaults.env}
    assert env["MODELSHIP_DRIFT_REFERENCE"] == "off" and env["MODELSHIP_AUDIT_LOG"] == "off"
    assert env["MODELSHIP_FEEDBACK_MAX_ENTRIES"] == "100000" and env["MODELSHIP_FEEDBACK_TTL_S"] == "3600"


def test_the_server_reads_the_monitoring_env_the_operator_renders() -> None:
    server_settings = pytest.importorskip("modelship_server.settings")
    b = body(monitoring={"drift": {"reference": "https://models.example.com/ref.json", "interval": "1.5m"},
                         "feedback": {"ttl": "90s", "maxEntries": 10, "maxBytes": "16Mi"},
                         "audit": {"enabled": True, "sampleRate": 0.5, "inputs": "summary", "maskFields": ["a"],
                                   "maxBytes": 1048576}})
    rev = plan(md(b), Observed(), SETTINGS, T0).revisions[0]
    s = server_settings.Settings.from_env({e["name"]: e["value"] for e in rev.env})
    assert (s.drift_reference, s.drift_interval_s, s.drift_window, s.drift_threshold) == (
        "https://models.example.com/ref.json", 90.0, 1000, 0.2)
    assert (s.feedback_ttl_s, s.feedback_max_entries, s.feedback_max_bytes) == (90.0, 10, 16 << 20)
    assert s.audit_max_bytes == 1 << 20
    assert (s.audit_log, s.audit_sample_rate, s.audit_inputs, s.audit_mask) == ("stdout", 0.5, "summary", "a")
    assert s.max_queue == 2048  # the CRD default, in rows


# --------------------------------------------------------------------------- feedback peers


def _env_of(rev: Any) -> dict[str, str]:
    return {e["name"]: e["value"] for e in rev.env}


def test_feedback_peers_name_the_headless_service_of_every_revision() -> None:
    p = plan(md(), Observed(), SETTINGS, T0)
    assert p.peers_service == "fraud-peers"
    assert _env_of(p.revisions[0])["MODELSHIP_FEEDBACK_PEERS"] == "fraud-peers.ml.svc.cluster.local:9090"
    short = plan(md(), Observed(), Settings(cluster_domain=""), T0)
    assert _env_of(short.revisions[0])["MODELSHIP_FEEDBACK_PEERS"] == "fraud-peers.ml.svc:9090"
    # Feedback off: the server keeps no predictions, so there is nobody to ask and no Service.
    off = plan(md(body(monitoring={"feedback": {"enabled": False}})), Observed(), SETTINGS, T0)
    assert off.peers_service is None and "MODELSHIP_FEEDBACK_PEERS" not in _env_of(off.revisions[0])


def test_feedback_peers_do_not_change_the_revision_hash() -> None:
    """The peers address is derived from name and namespace, not spec: existing objects keep
    their revision (their pods roll once, for the new variable, when the operator is upgraded)."""
    a, b = copy.deepcopy(body()), copy.deepcopy(body())
    b["metadata"]["namespace"] = "other"
    pa, pb = plan(md(a), Observed(), SETTINGS, T0), plan(md(b), Observed(), SETTINGS, T0)
    assert pa.revisions[0].hash == pb.revisions[0].hash
    assert _env_of(pb.revisions[0])["MODELSHIP_FEEDBACK_PEERS"] == "fraud-peers.other.svc.cluster.local:9090"


def test_a_canary_shares_the_peers_of_its_stable() -> None:
    """Feedback for a canary's prediction may reach a stable pod (one Service, or HTTPRoute
    weights): both revisions ask the same peers, and the Service stays while either keeps
    predictions -- also when only the canary turns feedback on."""
    off = body(monitoring={"feedback": {"enabled": False}})
    healthy = plan(md(off), Observed((dep(h(off)),)), SETTINGS, T0)
    assert healthy.peers_service is None
    on = body(model={"uri": "pvc://models/fraud/1.5.0/model.pt", "version": "1.5.0"})
    p = plan(md(on, dict(healthy.status), 2), Observed((dep(h(off)),)), SETTINGS, T1)
    assert [r.role for r in p.revisions] == ["stable", "canary"]
    stable, canary = p.revisions
    assert "MODELSHIP_FEEDBACK_PEERS" not in _env_of(stable)  # rendered from its own spec
    assert _env_of(canary)["MODELSHIP_FEEDBACK_PEERS"] == "fraud-peers.ml.svc.cluster.local:9090"
    assert p.peers_service == "fraud-peers"


def test_the_server_accepts_the_peers_the_operator_renders() -> None:
    server_settings = pytest.importorskip("modelship_server.settings")
    s = server_settings.Settings.from_env(_env_of(plan(md(), Observed(), SETTINGS, T0).revisions[0]))
    assert s.feedback_peer_list == ["fraud-peers.ml.svc.cluster.local:9090"]
