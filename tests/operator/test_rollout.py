"""Table tests of the canary state machine: the pure plan driven through whole rollouts.

`World` plays everything around the plan: it keeps the ModelDeployment's body (spec, status,
annotations), feeds the plan what a Deployment controller would report (each rendered
Deployment converges to its replicas, ready unless the test marks its revision broken), writes
the plan's status back and removes the annotations the plan consumed — what reconcile does.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from modelship_operator.analysis import Measurement, judge
from modelship_operator.planning import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    AnalysisResult,
    DeploymentState,
    Observed,
    PodState,
    Plan,
    analysis_due,
    next_analysis_at,
    plan,
    revision_hash,
)
from modelship_operator.render import render
from modelship_operator.settings import Settings
from modelship_operator.spec import AnalysisSpec, ModelDeployment

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
SETTINGS = Settings()
STEPS = [{"setWeight": 25}, {"pause": {"duration": "1m"}}, {"setWeight": 50}, {"pause": {}}]
LIMITS = AnalysisSpec(interval="30s", max_error_rate=0.01, max_latency_p99_ms=250, min_requests=50, failure_limit=2)


def spec(version: str = "1.0.0", replicas: int = 4, steps: list | None = None,
         rolloutExtra: dict | None = None, **rollout: Any) -> dict:  # noqa: N803 (the API's spelling)
    return {
        "model": {"uri": f"pvc://models/fraud/{version}/model.pt", "version": version},
        "replicas": replicas,
        "rollout": {"steps": STEPS if steps is None else steps,
                    "analysis": {"interval": "30s", "maxLatencyP99Ms": 250, "failureLimit": 2}, **rollout,
                    **(rolloutExtra or {})},
    }


def verdict(kind: str) -> Any:
    """A real judgement of a measurement of the given kind against LIMITS."""
    m = {
        "pass": Measurement(requests=400, errors=1, latency_p99_ms=80.0),
        "fail": Measurement(requests=400, errors=40, latency_p99_ms=300.0),
        "inconclusive": Measurement(requests=7, errors=0, latency_p99_ms=50.0),
    }[kind]
    return judge(m, LIMITS)


@dataclass
class World:
    spec: dict
    now: datetime = T0
    httproute: bool = False
    broken: set[str] = field(default_factory=set)  # revisions whose pods never become ready
    annotations: dict[str, str] = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    generation: int = 1
    last: Plan | None = None
    status_writes: bool = True  # False: the status write is lost (the operator died before it)
    clear_actions: bool = True  # False: removing consumed action annotations fails
    ready_limit: dict[str, int] = field(default_factory=dict)  # role -> at most this many ready pods
    pods_observed: bool = True
    pod_restarts: dict[int, int] = field(default_factory=dict)  # canary pod index -> restartCount
    pod_problem: str = ""
    last_events: list = field(default_factory=list)  # every event of the last settle()

    def md(self) -> ModelDeployment:
        return ModelDeployment.from_body({
            "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "fraud", "namespace": "ml", "uid": "uid-1", "generation": self.generation,
                         "annotations": dict(self.annotations)},
            # what the API server stores and returns: JSON, no shared references
            "spec": copy.deepcopy(self.spec), "status": json.loads(json.dumps(self.status)),
        })

    def hash(self, spec_: dict | None = None) -> str:
        md = self.md() if spec_ is None else ModelDeployment.from_body(
            {"metadata": {"name": "fraud", "namespace": "ml"}, "spec": spec_})
        return revision_hash(md, SETTINGS)

    def set_spec(self, new: dict) -> None:
        self.spec, self.generation = copy.deepcopy(new), self.generation + 1

    def reconcile(self, analysis: AnalysisResult | None = None) -> Plan:
        p = plan(self.md(), Observed(tuple(self.deployments.values()), self.httproute, False, analysis,
                                     pods=self.observe_pods()), SETTINGS, self.now)
        manifests = {m["metadata"]["name"]: m for m in render(p) if m["kind"] == "Deployment"}  # every plan renders
        if self.status_writes:
            self.status = json.loads(json.dumps(p.status))
        if self.clear_actions:
            for name in p.consumed_actions:
                self.annotations.pop(name, None)
        # The Deployment controller: each rendered Deployment converges, carrying the annotations
        # rendered on it; retained ones stay as they are; the others go.
        kept = {h: d for h, d in self.deployments.items() if d.name in p.retain}
        self.deployments = {
            r.hash: DeploymentState.from_manifest({**manifests[r.name], "status": {
                "replicas": r.replicas, "readyReplicas": ready, "availableReplicas": ready,
                "updatedReplicas": r.replicas, "observedGeneration": 1}})
            for r in p.revisions
            for ready in [0 if r.hash in self.broken else self.ready_limit.get(r.role, r.replicas)]
        }
        self.deployments = {**kept, **self.deployments}
        self.last = p
        return p

    def observe_pods(self) -> tuple[PodState, ...] | None:
        """The canary's pods as the kubelet reports them: `pod_restarts` per pod, ready as the
        Deployment says."""
        if not self.pods_observed:
            return None
        canary = next((d for d in self.deployments.values() if d.role == "canary"), None)
        if canary is None:
            return ()
        return tuple(
            PodState(f"{canary.name}-{i}", canary.revision, ready=i < canary.ready_replicas,
                     restarts=self.pod_restarts.get(i, 0), problem=self.pod_problem if i >= canary.ready_replicas
                     or self.pod_restarts.get(i) else "", started=True)
            for i in range(canary.replicas))

    def settle(self, analysis: AnalysisResult | None = None) -> list[str]:
        """Reconcile until nothing changes; the event reasons seen on the way."""
        reasons: list[str] = []
        p = self.reconcile(analysis)
        reasons += [e.reason for e in p.events]
        self.last_events = list(p.events)
        for _ in range(10):
            before = (copy.deepcopy(self.status), dict(self.deployments))
            p = self.reconcile()
            reasons += [e.reason for e in p.events]
            self.last_events += list(p.events)
            if (self.status, self.deployments) == before and not p.events:
                return reasons
        raise AssertionError("the plan did not settle")

    def measure(self, kind: str, after: timedelta = timedelta(seconds=30)) -> list[str]:
        """An analysis window of `after` ends now with a verdict of `kind`, passed to the plan."""
        self.now += after
        canary = self.status["canary"]
        return self.settle(AnalysisResult(canary["hash"], self.now, verdict(kind)))

    @property
    def canary(self) -> dict:
        return self.status.get("canary") or {}

    def replicas(self) -> dict[str, int]:
        assert self.last is not None
        return {r.role: r.replicas for r in self.last.revisions}


def deployed(**kw: Any) -> World:
    """A world whose first revision is stable and healthy."""
    w = World(spec(**kw))
    w.settle()
    assert w.status["phase"] == "Healthy" and "canary" not in w.status
    return w


def start_canary(w: World, version: str = "2.0.0", **kw: Any) -> list[str]:
    new = copy.deepcopy(w.spec)
    new["model"] = {"uri": f"pvc://models/fraud/{version}/model.pt", "version": version}
    new.update(kw)
    w.set_spec(new)
    return w.settle()


# --------------------------------------------------------------------------- steps


def test_first_deploy_goes_straight_to_stable() -> None:
    w = World(spec())
    reasons = w.settle()
    assert w.status["phase"] == "Healthy" and w.status["stable"]["version"] == "1.0.0"
    assert "canary" not in w.status and w.replicas() == {"stable": 4}
    assert reasons == ["RevisionCreated", "Ready"]


def test_steps_progress_through_weights_and_a_timed_pause() -> None:
    w = deployed()
    v1 = w.status["stable"]["hash"]
    reasons = start_canary(w)
    # setWeight 25 of 4 replicas: one canary pod; it holds until a window at 25% passed.
    assert reasons == ["CanaryStarted"]
    assert w.canary["step"] == 0 and w.canary["weight"] == 25 and w.canary["requestedWeight"] == 25
    assert w.canary["holdReason"] == ("waiting for 1 passing analysis window(s) at 25% "
                                      "(0 passed, 0 inconclusive, 0 failed)")
    assert w.replicas() == {"stable": 3, "canary": 1}
    assert w.status["phase"] == "Progressing" and w.status["stable"]["hash"] == v1
    assert w.last is not None and w.last.requeue_after == 30.0  # the analysis window closes
    w.now += timedelta(hours=1)  # time alone moves nothing
    assert w.settle() == [] and w.canary["step"] == 0

    # A passing window at 25%: on to the timed pause, whose windows count afresh.
    reasons = w.measure("pass")
    assert reasons == ["AnalysisPassed", "RolloutStep"]
    assert w.canary["step"] == 1 and w.canary["analysis"]["lastTime"] == w.canary["stepStartedAt"]
    assert "stepPassed" not in w.canary["analysis"] and w.canary["analysis"]["successes"] == 1
    assert "step 2 of 4 (pause 1m)" in next(c for c in w.status["conditions"] if c["type"] == "Progressing")["message"]
    w.now += timedelta(seconds=59)
    assert w.settle() == [] and w.canary["step"] == 1
    # The minute is up, but the pause saw no passing window of its own: it holds.
    w.now += timedelta(seconds=1)
    assert w.settle() == [] and w.canary["step"] == 1
    assert w.canary["holdReason"].startswith("waiting for 1 passing analysis window(s) at 25%")
    reasons = w.measure("pass", timedelta(seconds=0))
    assert reasons == ["AnalysisPassed", "RolloutStep"]
    assert w.canary["step"] == 2 and w.canary["weight"] == 50 and w.replicas() == {"stable": 2, "canary": 2}
    assert w.measure("pass") == ["AnalysisPassed", "RolloutPaused"]
    assert w.canary["step"] == 3 and w.status["phase"] == "Paused"
    progressing = next(c for c in w.status["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "Unknown" and progressing["reason"] == "RolloutPaused"  # as a paused Deployment


def test_a_manual_pause_waits_until_promoted_one_step() -> None:
    w = deployed()
    v1 = w.status["stable"]["hash"]
    start_canary(w)
    to_manual_pause(w)
    assert w.status["phase"] == "Paused" and w.canary["step"] == 3
    v2 = w.canary["hash"]

    w.now += timedelta(hours=5)  # a manual pause has no timer
    assert w.settle() == [] and w.status["phase"] == "Paused"

    w.annotations[PROMOTE_ANNOTATION] = "step"
    p = w.reconcile()
    assert p.consumed_actions == (PROMOTE_ANNOTATION,) and PROMOTE_ANNOTATION not in w.annotations
    assert w.canary["step"] == 4 and w.canary["requestedWeight"] == 100
    reasons = [e.reason for e in p.events] + w.settle()
    assert "StepPromoted" in reasons and "Promoted" in reasons
    # Promotion: the canary is the stable, the old stable is not rendered any more (pruned).
    assert w.status["stable"]["hash"] == v2 and w.status["stable"]["version"] == "2.0.0"
    assert "canary" not in w.status and w.status["phase"] == "Healthy"
    assert [r.hash for r in w.last.revisions] == [v2] and w.replicas() == {"stable": 4}
    (entry,) = w.status["history"]
    assert (entry["hash"], entry["version"], entry["outcome"]) == (v1, "1.0.0", "Superseded")
    assert entry["spec"]["model"]["version"] == "1.0.0"  # what rollback restores


def test_promote_full_skips_every_remaining_step() -> None:
    w = deployed()
    start_canary(w)
    assert w.canary["step"] == 0
    w.annotations[PROMOTE_ANNOTATION] = "full"
    reasons = w.settle()
    assert reasons[0] == "PromotedManually" and "Promoted" in reasons
    assert w.status["stable"]["version"] == "2.0.0" and "canary" not in w.status


def test_empty_steps_promote_as_soon_as_the_canary_is_ready() -> None:
    w = deployed(steps=[])
    reasons = start_canary(w)
    assert reasons == ["CanaryStarted", "Promoted"]  # Ready all along: the stable kept serving
    assert w.status["stable"]["version"] == "2.0.0" and w.replicas() == {"stable": 4}


def test_the_canary_takes_no_traffic_before_it_is_ready() -> None:
    w = deployed()
    w.broken.add(w.hash({**spec(), "model": {"uri": "pvc://models/fraud/2.0.0/model.pt", "version": "2.0.0"}}))
    start_canary(w)
    # Its pod exists but is not ready: weight 0, stable keeps all 4, the step does not advance.
    assert w.canary["step"] == 0 and w.canary["requestedWeight"] == 25 and w.canary["weight"] == 0
    assert w.replicas() == {"stable": 4, "canary": 1}
    assert "lastTime" not in w.canary["analysis"]  # no traffic: no analysis window yet
    assert w.canary["holdReason"] == "waiting for the canary pods to be ready for 25%"
    assert w.last is not None and w.last.analysis is None
    assert w.last.requeue_after == 300.0  # rollout.readyTimeout (5m) runs out then
    w.now += timedelta(minutes=4, seconds=59)
    assert w.settle() == [] and w.canary["step"] == 0 and not w.canary["aborted"]


def test_hpa_changing_the_total_mid_rollout_resplits() -> None:
    w = deployed()
    start_canary(w)
    assert w.replicas() == {"stable": 3, "canary": 1}
    w.spec["replicas"] = 10  # the HPA writes /scale: no new revision, no new generation needed
    w.settle()
    assert w.replicas() == {"stable": 7, "canary": 3} and w.canary["weight"] == 30
    assert w.canary["step"] == 0 and w.status["replicas"] == 10
    w.spec["replicas"] = 2
    w.settle()
    assert w.replicas() == {"stable": 1, "canary": 1} and w.canary["weight"] == 50


# --------------------------------------------------------------------------- analysis


def test_failed_analyses_abort_after_the_failure_limit() -> None:
    w = deployed()
    start_canary(w)
    assert w.canary["analysis"]["lastTime"] == "2026-03-01T12:00:00Z"  # window opened with traffic
    md = w.md()
    assert not analysis_due(md, T0 + timedelta(seconds=29)) and analysis_due(md, T0 + timedelta(seconds=30))
    assert next_analysis_at(md) == T0 + timedelta(seconds=30)

    reasons = w.measure("fail")
    assert reasons == ["AnalysisFailed"] and not w.canary["aborted"]
    assert w.canary["analysis"]["failures"] == 1 and w.canary["analysis"]["verdict"] == "Fail"
    assert w.canary["analysis"]["errorRate"] == 0.1 and w.canary["analysis"]["latencyP99Ms"] == 300.0

    reasons = w.measure("fail")
    assert reasons == ["AnalysisFailed", "CanaryAborted"]
    canary = w.canary
    assert canary["aborted"] and canary["weight"] == 0 and canary["requestedWeight"] == 0
    assert "failureLimit 2" in canary["abortReason"] and "error rate 10.00% above 1.00%" in canary["abortReason"]
    assert w.replicas() == {"stable": 4, "canary": 0}  # the canary Deployment stays, at 0 pods
    assert w.status["phase"] == "Degraded"
    degraded = next(c for c in w.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "CanaryAborted"
    assert "p99 300.0ms above 250ms" in degraded["message"]
    assert w.status["history"][-1]["outcome"] == "Aborted" and w.status["history"][-1]["version"] == "2.0.0"
    assert w.last is not None and w.last.analysis is None and w.last.requeue_after is None

    # It stays aborted: time passes, even a passing verdict changes nothing.
    assert w.measure("pass", timedelta(minutes=10)) == [] and w.canary["aborted"]
    w.annotations[PROMOTE_ANNOTATION] = "full"
    assert w.settle() == ["PromoteIgnored"] and w.canary["aborted"]


def test_inconclusive_intervals_never_count_toward_abort() -> None:
    w = deployed(steps=[{"setWeight": 25}, {"pause": {}}])
    start_canary(w)
    for _ in range(2):
        assert w.measure("inconclusive") == ["AnalysisInconclusive"]
    analysis = w.canary["analysis"]
    assert analysis["failures"] == 0 and analysis["successes"] == 0 and analysis["verdict"] == "Inconclusive"
    assert "only 7 requests" in analysis["message"] and not w.canary["aborted"]
    assert analysis["stepInconclusive"] == 2 and analysis["inconclusiveStreak"] == 2
    assert w.canary["step"] == 0  # inconclusive windows hold the step
    assert w.measure("pass") == ["AnalysisPassed", "RolloutPaused"] and w.canary["analysis"]["successes"] == 1


def test_a_verdict_counts_once_and_only_for_its_canary() -> None:
    w = deployed()
    start_canary(w)
    w.now += timedelta(seconds=30)
    result = AnalysisResult(w.canary["hash"], w.now, verdict("fail"))
    w.settle(result)
    assert w.canary["analysis"]["failures"] == 1
    # the same window passed again (reconcile retried): not counted twice
    assert [e.reason for e in w.reconcile(result).events] == [] and w.canary["analysis"]["failures"] == 1
    # a measurement of another revision is ignored
    stale = AnalysisResult("0123456789", w.now + timedelta(seconds=30), verdict("fail"))
    w.settle(stale)
    assert w.canary["analysis"]["failures"] == 1


def test_manual_abort_then_retry_restarts_from_step_one() -> None:
    w = deployed()
    start_canary(w)
    w.measure("fail")
    w.annotations[ABORT_ANNOTATION] = "yes"
    assert w.settle() == ["CanaryAborted"]
    assert w.canary["aborted"] and "aborted by user request" in w.canary["abortReason"]
    w.annotations[RETRY_ANNOTATION] = "1"
    w.now += timedelta(minutes=1)
    reasons = w.settle()
    assert reasons[0] == "CanaryRetried" and "Recovered" in reasons
    canary = w.canary
    assert not canary["aborted"] and "abortReason" not in canary
    assert canary["analysis"]["lastTime"] == "2026-03-01T12:01:30Z" and "failures" not in canary["analysis"]
    assert canary["step"] == 0 and canary["weight"] == 25 and w.status["phase"] == "Progressing"


# --------------------------------------------------------------------------- spec changes


def test_a_spec_change_mid_rollout_replaces_the_canary() -> None:
    w = deployed()
    start_canary(w, "2.0.0")
    v2 = w.canary["hash"]
    to_manual_pause(w)
    reasons = start_canary(w, "3.0.0")
    assert reasons[:2] == ["CanaryReplaced", "CanaryStarted"]
    assert w.canary["version"] == "3.0.0" and w.canary["step"] == 0 and w.canary["revision"] == 3
    assert v2 not in {r.hash for r in w.last.revisions}  # the old canary is pruned
    assert w.status["history"][-1]["hash"] == v2 and w.status["history"][-1]["outcome"] == "Replaced"


def test_returning_to_the_stable_spec_cancels_the_canary() -> None:
    w = deployed()
    v1_spec = copy.deepcopy(w.spec)
    v1 = w.status["stable"]["hash"]
    start_canary(w)
    v2 = w.canary["hash"]
    w.set_spec(v1_spec)
    reasons = w.settle()
    assert reasons == ["CanaryCancelled"]
    assert "canary" not in w.status and w.status["stable"]["hash"] == v1 and w.status["phase"] == "Healthy"
    assert w.replicas() == {"stable": 4} and w.status["stable"]["revision"] == 1
    assert (w.status["history"][-1]["hash"], w.status["history"][-1]["outcome"]) == (v2, "Cancelled")


def test_rollback_to_an_older_revision_is_a_canary_of_that_revision() -> None:
    w = deployed()
    v1_spec, v1 = copy.deepcopy(w.spec), w.status["stable"]["hash"]
    start_canary(w)
    w.annotations[PROMOTE_ANNOTATION] = "full"
    w.settle()
    v2 = w.status["stable"]["hash"]
    # `rollback` patches the spec back to the history entry's pod-shaping spec.
    entry = w.status["history"][-1]
    w.set_spec({**w.spec, **entry["spec"]})
    assert w.spec["model"] == v1_spec["model"]
    w.settle()
    assert w.canary["hash"] == v1 and w.canary["version"] == "1.0.0" and w.canary["revision"] == 3
    w.annotations[PROMOTE_ANNOTATION] = "full"
    w.settle()
    assert w.status["stable"]["hash"] == v1
    assert [(h["hash"], h["outcome"]) for h in w.status["history"]] == [(v1, "Superseded"), (v2, "RolledBack")]


def test_history_keeps_at_most_history_limit_entries() -> None:
    w = World({**spec(steps=[]), "historyLimit": 2})
    w.settle()
    for version in ("2.0.0", "3.0.0", "4.0.0"):
        start_canary(w, version)
    assert [h["version"] for h in w.status["history"]] == ["2.0.0", "3.0.0"]
    assert w.status["stable"]["version"] == "4.0.0"


def test_a_restarted_operator_resumes_at_the_same_step_from_status_alone() -> None:
    w = deployed()
    start_canary(w)
    w.measure("pass")  # t+30s: on to the 1m pause
    w.now += timedelta(seconds=20)  # inside the pause, before its first analysis is due
    w.settle()
    snapshot = json.loads(json.dumps(w.status))
    # A new process: nothing but the stored object and the live Deployments.
    fresh = World(copy.deepcopy(w.spec), now=w.now, status=snapshot, deployments=dict(w.deployments),
                  generation=w.generation)
    p = fresh.reconcile()
    assert p.status == snapshot and p.events == ()  # a fixed point: no write, no event
    assert fresh.canary["step"] == 1 and fresh.canary["weight"] == 25
    assert p.requeue_after == 10.0  # the pause's first window still closes 30s after it opened
    fresh.now += timedelta(seconds=10)
    fresh.settle(AnalysisResult(fresh.canary["hash"], fresh.now, verdict("pass")))
    assert fresh.last is not None and fresh.last.requeue_after == 30.0  # pause end and next window
    fresh.now += timedelta(seconds=30)
    fresh.settle()
    assert fresh.canary["step"] == 2


# --------------------------------------------------------------------------- gateway mode


def gateway_spec(**kw: Any) -> dict:
    return spec(traffic="auto", gateway={"parentRefs": [{"name": "public"}], "hostnames": ["fraud.example.com"],
                                          "mirrorPercent": 20}, **kw)


def test_gateway_mode_routes_by_weight_and_mirrors_only_to_a_ready_canary() -> None:
    w = World(gateway_spec(), httproute=True)
    w.settle()
    assert w.status["trafficMode"] == "gateway"
    route = w.last.route
    assert route is not None and [(b.service, b.weight) for b in route.backends] == [("fraud-stable", 100)]
    new = gateway_spec()
    new["model"] = {"uri": "pvc://models/fraud/2.0.0/model.pt", "version": "2.0.0"}
    v2 = w.hash(new)

    w.broken.add(v2)
    w.set_spec(new)
    w.settle()
    route = w.last.route
    assert [(b.service, b.hash, b.weight) for b in route.backends] == [
        ("fraud-stable", w.status["stable"]["hash"], 100), ("fraud-canary", v2, 0)]
    assert route.mirror_service is None and w.canary["weight"] == 0
    assert w.replicas() == {"stable": 4, "canary": 1}  # stable keeps every pod in gateway mode

    w.broken.clear()
    w.settle()
    route = w.last.route
    assert [b.weight for b in route.backends] == [75, 25] and w.canary["weight"] == 25
    assert (route.mirror_service, route.mirror_percent) == ("fraud-canary", 20)
    assert w.replicas() == {"stable": 4, "canary": 1} and w.status["replicas"] == 4

    w.measure("pass")
    w.measure("pass")
    w.now += timedelta(seconds=30)
    w.settle()
    assert [b.weight for b in w.last.route.backends] == [50, 50] and w.replicas() == {"stable": 4, "canary": 2}
    manifests = {(m["kind"], m["metadata"]["name"]) for m in render(w.last)}
    assert {("Service", "fraud-stable"), ("Service", "fraud-canary"), ("HTTPRoute", "fraud")} <= manifests

    w.measure("pass")
    assert w.status["phase"] == "Paused"
    w.annotations[PROMOTE_ANNOTATION] = "step"
    w.settle()
    route = w.last.route
    assert [(b.service, b.hash, b.weight) for b in route.backends] == [("fraud-stable", v2, 100)]
    assert route.mirror_service is None and w.replicas() == {"stable": 4}


def test_auto_falls_back_to_replicas_without_the_httproute_crd() -> None:
    w = World(gateway_spec(), httproute=False)
    w.settle()
    assert w.status["trafficMode"] == "replicas" and w.last.route is None
    assert "HTTPRoute" not in {m["kind"] for m in render(w.last)}


def test_explicit_gateway_without_the_crd_warns_and_splits_replicas() -> None:
    s = gateway_spec()
    s["rollout"]["traffic"] = "gateway"
    s["rollout"]["gateway"].pop("mirrorPercent")
    w = World(s, httproute=False)
    reasons = w.settle()
    assert "GatewayAPIUnavailable" in reasons and w.status["trafficMode"] == "replicas"


@pytest.mark.parametrize("total, weight, stable, canary", [(4, 25, 3, 1), (10, 25, 7, 3), (1, 25, 1, 1), (3, 50, 1, 2)])
def test_replicas_mode_split_at_the_first_step(total: int, weight: int, stable: int, canary: int) -> None:
    w = deployed(replicas=total, steps=[{"setWeight": weight}, {"pause": {}}])
    start_canary(w)
    assert w.replicas() == {"stable": stable, "canary": canary} and w.status["phase"] == "Progressing"
    w.measure("pass")
    assert w.replicas() == {"stable": stable, "canary": canary} and w.status["phase"] == "Paused"


def test_an_action_without_a_canary_is_consumed_and_reported() -> None:
    w = deployed()
    w.annotations[PROMOTE_ANNOTATION] = "full"
    p = w.reconcile()
    assert p.consumed_actions == (PROMOTE_ANNOTATION,) and [e.reason for e in p.events] == ["ActionIgnored"]
    assert w.settle() == [] and w.status["phase"] == "Healthy"


def to_manual_pause(w: World) -> None:
    """Walk STEPS to the manual pause (step 4 of 4) with passing windows: each traffic step needs one."""
    assert w.canary["step"] == 0
    assert w.measure("pass")[-1] == "RolloutStep" and w.canary["step"] == 1  # setWeight 25 passed
    assert w.measure("pass") == ["AnalysisPassed"]  # the pause's own window
    w.now += timedelta(seconds=30)  # the 1m pause is over
    assert w.settle() == ["RolloutStep"] and w.canary["step"] == 2
    assert w.measure("pass") == ["AnalysisPassed", "RolloutPaused"] and w.canary["step"] == 3


# --------------------------------------------------------------------------- evidence (issue 10 item 1)


def condition(w: World, type_: str) -> dict:
    return next(c for c in w.status["conditions"] if c["type"] == type_)


def test_a_canary_without_traffic_is_never_promoted_and_pauses_after_the_inconclusive_limit() -> None:
    w = deployed()
    start_canary(w)
    assert w.measure("inconclusive") == ["AnalysisInconclusive"]
    assert w.measure("inconclusive") == ["AnalysisInconclusive"]
    assert w.canary["step"] == 0 and w.status["phase"] == "Progressing"
    assert w.canary["holdReason"] == ("waiting for 1 passing analysis window(s) at 25% "
                                      "(0 passed, 2 inconclusive, 0 failed)")
    # the third in a row (inconclusiveLimit 3): the rollout pauses itself, saying why
    assert w.measure("inconclusive") == ["AnalysisInconclusive", "InconclusiveAnalysis"]
    assert w.status["phase"] == "Paused" and w.canary["step"] == 0 and w.canary["weight"] == 25
    progressing = condition(w, "Progressing")
    assert progressing["reason"] == "InconclusiveAnalysis"
    assert "3 inconclusive analysis windows in a row (inconclusiveLimit 3)" in progressing["message"]
    assert "only 7 requests in the window, 50 needed" in w.canary["heldReason"]
    assert condition(w, "Degraded")["status"] == "False"
    # silence: it stays where it is, and says so once
    for _ in range(6):
        assert w.measure("inconclusive") == ["AnalysisInconclusive"]
    assert w.canary["step"] == 0 and w.status["stable"]["version"] == "1.0.0" and w.status["phase"] == "Paused"
    # even a passing window does not resume it: a human decides
    assert w.measure("pass") == ["AnalysisPassed"] and w.status["phase"] == "Paused"
    # a manual promote does
    w.annotations[PROMOTE_ANNOTATION] = "step"
    reasons = w.settle()
    assert reasons[0] == "StepPromoted" and "resumed and completed by a manual promote" in w.last_events[0].message
    assert w.canary["step"] == 1 and w.status["phase"] == "Progressing" and "heldReason" not in w.canary
    assert "inconclusiveStreak" not in w.canary["analysis"]


def test_on_inconclusive_abort_aborts_instead_of_pausing() -> None:
    w = deployed()
    w.spec["rollout"]["analysis"]["onInconclusive"] = "Abort"
    w.spec["rollout"]["analysis"]["inconclusiveLimit"] = 2
    start_canary(w)
    assert w.measure("inconclusive") == ["AnalysisInconclusive"]
    assert w.measure("inconclusive") == ["AnalysisInconclusive", "CanaryAborted"]
    assert w.canary["aborted"] and "2 inconclusive analysis windows in a row" in w.canary["abortReason"]
    assert w.status["phase"] == "Degraded" and w.status["stable"]["version"] == "1.0.0"


def test_a_passing_window_resets_the_inconclusive_streak() -> None:
    w = deployed(steps=[{"setWeight": 25}, {"pause": {"duration": "10m"}}])
    start_canary(w)
    w.measure("inconclusive")
    w.measure("inconclusive")
    assert w.measure("pass") == ["AnalysisPassed", "RolloutStep"]
    for _ in range(2):
        assert w.measure("inconclusive") == ["AnalysisInconclusive"]
    assert w.status["phase"] == "Progressing" and w.canary["analysis"]["inconclusiveStreak"] == 2


def test_min_passed_windows_are_counted_per_step() -> None:
    w = deployed()
    w.spec["rollout"]["analysis"]["minPassedWindows"] = 2
    start_canary(w)
    assert w.measure("pass") == ["AnalysisPassed"] and w.canary["step"] == 0
    assert w.canary["analysis"]["stepPassed"] == 1
    assert w.measure("inconclusive") == ["AnalysisInconclusive"] and w.canary["step"] == 0
    assert w.measure("pass") == ["AnalysisPassed", "RolloutStep"] and w.canary["step"] == 1
    # the pause's windows start from zero: its two are needed besides its minute
    analysis = w.canary["analysis"]
    assert (analysis["successes"], analysis.get("stepPassed", 0)) == (2, 0)
    assert w.measure("pass") == ["AnalysisPassed"]
    assert w.measure("pass") == ["AnalysisPassed", "RolloutStep"] and w.canary["step"] == 2  # 1m and 2 windows


def test_steps_at_weight_zero_need_no_windows() -> None:
    w = deployed(steps=[{"pause": {"duration": "1m"}}, {"setWeight": 50}, {"pause": {}}])
    start_canary(w)
    assert w.canary["step"] == 0 and w.canary["requestedWeight"] == 0 and w.replicas() == {"stable": 4, "canary": 0}
    assert "lastTime" not in w.canary["analysis"]  # no traffic, no window, nothing to wait for but time
    w.now += timedelta(minutes=1)
    assert w.settle() == ["RolloutStep"] and w.canary["step"] == 1 and w.canary["weight"] == 50


def test_a_failed_window_does_not_advance_a_step() -> None:
    w = deployed()
    start_canary(w)
    assert w.measure("fail") == ["AnalysisFailed"] and w.canary["step"] == 0
    assert w.canary["holdReason"].endswith("(0 passed, 0 inconclusive, 1 failed)")
    assert w.measure("pass") == ["AnalysisPassed", "RolloutStep"]


# --------------------------------------------------------------------------- broken canaries (issue 10 item 2)


def test_a_canary_not_ready_within_ready_timeout_is_aborted_with_the_containers_reason() -> None:
    w = deployed()
    w.broken.add(w.hash({**spec(), "model": {"uri": "pvc://models/fraud/2.0.0/model.pt", "version": "2.0.0"}}))
    w.pod_problem = "CrashLoopBackOff: Error exit 1: model file not found"
    start_canary(w)
    assert w.canary["unreadySince"] == "2026-03-01T12:00:00Z" and w.last.requeue_after == 300.0
    w.now += timedelta(minutes=5)
    reasons = w.settle()
    assert reasons == ["CanaryAborted"]
    canary = w.canary
    assert canary["aborted"] and canary["abortReason"] == (
        "canary pods not Ready within readyTimeout 5m (asked for at 2026-03-01T12:00:00Z): "
        "CrashLoopBackOff: Error exit 1: model file not found")
    degraded = condition(w, "Degraded")
    assert degraded["status"] == "True" and "CrashLoopBackOff: Error exit 1: model file not found" in degraded["message"]
    event = next(e for e in w.last_events if e.reason == "CanaryAborted")
    assert event.type == "Warning" and "model file not found" in event.message
    assert w.replicas() == {"stable": 4, "canary": 0} and w.status["history"][-1]["outcome"] == "Aborted"


def test_a_step_asking_for_more_pods_than_become_ready_is_aborted_after_ready_timeout() -> None:
    w = deployed(steps=[{"setWeight": 25}, {"setWeight": 75}, {"pause": {}}], rolloutExtra={"readyTimeout": "2m"})
    w.ready_limit["canary"] = 1  # only one canary pod ever becomes ready
    start_canary(w)
    assert "unreadySince" not in w.canary  # 1 pod asked for, 1 ready
    w.measure("pass")
    assert w.canary["step"] == 1 and w.canary["unreadySince"] == "2026-03-01T12:00:30Z"
    w.now += timedelta(minutes=1, seconds=59)
    assert w.settle() == [] and not w.canary["aborted"]
    w.now += timedelta(seconds=1)
    assert w.settle()[0] == "CanaryAborted" and "readyTimeout 2m" in w.canary["abortReason"]


def test_canary_restarts_beyond_the_limit_abort() -> None:
    w = deployed(replicas=4, steps=[{"setWeight": 50}, {"pause": {}}])
    start_canary(w)
    w.pod_problem = "Running: OOMKilled exit 137"
    w.pod_restarts = {0: 2, 1: 1}
    assert w.settle() == [] and w.canary["restarts"] == 3 and not w.canary["aborted"]  # 3 = maxCanaryRestarts
    w.pod_restarts = {0: 3, 1: 1}
    assert w.settle() == ["CanaryAborted"]
    assert w.canary["abortReason"] == ("canary pods restarted 4 time(s), more than maxCanaryRestarts 3: "
                                       "Running: OOMKilled exit 137")


def test_a_window_in_which_a_canary_pod_restarted_fails() -> None:
    w = deployed()
    start_canary(w)
    w.pod_restarts = {0: 1}
    w.pod_problem = "OOMKilled exit 137"
    reasons = w.measure("pass")  # the HTTP numbers were fine, the pod was not
    assert reasons == ["AnalysisFailed"] and w.canary["step"] == 0
    assert w.canary["analysis"]["message"].startswith("canary pods restarted 1 time(s) during the window (OOMKilled")
    assert w.measure("pass") == ["AnalysisPassed", "RolloutStep"]  # the next window, without restarts


def test_pod_state_reads_the_last_termination() -> None:
    pod = {"metadata": {"name": "p", "labels": {"modelship.dev/revision": "abc"}},
           "status": {"conditions": [{"type": "Ready", "status": "False",
                                      "lastTransitionTime": "2026-03-01T12:00:00Z"}],
                      "initContainerStatuses": [{"name": "fetch", "restartCount": 1, "state": {"terminated": {
                          "exitCode": 0, "reason": "Completed"}}}],
                      "containerStatuses": [{"name": "server", "restartCount": 4, "started": False, "ready": False,
                                             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                             "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                                          "message": "model file not found\n"}}}]}}
    state = PodState.from_manifest(pod)
    assert (state.name, state.revision, state.ready, state.restarts, state.started) == ("p", "abc", False, 5, False)
    assert state.problem == "CrashLoopBackOff: Error exit 1: model file not found"
    assert state.ready_changed_at == T0


# --------------------------------------------------------------------------- capacity (issue 10 item 4)


def test_an_abort_keeps_the_canary_pods_until_the_stable_has_its_replicas_ready() -> None:
    w = deployed(steps=[{"setWeight": 50}, {"pause": {}}])
    start_canary(w)
    assert w.replicas() == {"stable": 2, "canary": 2}
    w.ready_limit["stable"] = 2  # the stable's new pods take minutes to load the model
    w.annotations[ABORT_ANNOTATION] = "now"
    w.settle()
    assert w.canary["aborted"] and w.canary["requestedWeight"] == 0
    # replicas mode: the canary's two ready pods keep serving beside the stable's two
    assert w.replicas() == {"stable": 4, "canary": 2} and w.canary["weight"] == 50
    assert w.status["readyReplicas"] == 4 and w.last.analysis is None
    w.ready_limit.clear()  # the stable's pods are ready
    w.settle()
    assert w.replicas() == {"stable": 4, "canary": 0} and w.canary["weight"] == 0


def test_gateway_mode_abort_routes_nothing_to_the_canary_but_keeps_its_pods_until_stable_is_ready() -> None:
    w = World(gateway_spec(steps=[{"setWeight": 50}, {"pause": {}}]), httproute=True)
    w.settle()
    new = copy.deepcopy(w.spec)
    new["model"] = {"uri": "pvc://models/fraud/2.0.0/model.pt", "version": "2.0.0"}
    w.set_spec(new)
    w.settle()
    assert [b.weight for b in w.last.route.backends] == [50, 50]
    w.ready_limit["stable"] = 3  # one stable pod went away meanwhile and is still loading
    w.settle()
    w.annotations[ABORT_ANNOTATION] = "now"
    w.settle()
    assert [b.weight for b in w.last.route.backends] == [100, 0] and w.canary["weight"] == 0
    assert w.replicas() == {"stable": 4, "canary": 2}
    w.ready_limit.clear()
    w.settle()
    assert w.replicas() == {"stable": 4, "canary": 0}


def test_a_cancelled_canary_keeps_serving_until_the_stable_has_its_replicas_ready() -> None:
    w = deployed(steps=[{"setWeight": 50}, {"pause": {}}])
    v1_spec = copy.deepcopy(w.spec)
    start_canary(w)
    canary_name = w.last.revision("canary").name
    w.ready_limit["stable"] = 2
    w.set_spec(v1_spec)
    reasons = w.settle()
    assert reasons[0] == "CanaryCancelled" and w.replicas() == {"stable": 4}
    assert w.last.retain == (canary_name,)  # left alone, its 2 pods serving
    w.ready_limit.clear()
    w.settle()
    assert w.last.retain == () and w.status["phase"] == "Healthy"


# --------------------------------------------------------------------------- act once (issue 9 item 4)


TWO_GATES = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]


def test_a_promote_whose_removal_fails_acts_once() -> None:
    w = deployed(steps=TWO_GATES)
    start_canary(w)
    w.measure("pass")
    assert w.canary["step"] == 1 and w.status["phase"] == "Paused"  # the first gate
    w.clear_actions = False  # every removal of the annotation fails (a 503, a dead operator)
    w.annotations[PROMOTE_ANNOTATION] = "step@2026-03-01T12:00:40Z-1a2b"
    assert w.settle() == ["StepPromoted"] and w.canary["step"] == 2
    assert w.canary["actions"] == ["promote=step@2026-03-01T12:00:40Z-1a2b"]
    assert w.measure("pass") == ["AnalysisPassed", "RolloutPaused"] and w.canary["step"] == 3  # the second gate
    w.now += timedelta(hours=1)
    assert w.settle() == [] and w.canary["step"] == 3 and w.status["phase"] == "Paused"  # not passed again
    # the removal works again: the id is forgotten once the annotation is seen gone
    w.clear_actions = True
    w.settle()
    assert PROMOTE_ANNOTATION not in w.annotations and "actions" not in w.canary
    # a new request with the same hand-set value acts again
    w.annotations[PROMOTE_ANNOTATION] = "step@2026-03-01T12:00:40Z-1a2b"
    assert "StepPromoted" in w.settle() and w.status["stable"]["version"] == "2.0.0"


def test_a_promote_acts_once_when_the_operator_dies_before_writing_status() -> None:
    w = deployed(steps=TWO_GATES)
    start_canary(w)
    w.measure("pass")
    w.annotations[PROMOTE_ANNOTATION] = "step"
    w.status_writes, w.clear_actions = False, False  # children applied, then the process died
    p = w.reconcile()
    assert p.status["canary"]["step"] == 2 and w.canary["step"] == 1  # status still says the first gate
    w.status_writes = True
    w.measure("pass")
    # the record on the canary Deployment (written first) knew the promote was done
    assert w.canary["step"] == 3 and w.canary["actions"] == ["promote=step"] and w.status["phase"] == "Paused"
    w.now += timedelta(minutes=10)
    assert w.settle() == [] and w.canary["step"] == 3


def test_action_values_with_request_ids_keep_their_meaning() -> None:
    w = deployed()
    start_canary(w)
    w.annotations[PROMOTE_ANNOTATION] = "full@2026-03-01T12:00:00Z-9f8e"
    assert w.settle()[0] == "PromotedManually" and w.status["stable"]["version"] == "2.0.0"


# --------------------------------------------------------------------------- lost status (issue 9 item 5)


def records(w: World) -> dict[str, dict]:
    return {d.role: dict(d.record or {}) for d in w.deployments.values()}


def test_the_records_ride_on_deployment_metadata_not_the_pod_template() -> None:
    w = deployed()
    start_canary(w)
    deployments = {m["metadata"]["name"]: m for m in render(w.last) if m["kind"] == "Deployment"}
    for rev in w.last.revisions:
        manifest = deployments[rev.name]
        record = json.loads(manifest["metadata"]["annotations"]["modelship.dev/rollout"])
        assert record["role"] == rev.role and record["hash"] == rev.hash
        assert "modelship.dev/rollout" not in json.dumps(manifest["spec"]["template"])
    assert records(w)["stable"]["spec"]["model"]["version"] == "1.0.0" and records(w)["stable"]["image"]
    assert records(w)["canary"]["step"] == 0 and records(w)["canary"]["seq"] == w.canary["seq"]


def test_a_lost_status_mid_canary_resumes_from_the_records() -> None:
    w = deployed()
    v1 = w.status["stable"]["hash"]
    start_canary(w)
    w.measure("pass")
    w.measure("pass")  # step 2 of 4 (the 1m pause) with its window passed
    before = copy.deepcopy(w.canary)
    replicas = w.replicas()
    w.status = {}  # a backup restore without status
    p = w.reconcile()
    assert [e.reason for e in p.events][0] == "RolloutStateRecovered"
    assert "stable revision 1" in p.events[0].message and "canary revision 2" in p.events[0].message
    assert w.status["stable"]["hash"] == v1 and w.replicas() == replicas  # no full-size new revision
    assert {k: w.canary[k] for k in ("step", "stepStartedAt", "analysis", "revision")} == {
        k: before[k] for k in ("step", "stepStartedAt", "analysis", "revision")}
    assert w.status["phase"] == "Progressing" and "RevisionCreated" not in [e.reason for e in p.events]
    w.now += timedelta(seconds=30)
    assert w.settle() == ["RolloutStep"] and w.canary["step"] == 2  # and on it goes


def test_a_lost_status_and_a_lost_canary_record_restart_the_canary_at_step_one() -> None:
    w = deployed()
    v1 = w.status["stable"]["hash"]
    start_canary(w)
    w.measure("pass")
    w.annotations[PROMOTE_ANNOTATION] = "full"  # left over: nobody knows whether it was acted on
    w.clear_actions = False
    w.status = {}
    w.deployments = {h: dataclasses.replace(d, record=None) if d.role == "canary" else d
                     for h, d in w.deployments.items()}
    p = w.reconcile()
    reasons = [e.reason for e in p.events]
    assert reasons[:3] == ["RolloutStateRecovered", "RolloutRestarted", "CanaryStarted"]
    ignored = next(e for e in p.events if e.reason == "ActionIgnored")
    assert ignored.type == "Warning" and "rollout state of this canary was lost" in ignored.message
    assert w.status["stable"]["hash"] == v1 and w.canary["step"] == 0 and w.canary["weight"] == 25
    assert "stable" == next(r.role for r in p.revisions if r.hash == v1)
    w.settle()
    assert w.canary["step"] == 0 and w.status["stable"]["hash"] == v1  # the promote was not acted on


def test_a_promotion_whose_status_write_was_lost_is_recovered() -> None:
    w = deployed(steps=[])
    v1 = w.status["stable"]["hash"]
    new = copy.deepcopy(w.spec)
    new["model"] = {"uri": "pvc://models/fraud/2.0.0/model.pt", "version": "2.0.0"}
    w.set_spec(new)
    w.reconcile()  # the canary is created
    w.status_writes = False
    w.reconcile()  # promoted: the new stable applied, the old pruned, then the operator died
    assert w.canary and w.status["stable"]["hash"] == v1
    w.status_writes = True
    p = w.reconcile()
    assert w.status["stable"]["version"] == "2.0.0" and "canary" not in w.status
    assert [r.hash for r in p.revisions] == [w.status["stable"]["hash"]] and v1 not in w.deployments
    assert [(h["hash"], h["outcome"]) for h in w.status["history"]] == [(v1, "Superseded")]


def test_a_stale_status_without_the_canary_resumes_it_from_its_record() -> None:
    """A status read from a cache before the canary was written (or written by an operator that
    died since): the canary's record knows better; no restart, no second CanaryStarted."""
    w = deployed()
    before = copy.deepcopy(w.status)
    start_canary(w)
    w.measure("pass")
    step = w.canary["step"]
    w.status = before  # what a lagging watch cache returns
    p = w.reconcile()
    reasons = [e.reason for e in p.events]
    assert reasons[0] == "RolloutStateRecovered" and "RolloutRestarted" not in reasons
    assert "CanaryStarted" not in reasons and w.canary["step"] == step == 1
