"""Replica split and readiness gating: tables and property tests over totals 1..50, weights 0..100."""
from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelship_operator.planning.traffic import Split, scale_plan, split_replicas

TOTALS = range(1, 51)
WEIGHTS = range(0, 101)


@pytest.mark.parametrize(
    ("total", "weight", "expected"),
    [
        (10, 0, Split(10, 0, 0)),
        (10, 100, Split(0, 10, 100)),
        (10, 10, Split(9, 1, 10)),
        (10, 15, Split(8, 2, 20)),  # 1.5 rounds half up to 2
        (10, 14, Split(9, 1, 10)),
        (4, 50, Split(2, 2, 50)),
        (3, 50, Split(1, 2, 67)),  # 1.5 -> 2 canary pods: 2/3 of the pods
        (2, 1, Split(1, 1, 50)),  # at least one pod each
        (2, 99, Split(1, 1, 50)),
        (20, 99, Split(1, 19, 95)),  # 19.8 rounds to 20, clamped to leave one stable pod
        (50, 1, Split(49, 1, 2)),  # 0.5 rounds half up to 1
        (1, 10, Split(1, 1, 50)),  # one replica: surge by one so both revisions serve
        (1, 0, Split(1, 0, 0)),
        (1, 100, Split(0, 1, 100)),
        (0, 50, Split(0, 0, 0)),
        (5, -3, Split(5, 0, 0)),  # out-of-range weights clamp
        (5, 250, Split(0, 5, 100)),
    ],
)
def test_split_table(total: int, weight: int, expected: Split) -> None:
    assert split_replicas(total, weight) == expected


def test_split_invariants_over_every_total_and_weight() -> None:
    for total in TOTALS:
        previous_canary = -1
        for weight in WEIGHTS:
            s = split_replicas(total, weight)
            pods = s.stable + s.canary
            if weight == 0:
                assert (s.stable, s.canary) == (total, 0)
            elif weight == 100:
                assert (s.stable, s.canary) == (0, total)
            else:
                assert s.stable >= 1 and s.canary >= 1, (total, weight)
                assert pods == (2 if total == 1 else total), (total, weight)
            if total >= 2 or weight in (0, 100):
                assert pods == total
            # the canary never shrinks as the weight grows
            assert s.canary >= previous_canary, (total, weight)
            previous_canary = s.canary
            assert s.effective_weight == math.floor(100 * s.canary / pods + 0.5)
            # within rounding of the request, unless the one-pod-each clamp had to act
            exact = total * weight / 100
            clamped = 0 < weight < 100 and (exact < 0.5 or exact > total - 0.5 or total == 1)
            if not clamped:
                assert abs(s.canary - exact) <= 0.5, (total, weight)
                assert abs(s.effective_weight - weight) <= 50 / total + 0.5, (total, weight)


@given(st.integers(1, 50), st.integers(0, 100), st.integers(0, 100))
def test_split_monotone_in_weight(total: int, w1: int, w2: int) -> None:
    lo, hi = sorted((w1, w2))
    a, b = split_replicas(total, lo), split_replicas(total, hi)
    assert a.canary <= b.canary
    assert a.effective_weight <= b.effective_weight


def test_scale_plan_holds_stable_until_canary_is_ready() -> None:
    # 10 pods, step to 50%: the canary gets 5 pods at once, the stable keeps 10 - ready canaries
    p = scale_plan(10, 50, canary_ready=0, stable_ready=10)
    assert (p.stable_replicas, p.canary_replicas) == (10, 5)
    assert p.effective_weight == 0 and p.route_weight == 0  # nothing ready: no canary traffic
    assert not p.converged
    p = scale_plan(10, 50, canary_ready=2, stable_ready=10)
    assert (p.stable_replicas, p.canary_replicas) == (8, 5)
    assert p.effective_weight == 20  # 2 ready canaries beside 8 serving stable pods
    assert p.route_weight == 20  # 2 of 5 planned canary pods carry 2/5 of 50%
    p = scale_plan(10, 50, canary_ready=5, stable_ready=5)
    assert (p.stable_replicas, p.canary_replicas) == (5, 5)
    assert p.effective_weight == 50 and p.route_weight == 50 and p.converged


