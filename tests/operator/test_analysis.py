"""Canary analysis, pure parts: parsing, deltas, p99, judging, PromQL building and reading.

Expected numbers are worked out by hand in the comments, not by the code under test.
"""
from __future__ import annotations

import math

import pytest

from modelship_operator import analysis as a
from modelship_operator.spec import AnalysisSpec


def _exposition(requests: dict[str, int], buckets: dict[str, int], created: float = 1700000000.0,
                protocol: str = "v2") -> str:
    """Text exposition as the server writes it (counter + histogram + _created series)."""
    lines = ["# HELP modelship_requests_total Inference requests.", "# TYPE modelship_requests_total counter"]
    for code, n in requests.items():
        lines.append(f'modelship_requests_total{{code="{code}",model="digits",protocol="{protocol}",version="1"}} {n}.0')
    lines += ["# TYPE modelship_requests_created gauge"]
    for code in requests:
        lines.append(f'modelship_requests_created{{code="{code}",model="digits",protocol="{protocol}",version="1"}} {created}')
    lines += ["# TYPE modelship_request_duration_seconds histogram"]
    for le, n in buckets.items():
        lines.append(f'modelship_request_duration_seconds_bucket{{le="{le}",model="digits",protocol="{protocol}",version="1"}} {n}.0')
    total = buckets["+Inf"]
    lines.append(f'modelship_request_duration_seconds_count{{model="digits",protocol="{protocol}",version="1"}} {total}.0')
    lines.append(f'modelship_request_duration_seconds_sum{{model="digits",protocol="{protocol}",version="1"}} 1.5')
    lines += ["# HELP modelship_queue_depth_rows Rows.", "# TYPE modelship_queue_depth_rows gauge", "modelship_queue_depth_rows 3.0"]
    return "\n".join(lines) + "\n"


def test_names_match_the_server_metrics() -> None:
    """Render the server's own Metrics and read them back: the names in analysis.py must match."""
    metrics_mod = pytest.importorskip("modelship_server.metrics")
    m = metrics_mod.Metrics("digits", "1.0")
    # 95 OK answers at 4 ms (bucket le=0.005), 5 errors at 200 ms (bucket 0.15 < x <= 0.25)
    for _ in range(95):
        m.observe_request("v2", 200, 0.004)
    for _ in range(5):
        m.observe_request("v2", 500, 0.2)
    snap = a.parse_metrics(m.render().decode())
    got = a.measure(snap)
    assert got.requests == 100 and got.errors == 5 and got.error_rate == pytest.approx(0.05)
    # rank 0.99 * 100 = 99; cumulative 95 up to le=0.15, 100 at le=0.25:
    # 0.15 + (0.25 - 0.15) * (99 - 95) / 5 = 0.23 s
    assert got.latency_p99_ms == pytest.approx(230.0)


def test_parse_keeps_counter_and_histogram_only() -> None:
    snap = a.parse_metrics(_exposition({"200": 7, "503": 2}, {"0.1": 5, "0.2": 9, "+Inf": 9}))
    assert snap.requests_by_code() == {"200": 7.0, "503": 2.0}
    assert len(snap.buckets) == 3 and len(snap.created) == 2


def test_parse_rejects_garbage() -> None:
    with pytest.raises(a.AnalysisError):
        a.parse_metrics("modelship_requests_total{code=200 oops\n")


def test_delta_per_pod_and_aggregate() -> None:
    before = {
        "pod-a": a.parse_metrics(_exposition({"200": 100, "500": 2}, {"0.1": 40, "0.2": 100, "+Inf": 102})),
        "pod-gone": a.parse_metrics(_exposition({"200": 1000}, {"0.1": 1000, "0.2": 1000, "+Inf": 1000})),
    }
    after = {
        # pod-a served 60 x 200 and 3 x 500 more; buckets +20 (<=0.1), +60 (<=0.2), +63 (all)
        "pod-a": a.parse_metrics(_exposition({"200": 160, "500": 5}, {"0.1": 60, "0.2": 160, "+Inf": 165})),
        # a new pod: all it served counts
        "pod-new": a.parse_metrics(_exposition({"200": 37}, {"0.1": 30, "0.2": 37, "+Inf": 37})),
    }
    m = a.measure_pods(before, after)
    assert m.by_code == {"200": 97.0, "500": 3.0}
    assert m.requests == 100 and m.errors == 3 and m.error_rate == pytest.approx(0.03)
    # buckets summed: le=0.1: 20 + 30 = 50, le=0.2: 60 + 37 = 97, +Inf: 63 + 37 = 100
    # rank 99 lies in +Inf (97 < 99): PromQL answers the highest finite bound, 0.2 s
    assert m.latency_p99_ms == pytest.approx(200.0)


