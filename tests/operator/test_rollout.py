"""Table tests of the canary state machine: the pure plan driven through whole rollouts.

`World` plays everything around the plan: it keeps the ModelDeployment's body (spec, status,
annotations), feeds the plan what a Deployment controller would report (each rendered
Deployment converges to its replicas, ready unless the test marks its revision broken), writes
the plan's status back and removes the annotations the plan consumed — what reconcile does.
"""
from __future__ import annotations

import copy
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


def spec(version: str = "1.0.0", replicas: int = 4, steps: list | None = None, **rollout: Any) -> dict:
    return {
        "model": {"uri": f"pvc://models/fraud/{version}/model.pt", "version": version},
        "replicas": replicas,
        "rollout": {"steps": STEPS if steps is None else steps,
                    "analysis": {"interval": "30s", "maxLatencyP99Ms": 250, "failureLimit": 2}, **rollout},
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
        p = plan(self.md(), Observed(tuple(self.deployments.values()), self.httproute, False, analysis),
                 SETTINGS, self.now)
        render(p)  # every plan renders
        self.status = json.loads(json.dumps(p.status))
        for name in p.consumed_actions:
            self.annotations.pop(name, None)
        # The Deployment controller: each rendered Deployment converges; unrendered ones go.
        self.deployments = {
            r.hash: DeploymentState(r.name, r.hash, r.role, r.replicas, ready, ready, r.replicas, 1, 1)
            for r in p.revisions
            for ready in [0 if r.hash in self.broken else r.replicas]
        }
        self.last = p
        return p

    def settle(self, analysis: AnalysisResult | None = None) -> list[str]:
        """Reconcile until nothing changes; the event reasons seen on the way."""
        reasons: list[str] = []
        p = self.reconcile(analysis)
        reasons += [e.reason for e in p.events]
        for _ in range(10):
            before = (copy.deepcopy(self.status), dict(self.deployments))
            p = self.reconcile()
            reasons += [e.reason for e in p.events]
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
    # setWeight 25 of 4 replicas: one canary pod; once it is ready the timed pause starts.
    assert reasons[:2] == ["CanaryStarted", "RolloutStep"]
    assert w.canary["step"] == 1 and w.canary["weight"] == 25 and w.canary["requestedWeight"] == 25
    assert w.replicas() == {"stable": 3, "canary": 1}
    assert w.status["phase"] == "Progressing" and w.status["stable"]["hash"] == v1
    assert "step 2 of 4 (pause 1m)" in next(c for c in w.status["conditions"] if c["type"] == "Progressing")["message"]
    # the plan wants to be woken when the pause ends or the analysis window closes (30s)
    assert w.last is not None and w.last.requeue_after == 30.0

    # Before the pause has run its minute: nothing moves.
    w.now += timedelta(seconds=59)
    assert w.settle() == [] and w.canary["step"] == 1
    assert w.last is not None and w.last.requeue_after == 1.0

    # After it: on to setWeight 50 (2 of 4), then the manual pause.
    w.now += timedelta(seconds=1)
    reasons = w.settle()
    assert reasons == ["RolloutStep", "RolloutPaused"]
    assert w.canary["step"] == 3 and w.canary["weight"] == 50 and w.replicas() == {"stable": 2, "canary": 2}
    assert w.status["phase"] == "Paused"
    progressing = next(c for c in w.status["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "Unknown" and progressing["reason"] == "RolloutPaused"  # as a paused Deployment


def test_a_manual_pause_waits_until_promoted_one_step() -> None:
    w = deployed()
    v1 = w.status["stable"]["hash"]
    start_canary(w)
    w.now += timedelta(minutes=2)
    w.settle()
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
    assert w.canary["step"] == 1
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
    assert w.last is not None and w.last.analysis is None and w.last.requeue_after is None
    w.now += timedelta(hours=1)
    assert w.settle() == [] and w.canary["step"] == 0


def test_hpa_changing_the_total_mid_rollout_resplits() -> None:
    w = deployed()
    start_canary(w)
    assert w.replicas() == {"stable": 3, "canary": 1}
    w.spec["replicas"] = 10  # the HPA writes /scale: no new revision, no new generation needed
    w.settle()
    assert w.replicas() == {"stable": 7, "canary": 3} and w.canary["weight"] == 30
    assert w.canary["step"] == 1 and w.status["replicas"] == 10
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
    for _ in range(4):
        assert w.measure("inconclusive") == ["AnalysisInconclusive"]
    analysis = w.canary["analysis"]
    assert analysis["failures"] == 0 and analysis["successes"] == 0 and analysis["verdict"] == "Inconclusive"
    assert "only 7 requests" in analysis["message"] and not w.canary["aborted"]
    assert w.measure("pass") == ["AnalysisPassed"] and w.canary["analysis"]["successes"] == 1


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
    assert canary["step"] == 1 and canary["weight"] == 25 and w.status["phase"] == "Progressing"


# --------------------------------------------------------------------------- spec changes


def test_a_spec_change_mid_rollout_replaces_the_canary() -> None:
    w = deployed()
    start_canary(w, "2.0.0")
    v2 = w.canary["hash"]
    w.now += timedelta(minutes=2)
    w.settle()
    assert w.canary["step"] == 3
    reasons = start_canary(w, "3.0.0")
    assert reasons[:2] == ["CanaryReplaced", "CanaryStarted"]
    assert w.canary["version"] == "3.0.0" and w.canary["step"] == 1 and w.canary["revision"] == 3
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
    assert reasons == ["CanaryCancelled", "Ready"]
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
    w.now += timedelta(seconds=20)  # inside the 1m pause, before the first analysis is due
    w.settle()
    snapshot = json.loads(json.dumps(w.status))
    # A new process: nothing but the stored object and the live Deployments.
    fresh = World(copy.deepcopy(w.spec), now=w.now, status=snapshot, deployments=dict(w.deployments),
                  generation=w.generation)
    p = fresh.reconcile()
    assert p.status == snapshot and p.events == ()  # a fixed point: no write, no event
    assert fresh.canary["step"] == 1 and fresh.canary["weight"] == 25
    assert p.requeue_after == 10.0  # the analysis window still closes 30s after it opened
    fresh.now += timedelta(seconds=10)
    fresh.settle(AnalysisResult(fresh.canary["hash"], fresh.now, verdict("pass")))
    assert fresh.last is not None and fresh.last.requeue_after == 30.0  # pause end and next window
    fresh.now += timedelta(seconds=30)
    fresh.settle()
    assert fresh.canary["step"] == 3


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

    w.now += timedelta(minutes=1)
    w.settle()
    assert [b.weight for b in w.last.route.backends] == [50, 50] and w.replicas() == {"stable": 4, "canary": 2}
    manifests = {(m["kind"], m["metadata"]["name"]) for m in render(w.last)}
    assert {("Service", "fraud-stable"), ("Service", "fraud-canary"), ("HTTPRoute", "fraud")} <= manifests

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
    assert w.replicas() == {"stable": stable, "canary": canary} and w.status["phase"] == "Paused"


def test_an_action_without_a_canary_is_consumed_and_reported() -> None:
    w = deployed()
    w.annotations[PROMOTE_ANNOTATION] = "full"
    p = w.reconcile()
    assert p.consumed_actions == (PROMOTE_ANNOTATION,) and [e.reason for e in p.events] == ["ActionIgnored"]
    assert w.settle() == [] and w.status["phase"] == "Healthy"
