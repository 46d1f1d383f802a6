"""Shadow steps in the pure plan: pods outside the split, no user traffic, the Services the
mirror needs, the step's timing and evidence, and which stable pods must stop mirroring.

Driven through whole rollouts with test_rollout's `World` (a Deployment controller that makes
every rendered Deployment converge, status written back). Every assertion here fails on the
code before shadow steps (the step would have been refused or treated as a manual pause).
"""
from __future__ import annotations

from datetime import timedelta

import pytest

from modelship_operator.analysis import Measurement, ShadowMeasurement, judge
from modelship_operator.planning import AnalysisResult, analysis_due
from modelship_operator.planning.shadow import shadow_replicas
from modelship_operator.render import render
from modelship_operator.spec import AnalysisSpec
from test_rollout import World, spec, start_canary

REVISION = "modelship.dev/revision"
SHADOW_STEPS = [{"shadow": {"percent": 20, "duration": "2m"}}, {"setWeight": 50}]
ANALYSIS = {"interval": "30s", "maxLatencyP99Ms": 250, "failureLimit": 2, "minRequests": 50,
            "maxDisagreement": 0.05}
LIMITS = AnalysisSpec(interval="30s", max_error_rate=0.01, max_latency_p99_ms=250, min_requests=50,
                      failure_limit=2, max_disagreement=0.05)


def shadow_spec(version: str = "1.0.0", replicas: int = 4, steps: list | None = None, **rollout: object) -> dict:
    s = spec(version, replicas, SHADOW_STEPS if steps is None else steps, **rollout)
    s["rollout"]["analysis"] = dict(ANALYSIS)
    return s


def deployed_shadow(replicas: int = 4, steps: list | None = None, gateway: bool = False) -> World:
    extra = {"traffic": "gateway", "gateway": {"parentRefs": [{"name": "gw"}]}} if gateway else {}
    w = World(shadow_spec(replicas=replicas, steps=steps, **extra), httproute=gateway)
    w.settle()
    assert w.status["phase"] == "Healthy"
    return w


def shadow_verdict(kind: str, canary_hash: str) -> object:
    """A real judgement: the canary's own numbers and the stable pods' comparison."""
    rows, disagreements = {"pass": (500, 5), "fail": (500, 200), "inconclusive": (10, 0)}[kind]
    canary = Measurement(requests=400, errors=0, latency_p99_ms=40.0)
    return judge(canary, LIMITS, shadow=ShadowMeasurement(canary_hash, rows, disagreements, 10.0, 0.5,
                                                          {"compared": rows / 2}, pods=4))


def measure(w: World, kind: str) -> list[str]:
    w.now += timedelta(seconds=30)
    canary = w.status["canary"]
    return w.settle(AnalysisResult(canary["hash"], w.now, shadow_verdict(kind, canary["hash"])))


def services(w: World) -> dict[str, dict]:
    assert w.last is not None
    return {m["metadata"]["name"]: m["spec"] for m in render(w.last) if m["kind"] == "Service"}


@pytest.mark.parametrize(("total", "percent", "pods"), [(4, 20, 1), (4, 30, 2), (10, 25, 3), (3, 100, 3),
                                                        (1, 1, 1), (0, 50, 0)])
def test_shadow_pods_are_the_share_rounded_up(total: int, percent: int, pods: int) -> None:
    assert shadow_replicas(total, percent) == pods


def test_a_shadow_step_runs_extra_pods_that_take_no_user_traffic_in_replicas_mode() -> None:
    w = deployed_shadow()
    v1 = w.status["stable"]["hash"]
    assert start_canary(w) == ["CanaryStarted"]
    v2 = w.status["canary"]["hash"]
    # stable keeps all 4 pods; the canary runs ceil(4 * 20%) = 1 pod outside the split, weight 0
    assert w.replicas() == {"stable": 4, "canary": 1}
    canary = w.status["canary"]
    assert canary["weight"] == 0 and canary["requestedWeight"] == 0 and canary["shadowPercent"] == 20
    # /scale counts the stable's pods only: the shadow pods are extra to spec.replicas
    assert w.status["replicas"] == 4
    # the Service of status.url selects the stable alone; the canary's role Service exists for the mirror
    svc = services(w)
    assert svc["fraud"]["selector"][REVISION] == v1
    assert svc["fraud-canary"]["selector"][REVISION] == v2
    assert w.last is not None and w.last.shadow is not None and w.last.shadow.active
    assert (w.last.shadow.stable, w.last.shadow.canary, w.last.shadow.percent) == (v1, v2, 20)
    assert w.last.shadow.service == "fraud-canary" and w.last.shadow_off == ()
    # a PodDisruptionBudget still covers both Deployments together
    assert w.last.pdb
    assert "shadow 20% for 2m" in next(c for c in w.status["conditions"] if c["type"] == "Progressing")["message"]
    # the analysis window runs while shadowing (the mirrored requests are the canary's traffic)
    assert w.last.analysis is not None and not analysis_due(w.md(), w.now)
    assert analysis_due(w.md(), w.now + timedelta(seconds=30))