def test_restarted_pod_counts_after_as_the_delta() -> None:
    before = a.parse_metrics(_exposition({"200": 500, "500": 9}, {"0.1": 509, "0.2": 509, "+Inf": 509}))
    # counters fell: the process restarted and served 40 requests since
    after = a.parse_metrics(_exposition({"200": 40}, {"0.1": 10, "0.2": 40, "+Inf": 40}, created=1700000100.0))
    d = a.delta(before, after)
    assert d.requests_by_code() == {"200": 40.0}
    # restarted, and already past the old counts: only the _created times tell
    after_big = a.parse_metrics(
        _exposition({"200": 900, "500": 10}, {"0.1": 900, "0.2": 910, "+Inf": 910}, created=1700000100.0)
    )
    assert a.delta(before, after_big).requests_by_code() == {"200": 900.0, "500": 10.0}
    # same process: a plain difference
    same = a.parse_metrics(_exposition({"200": 600, "500": 9}, {"0.1": 600, "0.2": 609, "+Inf": 609}))
    assert a.delta(before, same).requests_by_code() == {"200": 100.0, "500": 0.0}


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        # 10 observations, all in (0.1, 0.2]: rank 9.9 -> 0.1 + 0.1 * 9.9 / 10 = 0.199
        ({0.1: 0, 0.2: 10, math.inf: 10}, 0.99, 0.199),
        # all in the first bucket, which starts at 0: 0.05 * 9.9 / 10 = 0.0495
        ({0.05: 10, 0.1: 10, math.inf: 10}, 0.99, 0.0495),
        # median of 4 in (1, 2] with 2 below 1: 1 + 1 * (2 - 2) / 2 = 1.0
        ({1.0: 2, 2.0: 4, math.inf: 4}, 0.5, 1.0),
        # rank beyond the last finite bucket: the highest finite bound
        ({1.0: 1, math.inf: 5}, 0.99, 1.0),
        # non-monotonic counts (scrape races) are evened out: {1: 4, 2: 4, inf: 4} -> 0.99 * 4 = 3.96 -> 0.99
        ({1.0: 4, 2.0: 3, math.inf: 4}, 0.99, 0.99),
    ],
)
def test_histogram_quantile_like_promql(buckets: dict[float, float], q: float, expected: float) -> None:
    assert a.histogram_quantile(q, buckets) == pytest.approx(expected)


@pytest.mark.parametrize("buckets", [{}, {0.1: 3}, {0.1: 0, math.inf: 0}, {0.1: 3, 0.2: 5}])
def test_histogram_quantile_nan_cases(buckets: dict[float, float]) -> None:
    assert a.histogram_quantile(0.99, buckets) is None


LIMITS = AnalysisSpec(max_error_rate=0.01, max_latency_p99_ms=250, min_requests=50)


@pytest.mark.parametrize(
    ("measurement", "limits", "result", "says"),
    [
        (a.Measurement(200, 1, 120.0), LIMITS, "pass", "error rate 0.50% within 1.00%"),
        (a.Measurement(200, 3, 120.0), LIMITS, "fail", "error rate 1.50% above 1.00%"),
        (a.Measurement(200, 0, 300.0), LIMITS, "fail", "p99 300.0ms above 250ms"),
        (a.Measurement(200, 9, 900.0), LIMITS, "fail", "p99 900.0ms above 250ms"),
        (a.Measurement(49, 0, 10.0), LIMITS, "inconclusive", "only 49 requests in the window, 50 needed"),
        (a.Measurement(49, 49, 9000.0), LIMITS, "inconclusive", "only 49"),  # few requests never decide
        (a.Measurement(0, 0, None), AnalysisSpec(min_requests=0), "inconclusive", "only 0 requests"),
        (a.Measurement(100, 0, None), LIMITS, "inconclusive", "no latency samples"),
        (a.Measurement(100, 5, None), LIMITS, "fail", "above 1.00%"),
        (a.Measurement(100, 0, 9000.0), AnalysisSpec(max_latency_p99_ms=None), "pass", "error rate 0.00%"),
        (a.Measurement(100, 1, 250.0), AnalysisSpec(max_error_rate=0.01, max_latency_p99_ms=250), "pass", "within"),
    ],
)
def test_judge(measurement: a.Measurement, limits: AnalysisSpec, result: str, says: str) -> None:
    verdict = a.judge(measurement, limits)
    assert verdict.result == result
    assert says in verdict.message


