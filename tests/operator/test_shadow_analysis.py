"""Judging a shadow step: the stable pods' modelship_shadow_* series, as Prometheus text parsed
by analysis.parse_metrics, turned into per-pod deltas and judged against maxDisagreement /
maxMeanAbsDiff with the pass / inconclusive / fail semantics of the error rate.

The exposition is written by prometheus_client with the server's metric names and label sets
(server/modelship_server/shadow.py: counters for requests by outcome, rows and disagreements;
gauges for the abs-diff sum and max), the way the real stable pods expose them.
"""
from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from modelship_operator import analysis as a
from modelship_operator.spec import AnalysisSpec

CANARY, OLD = "c0ffee1234", "0ld0ld0ld0"


class StablePod:
    """One stable pod's shadow series (and its own request counter), as text."""

    def __init__(self, classifier: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("modelship_shadow_requests", "mirrored", ["revision", "outcome"], registry=self.registry)
        self.rows = Counter("modelship_shadow_rows", "rows", ["revision"], registry=self.registry)
        self.disagreements = (Counter("modelship_shadow_disagreements", "rows", ["revision"], registry=self.registry)
                              if classifier else None)
        self.diff_sum = Gauge("modelship_shadow_abs_diff_sum", "sum", ["revision"], registry=self.registry)
        self.diff_max = Gauge("modelship_shadow_abs_diff_max", "max", ["revision"], registry=self.registry)
        Gauge("modelship_shadow_queue_depth", "queue", registry=self.registry).set(3)
        served = Counter("modelship_requests", "requests", ["model", "version", "protocol", "code"],
                         registry=self.registry)
        served.labels("digits", "1", "v2", "200").inc(1000)

    def compare(self, requests: int, rows_each: int, disagree: int, diff: float, revision: str = CANARY,
                outcome: str = "compared", biggest: float = 0.5) -> None:
        """`requests` mirrored answers of `rows_each` rows each, `disagree` rows of which differed."""
        self.requests.labels(revision, outcome).inc(requests)
        self.rows.labels(revision).inc(requests * rows_each)
        if self.disagreements is not None:
            self.disagreements.labels(revision).inc(disagree)
        self.diff_sum.labels(revision).inc(diff)
        self.diff_max.labels(revision).set(max(biggest, self.diff_max.labels(revision)._value.get()))

    def lose(self, outcome: str, n: int, revision: str = CANARY) -> None:
        self.requests.labels(revision, outcome).inc(n)

    def snapshot(self) -> a.Snapshot:
        return a.parse_metrics(generate_latest(self.registry).decode())


def limits(**kw: object) -> AnalysisSpec:
    return AnalysisSpec(max_error_rate=0.01, min_requests=50, **kw)  # type: ignore[arg-type]


HEALTHY = a.Measurement(requests=200, errors=0, latency_p99_ms=20.0)


def window(pods: dict[str, StablePod], before: dict[str, a.Snapshot]) -> a.ShadowMeasurement:
    return a.measure_shadow_pods(before, {name: p.snapshot() for name, p in pods.items()}, CANARY)


def test_parse_keeps_the_shadow_series_and_deltas_are_per_pod() -> None:
    pods = {"s-0": StablePod(), "s-1": StablePod()}
    pods["s-0"].compare(40, 2, 3, 4.0)  # before the window: not counted
    pods["s-0"].compare(10, 1, 1, 1.0, revision=OLD)  # another canary's series: never counted
    before = {name: p.snapshot() for name, p in pods.items()}
    assert any(dict(k).get("__name__") == a.SHADOW_ROWS for k in before["s-0"].shadow)
    pods["s-0"].compare(30, 2, 6, 3.0, biggest=0.9)
    pods["s-1"].compare(20, 2, 4, 1.0, biggest=0.4)
    pods["s-1"].lose("dropped", 5)
    s = window(pods, before)
    assert s.rows == 100 and s.disagreements == 10 and s.abs_diff_sum == pytest.approx(4.0)
    assert s.disagreement == pytest.approx(0.10) and s.mean_abs_diff == pytest.approx(0.04)
    assert s.abs_diff_max == pytest.approx(0.9)  # the largest either pod has seen
    assert s.outcomes == {"compared": 50.0, "dropped": 5.0}
    assert s.pods == 2


def test_a_restarted_stable_pod_counts_from_its_restart() -> None:
    old = StablePod()
    old.compare(500, 1, 50, 5.0)
    before = {"s-0": old.snapshot()}
    restarted = StablePod()  # the process restarted: its counters begin again
    restarted.compare(60, 1, 3, 0.6)
    s = window({"s-0": restarted}, before)
    assert (s.rows, s.disagreements) == (60, 3)


def test_within_the_limits_passes_and_reports_the_comparison() -> None:
    pod = StablePod()
    before = {"s-0": pod.snapshot()}
    pod.compare(100, 1, 2, 5.0)
    s = window({"s-0": pod}, before)
    v = a.judge(HEALTHY, limits(max_disagreement=0.05, max_mean_abs_diff=0.1), shadow=s)
    assert v.result == a.PASS, v.message
    assert "disagreement 2.00% within 5.00%" in v.message and "mean abs diff 0.05 within 0.1" in v.message
    status = v.to_status()
    assert (status["compared"], status["disagreement"], status["meanAbsDiff"]) == (100, 0.02, 0.05)


def test_disagreement_above_the_limit_fails_and_says_so_first() -> None:
    pod = StablePod()
    before = {"s-0": pod.snapshot()}
    pod.compare(100, 1, 30, 5.0)
    v = a.judge(HEALTHY, limits(max_disagreement=0.05), shadow=window({"s-0": pod}, before))
    assert v.result == a.FAIL
    assert v.reasons[0] == "disagreement 30.00% above maxDisagreement 5.00% (30 of 100 rows)"


def test_mean_abs_diff_above_the_limit_fails() -> None:
    pod = StablePod()
    before = {"s-0": pod.snapshot()}
    pod.compare(100, 1, 0, 80.0)
    v = a.judge(HEALTHY, limits(max_mean_abs_diff=0.5), shadow=window({"s-0": pod}, before))
    assert v.result == a.FAIL and "mean abs diff 0.8 above maxMeanAbsDiff 0.5" in v.message


def test_mismatched_answers_fail() -> None:
    pod = StablePod()
    before = {"s-0": pod.snapshot()}
    pod.compare(100, 1, 0, 1.0)
    pod.compare(2, 1, 2, 0.0, outcome="mismatch")  # the server counts every mismatched row as disagreeing
    v = a.judge(HEALTHY, limits(max_mean_abs_diff=0.5), shadow=window({"s-0": pod}, before))
    assert v.result == a.FAIL
    assert "2 mirrored request(s) answered in another form than the stable's outputs" in v.reasons[0]


def test_too_few_compared_rows_is_inconclusive_and_says_where_the_mirrors_went() -> None:
    pod = StablePod()
    before = {"s-0": pod.snapshot()}
    pod.compare(10, 1, 9, 100.0)  # looks terrible, but 10 rows are no evidence
    pod.lose("dropped", 30)
    pod.lose("error", 7)
    v = a.judge(HEALTHY, limits(max_disagreement=0.05), shadow=window({"s-0": pod}, before))
    assert v.result == a.INCONCLUSIVE
    assert ("only 10 rows compared by the stable pods in the window, 50 needed (mirrored requests dropped: 30, "
            "error: 7)") in v.message


def test_no_stable_pod_read_is_inconclusive() -> None:
    v = a.judge(HEALTHY, limits(max_disagreement=0.05), shadow=a.measure_shadow_pods({}, {}, CANARY))
    assert v.result == a.INCONCLUSIVE and "(no stable pod could be read)" in v.message


def test_max_disagreement_without_class_outputs_is_inconclusive_and_says_why() -> None:
    pod = StablePod(classifier=False)
    before = {"s-0": pod.snapshot()}
    pod.compare(100, 1, 0, 5.0)
    v = a.judge(HEALTHY, limits(max_disagreement=0.05), shadow=window({"s-0": pod}, before))
    assert v.result == a.INCONCLUSIVE
    assert "maxDisagreement is set but the stable pods report no class disagreement" in v.message
    assert "disagreement" not in v.to_status() and v.to_status()["meanAbsDiff"] == 0.05
    # maxMeanAbsDiff alone judges such a model
    assert a.judge(HEALTHY, limits(max_mean_abs_diff=0.1), shadow=window({"s-0": pod}, before)).result == a.PASS


def test_the_canarys_own_numbers_still_count() -> None:
    pod = StablePod()
    before = {"s-0": pod.snapshot()}
    pod.compare(100, 1, 0, 0.0)
    s = window({"s-0": pod}, before)
    failing = a.Measurement(requests=100, errors=20, latency_p99_ms=20.0)
    assert a.judge(failing, limits(max_disagreement=0.05), shadow=s).result == a.FAIL
    few = a.Measurement(requests=3, errors=0, latency_p99_ms=20.0)
    assert a.judge(few, limits(max_disagreement=0.05), shadow=s).result == a.INCONCLUSIVE


def test_without_shadow_limits_the_comparison_is_only_reported() -> None:
    pod = StablePod()
    before = {"s-0": pod.snapshot()}
    pod.compare(10, 1, 9, 1.0)
    v = a.judge(HEALTHY, limits(), shadow=window({"s-0": pod}, before))
    assert v.result == a.PASS and "shadow: 10 rows compared by 1 stable pod(s), disagreement 90.00%" in v.message


def test_promql_queries_select_the_stable_pods_series_for_the_canary() -> None:
    q = a.shadow_promql_queries("ml", "fraud", "stab1e", CANARY, 120)
    selector = f'namespace="ml",modeldeployment="fraud",revision="stab1e",exported_revision="{CANARY}"'
    assert q[a.SHADOW_ROWS_QUERY] == f"sum(increase(modelship_shadow_rows_total{{{selector}}}[120s]))"
    assert q[a.SHADOW_OUTCOMES_QUERY].startswith("sum by (outcome) (increase(modelship_shadow_requests_total{")
    assert q[a.SHADOW_ABS_DIFF_MAX_QUERY] == f"max(max_over_time(modelship_shadow_abs_diff_max{{{selector}}}[120s]))"


def test_shadow_from_prometheus_answers() -> None:
    def vector(*samples: tuple[dict, float]) -> dict:
        return {"resultType": "vector", "result": [{"metric": m, "value": [0, str(v)]} for m, v in samples]}

    answers = {
        a.SHADOW_OUTCOMES_QUERY: vector(({"outcome": "compared"}, 90), ({"outcome": "mismatch"}, 0)),
        a.SHADOW_ROWS_QUERY: vector(({}, 180)),
        a.SHADOW_DISAGREEMENTS_QUERY: vector(),  # no pod exports it: no data, not 0
        a.SHADOW_ABS_DIFF_SUM_QUERY: vector(({}, 9)),
        a.SHADOW_ABS_DIFF_MAX_QUERY: vector(({}, 0.7)),
    }
    s = a.shadow_from_prometheus(answers, CANARY)
    assert (s.rows, s.disagreements, s.mean_abs_diff, s.abs_diff_max, s.pods) == (180, None, 0.05, 0.7, None)
    assert s.outcomes["compared"] == 90
    with pytest.raises(a.AnalysisError):
        a.shadow_from_prometheus({**answers, a.SHADOW_ROWS_QUERY: {"resultType": "matrix", "result": []}}, CANARY)