def test_gateway_mode_keeps_the_route_weight_at_zero_and_the_role_services() -> None:
    w = deployed_shadow(gateway=True)
    start_canary(w)
    assert w.replicas() == {"stable": 4, "canary": 1}
    assert w.status["canary"]["shadowPercent"] == 20 and w.status["canary"]["weight"] == 0
    assert w.last is not None and w.last.route is not None
    assert {b.role: b.weight for b in w.last.route.backends} == {"stable": 100, "canary": 0}
    assert {"fraud-stable", "fraud-canary"} <= set(services(w))


def test_the_step_advances_when_its_duration_is_up_and_its_windows_passed() -> None:
    w = deployed_shadow()
    new = shadow_spec("2.0.0")
    new["rollout"]["analysis"]["minPassedWindows"] = 2
    w.set_spec(new)
    w.settle()
    # a passing window alone does not end the step before its duration
    assert measure(w, "pass") == ["AnalysisPassed"]
    assert w.status["canary"]["step"] == 0
    analysis = w.status["canary"]["analysis"]
    assert analysis["compared"] == 500 and analysis["disagreement"] == 0.01 and analysis["meanAbsDiff"] == 0.02
    assert w.status["canary"]["holdReason"].startswith("shadowing 20% until")
    # nor the duration with one passing window of two: an inconclusive one does not count
    w.now += timedelta(minutes=2)
    assert measure(w, "inconclusive") == ["AnalysisInconclusive"]
    assert w.status["canary"]["step"] == 0
    assert "rows compared by the stable pods in the window, 50 needed" in w.status["canary"]["analysis"]["message"]
    assert w.status["canary"]["holdReason"] == ("waiting for 2 passing analysis window(s) while shadowing 20% "
                                                "(1 passed, 1 inconclusive, 0 failed)")
    assert measure(w, "pass") == ["AnalysisPassed", "RolloutStep"]
    canary = w.status["canary"]
    # setWeight 50: a real split again, the shadow is over: stable pods must stop mirroring
    assert canary["step"] == 1 and "shadowPercent" not in canary and canary["requestedWeight"] == 50
    assert w.replicas() == {"stable": 2, "canary": 2}
    assert w.last is not None and w.last.shadow is None and w.last.shadow_off == (w.status["stable"]["hash"],)
    svc = services(w)
    assert REVISION not in svc["fraud"]["selector"] and "fraud-canary" not in svc
    # the latest shadow comparison stays reported
    assert canary["analysis"]["compared"] == 500