def test_verdict_reports_stable_alongside_and_status_shape() -> None:
    stable = a.Measurement(1000, 2, 80.0)
    verdict = a.judge(a.Measurement(100, 3, 120.0), LIMITS, stable=stable)
    assert verdict.result == "fail" and verdict.stable == stable
    assert "stable: 1000 requests, error rate 0.20%, p99 80.0ms" in verdict.message
    assert verdict.to_status() == {
        "verdict": "Fail", "requests": 100, "errorRate": 0.03, "latencyP99Ms": 120.0, "message": verdict.message,
    }


def test_promql_queries_select_one_revision_by_the_labels_the_operator_controls() -> None:
    # a name long enough that Kubernetes cuts the generated pod names: no pod-name pattern
    name = "fraud-detector-transactions-eu-west"
    q = a.promql_queries("ml", name, "0123abcdef", 120)
    sel = f'namespace="ml",modeldeployment="{name}",revision="0123abcdef"'
    assert q[a.REQUESTS_QUERY] == f"sum by (code) (increase(modelship_requests_total{{{sel}}}[120s]))"
    assert q[a.P99_QUERY] == (
        f"histogram_quantile(0.99, sum by (le) (rate(modelship_request_duration_seconds_bucket{{{sel}}}[120s])))"
    )
    assert "pod" not in q[a.REQUESTS_QUERY]
    # quotes and backslashes in a value stay inside the string
    assert 'namespace="a\\"b"' in a.series_selector('a"b', "x", "y")


def test_series_relabelings_copy_the_pod_labels() -> None:
    assert a.series_relabelings() == (
        ("__meta_kubernetes_pod_label_app_kubernetes_io_instance", "modeldeployment"),
        ("__meta_kubernetes_pod_label_modelship_dev_revision", "revision"),
    )


@pytest.mark.parametrize(("since", "interval", "scrape", "expected"), [
    (30, 30, 30, 120),  # a 30 s window over 30 s scrapes holds one sample: four intervals instead
    (30, 30, 15, 60),
    (300, 30, 30, 300),  # a late window covers everything since the last one
    (10, 180, 30, 180),
])
def test_query_window_holds_at_least_four_scrapes(since: float, interval: float, scrape: float,
                                                  expected: float) -> None:
    assert a.query_window(since, interval, scrape) == expected


def test_measurement_from_prometheus_answers() -> None:
    body = {  # the JSON /api/v1/query answers with
        "status": "success",
        "data": {"resultType": "vector", "result": [
            {"metric": {"code": "200"}, "value": [1700000000.1, "95.5"]},
            {"metric": {"code": "503"}, "value": [1700000000.1, "4.5"]},
            {"metric": {"code": "404"}, "value": [1700000000.1, "NaN"]},
        ]},
    }
    p99 = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "0.0425"]}]}}
    m = a.measurement_from_prometheus({a.REQUESTS_QUERY: body, a.P99_QUERY: p99})
    assert m.requests == 100 and m.errors == 4.5 and m.latency_p99_ms == pytest.approx(42.5)
    empty = {"resultType": "vector", "result": []}
    m = a.measurement_from_prometheus({a.REQUESTS_QUERY: empty, a.P99_QUERY: empty})
    assert m.requests == 0 and m.latency_p99_ms is None and a.judge(m, LIMITS).result == "inconclusive"
    with pytest.raises(a.AnalysisError):
        a.measurement_from_prometheus({a.REQUESTS_QUERY: {"resultType": "matrix", "result": []}, a.P99_QUERY: empty})