def test_scale_plan_promotion_and_abort() -> None:
    p = scale_plan(4, 100, canary_ready=3, stable_ready=4)
    assert (p.stable_replicas, p.canary_replicas) == (1, 4)  # the last stable pod waits
    assert p.effective_weight == 75
    p = scale_plan(4, 100, canary_ready=4, stable_ready=1)
    assert (p.stable_replicas, p.canary_replicas) == (0, 4) and p.effective_weight == 100
    # abort: the canary goes at once, the stable is asked back to the full total
    p = scale_plan(4, 0, canary_ready=2, stable_ready=2)
    assert (p.stable_replicas, p.canary_replicas) == (4, 0)
    assert p.effective_weight == 0 and p.route_weight == 0


def test_scale_plan_single_replica_surges() -> None:
    p = scale_plan(1, 10, canary_ready=0, stable_ready=1)
    assert (p.stable_replicas, p.canary_replicas) == (1, 1) and p.effective_weight == 0
    p = scale_plan(1, 10, canary_ready=1, stable_ready=1)
    assert (p.stable_replicas, p.canary_replicas) == (1, 1)
    assert p.effective_weight == 50  # honest: half the ready pods are canary
    assert p.route_weight == 10  # a gateway can realise the requested weight exactly


@given(st.integers(0, 50), st.integers(0, 100), st.integers(0, 60), st.integers(0, 60))
def test_scale_plan_bounds(total: int, weight: int, canary_ready: int, stable_ready: int) -> None:
    p = scale_plan(total, weight, canary_ready, stable_ready)
    assert p.canary_replicas == p.target.canary
    assert p.target.stable <= p.stable_replicas <= max(total, p.target.stable)
    # the stable never gives up a pod that a ready canary pod has not replaced
    assert p.stable_replicas + min(canary_ready, p.canary_replicas) >= min(total, p.target.stable + p.target.canary)
    assert 0 <= p.effective_weight <= 100 and 0 <= p.route_weight <= p.requested_weight
    if canary_ready == 0 or weight == 0:
        assert p.effective_weight == 0 and p.route_weight == 0


class _Cluster:
    """Two Deployments whose pods become ready a random number of ticks after creation."""

    def __init__(self, total: int, rng: random.Random) -> None:
        self.rng = rng
        self.pods = {"stable": [0] * total, "canary": []}  # ticks left until ready, per pod

    def ready(self, role: str) -> int:
        return sum(1 for left in self.pods[role] if left == 0)

    def scale(self, role: str, replicas: int) -> None:
        pods = self.pods[role]
        while len(pods) > replicas:  # like a ReplicaSet, remove not-ready pods first
            pods.remove(max(pods))
        while len(pods) < replicas:
            pods.append(self.rng.randint(1, 3))

    def tick(self) -> None:
        for pods in self.pods.values():
            pods[:] = [max(0, left - 1) for left in pods]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 50),
    st.lists(st.tuples(st.integers(0, 100), st.integers(1, 50)), min_size=1, max_size=6),
    st.integers(0, 2**32 - 1),
)
def test_rollout_with_hpa_changing_total_keeps_invariants(
    start_total: int, steps: list[tuple[int, int]], seed: int
) -> None:
    """Weights move through steps while the HPA rewrites the total; simulate reconciles until each
    step converges and check the invariants at every reconcile."""
    rng = random.Random(seed)
    cluster = _Cluster(start_total, rng)
    weights = sorted(w for w, _ in steps)  # rollout weights only grow
    for weight, (_, total) in zip(weights, steps):
        for _ in range(20):  # pods get ready within 3 ticks: 20 reconciles is plenty
            ready_before = cluster.ready("stable") + cluster.ready("canary")
            p = scale_plan(total, weight, cluster.ready("canary"), cluster.ready("stable"))
            cluster.scale("canary", p.canary_replicas)
            cluster.scale("stable", p.stable_replicas)
            ready_after = cluster.ready("stable") + cluster.ready("canary")
            # gating: scaling never takes ready capacity below what the total asks for
            assert ready_after >= min(ready_before, total), (total, weight)
            assert p.route_weight <= weight
            if p.converged and cluster.ready("canary") == p.canary_replicas and (
                cluster.ready("stable") == p.stable_replicas
            ):
                break
            cluster.tick()
        else:
            pytest.fail(f"no convergence at total={total} weight={weight}")
        s = split_replicas(total, weight)
        final = scale_plan(total, weight, cluster.ready("canary"), cluster.ready("stable"))
        assert (cluster.ready("stable"), cluster.ready("canary")) == (s.stable, s.canary)
        assert final.effective_weight == s.effective_weight
        if 0 < weight < 100:
            assert cluster.ready("stable") >= 1 and cluster.ready("canary") >= 1