def test_a_disagreeing_shadow_canary_is_aborted_and_its_pods_go_at_once() -> None:
    w = deployed_shadow()
    v1 = w.status["stable"]["hash"]
    start_canary(w)
    assert measure(w, "fail") == ["AnalysisFailed"]
    reasons = measure(w, "fail")
    assert "AnalysisFailed" in reasons and "CanaryAborted" in reasons
    canary = w.status["canary"]
    assert canary["aborted"] and "disagreement 40.00% above maxDisagreement 5.00%" in canary["abortReason"]
    assert w.status["phase"] == "Degraded"
    degraded = next(c for c in w.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "disagreement 40.00% above maxDisagreement 5.00%" in degraded["message"]
    # never served a client: the canary's pods go at once, the stable keeps all its pods and the Service
    assert w.replicas() == {"stable": 4, "canary": 0} and "shadowPercent" not in canary
    assert services(w)["fraud"]["selector"][REVISION] == v1
    assert w.last is not None and w.last.shadow is None and w.last.shadow_off == (v1,)
    assert w.last.analysis is None


def test_only_shadow_steps_promote_after_them_and_the_old_stable_stops_mirroring() -> None:
    w = deployed_shadow(steps=[{"shadow": {"percent": 100, "duration": "30s"}}])
    v1 = w.status["stable"]["hash"]
    start_canary(w)
    assert w.replicas() == {"stable": 4, "canary": 4}  # 100%: as many shadow pods as stable ones
    assert w.status["canary"]["shadowPercent"] == 100
    reasons = measure(w, "pass")
    assert "RolloutStepsComplete" in reasons and "Promoted" in reasons
    assert "canary" not in w.status and w.status["stable"]["hash"] != v1
    assert w.status["history"][-1]["hash"] == v1 and w.status["history"][-1]["outcome"] == "Superseded"


def test_promotion_names_the_old_stable_for_mirroring_off() -> None:
    w = deployed_shadow(steps=[{"shadow": {"percent": 100, "duration": "30s"}}])
    v1 = w.status["stable"]["hash"]
    start_canary(w)
    w.now += timedelta(seconds=30)
    canary = w.status["canary"]
    p = w.reconcile(AnalysisResult(canary["hash"], w.now, shadow_verdict("pass", canary["hash"])))
    assert p.shadow is None and p.shadow_off == (v1,)  # the plan that promotes (or goes to 100%)


def test_cancelling_a_shadow_canary_turns_the_stable_mirror_off() -> None:
    w = deployed_shadow()
    v1 = w.status["stable"]["hash"]
    before = dict(w.spec)
    start_canary(w)
    assert w.status["canary"]["shadowPercent"] == 20
    w.set_spec(before)
    p = w.reconcile()
    assert "canary" not in p.status and p.shadow is None and p.shadow_off == (v1,)


def test_shadow_pods_not_ready_hold_the_step_and_start_no_mirror() -> None:
    w = deployed_shadow()
    w.ready_limit = {"canary": 0}
    start_canary(w)
    canary = w.status["canary"]
    assert "shadowPercent" not in canary and canary["holdReason"] == \
        "waiting for the canary pods to be ready to shadow 20%"
    assert canary.get("unreadySince")  # readyTimeout counts
    assert w.last is not None and w.last.shadow is not None and not w.last.shadow.active
    assert w.last.analysis is None and "fraud-canary" in services(w)
    # readyTimeout (default 10m) aborts a shadow canary whose pods never become ready
    w.now += timedelta(minutes=11)
    assert "CanaryAborted" in w.settle()
    assert "not Ready within readyTimeout" in w.status["canary"]["abortReason"]


def test_the_shadow_duration_counts_from_when_its_pods_are_ready_not_from_the_step_start() -> None:
    """Slow pods (a GPU model loading) must not eat the shadow: 2m of mirroring, not 2m of step."""
    w = deployed_shadow()
    w.ready_limit = {"canary": 0}
    start_canary(w)
    started = w.status["canary"]["stepStartedAt"]
    assert "shadowSince" not in w.status["canary"]
    w.now += timedelta(seconds=90)  # the canary pods start
    w.ready_limit = {}
    w.settle()
    canary = w.status["canary"]
    assert canary["shadowSince"] > started and canary["shadowPercent"] == 20
    assert canary["holdReason"].startswith("shadowing 20% until")
    # two passing windows and 2m after the step began, but only 60 s after mirroring began: held
    assert measure(w, "pass") == ["AnalysisPassed"]
    assert measure(w, "pass") == ["AnalysisPassed"]
    assert w.status["canary"]["step"] == 0
    assert w.status["canary"]["holdReason"].startswith("shadowing 20% until")
    # the duration is up 2m after the pods were ready: the next window ends the step
    w.now += timedelta(seconds=60)
    assert measure(w, "pass") == ["AnalysisPassed", "RolloutStep"]
    assert w.status["canary"]["step"] == 1 and "shadowSince" not in w.status["canary"]


def test_a_rollout_without_shadow_steps_pushes_nothing() -> None:
    w = World(spec())
    w.settle()
    start_canary(w)
    assert w.last is not None and w.last.shadow is None and w.last.shadow_off == ()
    assert "shadowPercent" not in w.status["canary"]


def test_kubectl_modelship_status_shows_the_shadow() -> None:
    from modelship_operator.cli import format_status

    w = deployed_shadow()
    start_canary(w)
    text = format_status({"metadata": {"name": "fraud", "namespace": "ml"}, "spec": w.spec, "status": w.status})
    assert "Shadow:    the stable pods copy 20% of their requests to the canary" in text
    assert "weight 0%" in text
