"""The rollout state machine through reconcile() against the kube double, with faults injected:
every manual action acts once whatever fails in between (issue 9 item 4), a lost status is
recovered from the records on the Deployments (issue 9 item 5), canary pods that crash are
aborted with the container's own reason (issue 10 item 2), a canary without traffic is never
promoted (issue 10 item 1).

The double's `fail_next` answers the next matching call as the API server would (503 here); an
operator that dies between two writes is a reconcile that raised there and a new one after.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from modelship_operator.kube import TemporaryError
from modelship_operator.planning import PROMOTE_ANNOTATION, ROLLOUT_RECORD
from modelship_operator.reconcile import Discovery, reconcile
from test_reconcile import NS
from test_reconcile_rollout import INTERVAL_S, REVISION, MetricsServer, Rollout, rollout_body, servers  # noqa: F401

TWO_GATES = [{"setWeight": 50}, {"pause": {}}, {"pause": {}}]


def gated_canary(r: Rollout, servers: dict[str, MetricsServer], steps: list | None = None,
                 **analysis: Any) -> dict:
    """Stable 1.0.0, then 1.1.0 as a canary at 50% whose first window passed: at the first gate."""
    body = rollout_body(2, **analysis)
    body["spec"]["rollout"]["steps"] = steps or TWO_GATES
    r.create(body)
    r.reconcile()
    stable = r.by_role()["stable"]["metadata"]["labels"][REVISION]
    r.ports[stable] = [servers["stable"].port]
    r.sync_pods()
    assert r.reconcile().phase == "Healthy"
    r.patch_spec("digits", {"model": {"version": "1.1.0"}})
    r.reconcile()
    r.ports[r.by_role()["canary"]["metadata"]["labels"][REVISION]] = [servers["canary"].port]
    for _ in range(3):
        r.sync_pods()
        r.reconcile(seconds=1)
    status = r.md("digits")["status"]
    assert status["canary"]["weight"] == 50 and status["canary"]["step"] == 0, status["canary"]
    servers["canary"].serve(ok=40)
    servers["stable"].serve(ok=40)
    r.reconcile(seconds=INTERVAL_S)
    status = r.md("digits")["status"]
    assert status["canary"]["step"] == 1 and status["phase"] == "Paused", status["canary"]
    return status


def annotate(r: Rollout, annotations: dict[str, Any]) -> None:
    r.kube.store.patch(r.md_type, NS, "digits", "application/merge-patch+json",
                       {"metadata": {"annotations": annotations}})


def reasons(r: Rollout) -> list[str]:
    return [e["reason"] for e in r.kube.events_for("digits")]


def record(r: Rollout, role: str) -> dict:
    return json.loads(r.by_role()[role]["metadata"]["annotations"][ROLLOUT_RECORD])


def test_a_promote_whose_annotation_removal_fails_acts_once(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    gated_canary(r, servers)
    annotate(r, {PROMOTE_ANNOTATION: "step@2026-03-01T12:01:00Z-5e1f"})
    r.kube.fail_next("patch", 503, "etcdserver: leader changed", kind="ModelDeployment")
    with pytest.raises(TemporaryError):  # the removal failed: the reconcile is retried
        r.reconcile()
    md = r.md("digits")
    assert md["status"]["canary"]["step"] == 2 and md["metadata"]["annotations"][PROMOTE_ANNOTATION]
    assert md["status"]["canary"]["actions"] == ["promote=step@2026-03-01T12:01:00Z-5e1f"]
    # the retry and every later reconcile: the second gate holds, the annotation goes
    for _ in range(3):
        r.reconcile()
    md = r.md("digits")
    assert md["status"]["canary"]["step"] == 2 and md["status"]["phase"] == "Paused"
    assert PROMOTE_ANNOTATION not in (md["metadata"].get("annotations") or {})
    assert reasons(r).count("StepPromoted") == 1
    assert "actions" not in md["status"]["canary"]  # forgotten once the annotation was seen gone


def test_a_promote_acts_once_when_the_operator_dies_before_its_status_write(
        servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    gated_canary(r, servers)
    template = r.by_role()["canary"]["spec"]["template"]
    generation = r.by_role()["canary"]["metadata"]["generation"]
    annotate(r, {PROMOTE_ANNOTATION: "step"})  # set by hand: no request id
    r.kube.fail_next("patch_status", 503, kind="ModelDeployment")
    with pytest.raises(TemporaryError):
        r.reconcile()
    # the children were applied first: the canary's record holds the step and the consumed id
    assert r.md("digits")["status"]["canary"]["step"] == 1
    assert (record(r, "canary")["step"], record(r, "canary")["actions"]) == (2, ["promote=step"])
    # ... in metadata only: same pod template, no new generation, no pod restarted
    assert r.by_role()["canary"]["spec"]["template"] == template
    assert r.by_role()["canary"]["metadata"]["generation"] == generation
    for _ in range(3):
        r.reconcile()
    md = r.md("digits")
    assert md["status"]["canary"]["step"] == 2 and md["status"]["phase"] == "Paused"
    assert PROMOTE_ANNOTATION not in (md["metadata"].get("annotations") or {})
    # the promote's own event died with that process; the recovery says what happened instead
    assert reasons(r).count("StepPromoted") == 0 and "RolloutStateRecovered" in reasons(r)
    assert md["status"]["stable"]["version"] == "1.0.0"


def test_an_abort_and_a_retry_each_act_once_through_failures(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    gated_canary(r, servers)
    annotate(r, {"modelship.dev/abort": "2026-03-01T12:01:00Z-aa"})
    r.kube.fail_next("patch", 503, kind="ModelDeployment")
    with pytest.raises(TemporaryError):
        r.reconcile()
    assert r.md("digits")["status"]["canary"]["aborted"]
    annotate(r, {"modelship.dev/retry": "2026-03-01T12:01:05Z-bb"})  # the abort is still there
    r.kube.fail_next("patch", 503, kind="ModelDeployment")
    with pytest.raises(TemporaryError):
        r.reconcile()
    canary = r.md("digits")["status"]["canary"]
    assert not canary["aborted"] and canary["step"] == 0  # retried, and the old abort not acted on again
    for _ in range(3):
        r.sync_pods()
        r.reconcile()
    md = r.md("digits")
    assert not md["status"]["canary"]["aborted"] and not md["metadata"].get("annotations")
    assert reasons(r).count("CanaryRetried") == 1


def test_a_wiped_status_mid_canary_is_recovered_from_the_deployments(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    before = gated_canary(r, servers)
    names = sorted(d["metadata"]["name"] for d in r.deployments())
    r.kube.store.set_status(r.md_type, NS, "digits", {})  # a restore that drops status
    r.reconcile()
    status = r.md("digits")["status"]
    assert sorted(d["metadata"]["name"] for d in r.deployments()) == names  # nothing pruned, nothing new
    assert status["stable"]["hash"] == before["stable"]["hash"] and status["stable"]["version"] == "1.0.0"
    canary = status["canary"]
    assert (canary["hash"], canary["step"], canary["stepStartedAt"]) == (
        before["canary"]["hash"], 1, before["canary"]["stepStartedAt"])
    assert canary["analysis"]["successes"] == 1 and status["phase"] == "Paused"
    assert {r.by_role()["stable"]["spec"]["replicas"], r.by_role()["canary"]["spec"]["replicas"]} == {1}
    assert "RolloutStateRecovered" in reasons(r)


def test_a_crash_looping_canary_is_aborted_with_the_containers_reason(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    gated_canary(r, servers)
    canary = r.by_role()["canary"]
    pod_type = r.kube.store.type_for("v1", "Pod")
    (pod,) = r.kube.store.list(pod_type, NS, f"{REVISION}={canary['metadata']['labels'][REVISION]}")
    r.kube.store.set_status(pod_type, NS, pod["metadata"]["name"], {
        "phase": "Running", "podIP": "127.0.0.1",
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-03-01T12:00:40Z"}],
        "containerStatuses": [{"name": "server", "restartCount": 4, "ready": False, "started": False,
                               "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                               "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                            "message": "model file not found"}}}]})
    r.reconcile()
    status = r.md("digits")["status"]
    assert status["canary"]["aborted"] and status["phase"] == "Degraded"
    assert status["canary"]["abortReason"] == (
        "canary pods restarted 4 time(s), more than maxCanaryRestarts 3: "
        "CrashLoopBackOff: Error exit 1: model file not found")
    warning = next(e for e in r.kube.events_for("digits") if e["reason"] == "CanaryAborted")
    assert warning["type"] == "Warning" and "CrashLoopBackOff: Error exit 1: model file not found" in warning["message"]


def test_a_canary_without_traffic_is_paused_not_promoted(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    body = rollout_body(2)
    body["spec"]["rollout"]["steps"] = [{"setWeight": 50}]  # nothing but evidence stands before 100%
    r.create(body)
    r.reconcile()
    r.ports[r.by_role()["stable"]["metadata"]["labels"][REVISION]] = [servers["stable"].port]
    r.sync_pods()
    r.reconcile()
    r.patch_spec("digits", {"model": {"version": "1.1.0"}})
    r.reconcile()
    r.ports[r.by_role()["canary"]["metadata"]["labels"][REVISION]] = [servers["canary"].port]
    for _ in range(3):
        r.sync_pods()
        r.reconcile(seconds=1)
    for _ in range(6):  # a minute of windows without a single request
        r.reconcile(seconds=INTERVAL_S)
    status = r.md("digits")["status"]
    assert status["stable"]["version"] == "1.0.0" and status["canary"]["step"] == 0
    assert status["phase"] == "Paused" and "inconclusive" in status["canary"]["heldReason"]
    assert "InconclusiveAnalysis" in reasons(r) and "Promoted" not in reasons(r)


def test_the_record_is_put_back_when_someone_strips_it(servers: dict[str, MetricsServer]) -> None:
    r = Rollout()
    gated_canary(r, servers)
    name = r.by_role()["canary"]["metadata"]["name"]
    dep_type = r.kube.store.type_for("apps/v1", "Deployment")
    r.kube.store.patch(dep_type, NS, name, "application/merge-patch+json",
                       {"metadata": {"annotations": {ROLLOUT_RECORD: None}}})
    asyncio.run(reconcile(r.md("digits"), r.kube, r.settings, r.now, discovery=Discovery(ttl=0), memory=r.memory))
    assert record(r, "canary")["step"] == 1
