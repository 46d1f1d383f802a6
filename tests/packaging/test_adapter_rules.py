"""The prometheus-adapter rules the chart ships (issue 13 item 3): they serve, per pod, exactly
the custom metrics the operator's HPA asks for, from series the server really exports, and each
metricsQuery -- expanded as prometheus-adapter expands it -- is valid PromQL that a real
Prometheus engine (promtool) evaluates to the right per-pod values."""
from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_render import CHART, NAMESPACE, by_kind, manifests
from modelship_operator.planning import Observed, plan
from modelship_operator.planning.scaling import PRESENCE_SERIES, SERVING_METRICS
from modelship_operator.render import render
from modelship_operator.settings import Settings
from modelship_operator.spec import ModelDeployment

pytest.importorskip("helm_python", reason="helm-python-sdk (the test extra) renders the chart")
PROMTOOL = shutil.which("promtool")
RULES_FILE = CHART / "files" / "prometheus-adapter-rules.yaml"


def rules() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES_FILE.read_text())


def by_name() -> dict[str, dict[str, Any]]:
    return {r["name"]["as"]: r for r in rules()}


def test_the_chart_renders_the_rules_as_prometheus_adapter_config_when_enabled() -> None:
    assert not [c for c in by_kind(manifests(), "ConfigMap") if c["metadata"]["name"].endswith("-prometheus-adapter")]
    for values, namespace in (({"enabled": True}, NAMESPACE), ({"enabled": True, "namespace": "monitoring"},
                                                                "monitoring")):
        (cm,) = [c for c in by_kind(manifests({"monitoring": {"prometheusAdapter": values}}), "ConfigMap")
                 if c["metadata"]["name"].endswith("-prometheus-adapter")]
        assert cm["metadata"]["namespace"] == namespace
        config = yaml.safe_load(cm["data"]["config.yaml"])
        assert config == {"rules": rules()}  # the shipped file, verbatim


def test_the_rules_serve_the_metrics_the_operator_asks_for() -> None:
    names = by_name()
    assert set(names) == {m.adapter_name for m in SERVING_METRICS.values()}
    for metric, serving in SERVING_METRICS.items():
        rule = names[serving.adapter_name]
        # Per pod, in its namespace: the HPA's Pods metric asks for exactly these resources.
        assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"},
                                                   "pod": {"resource": "pod"}}}, metric
        assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "by (<<.GroupBy>>)" in rule["metricsQuery"]
        if serving.counter:
            assert f"rate({serving.series}{{<<.LabelMatchers>>}}" in rule["metricsQuery"]
            assert rule["seriesQuery"].startswith(PRESENCE_SERIES + "{")
        else:
            assert rule["seriesQuery"].startswith(serving.series + "{")
    # The HPA the operator renders without KEDA names these metrics.
    for metric, serving in SERVING_METRICS.items():
        body = {"metadata": {"name": "m", "namespace": "ml"},
                "spec": {"model": {"uri": "file:///m/model.pt", "version": "1"},
                         "autoscaling": {"maxReplicas": 3, "metric": metric, "target": 2}}}
        desired = plan(ModelDeployment.from_body(body), Observed(), Settings(), datetime.now(timezone.utc))
        (hpa,) = [m for m in render(desired) if m["kind"] == "HorizontalPodAutoscaler"]
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] in names


def test_the_series_the_rules_read_are_what_the_server_exports() -> None:
    from prometheus_client import generate_latest

    from modelship_server.metrics import Metrics

    metrics = Metrics("digits", "1.0.0")
    metrics.track(lambda: 3.0, lambda: 2.0, lambda: 1.0)
    before = generate_latest(metrics.registry).decode()
    metrics.observe_request("v2", 200, 0.01)
    after = generate_latest(metrics.registry).decode()

    def names(text: str) -> set[str]:
        return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}

    exported = names(after)
    for serving in SERVING_METRICS.values():
        assert serving.series in exported, serving
    # What the rps rule discovers pods by exists before any request; the counter does not.
    assert PRESENCE_SERIES in names(before) and "modelship_requests_total" not in names(before)


def expand(rule: dict[str, Any], namespace: str, pods: list[str]) -> str:
    """metricsQuery as prometheus-adapter renders it for a pods query in one namespace
    (Go text/template with << >> delimiters; our rules use Series, LabelMatchers, GroupBy)."""
    series = rule["seriesQuery"].split("{")[0]
    query = (rule["metricsQuery"].replace("<<.Series>>", series)
             .replace("<<.LabelMatchers>>", f'namespace="{namespace}",pod=~"{"|".join(pods)}"')
             .replace("<<.GroupBy>>", "pod"))
    assert "<<" not in query and ">>" not in query, query
    return query


def _promtool(tmp_path: Path, series: list[dict], tests: list[dict]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "empty.rules.yaml").write_text("groups: []\n")
    spec = {"rule_files": ["empty.rules.yaml"], "evaluation_interval": "30s",
            "tests": [{"interval": "30s", "input_series": series, "promql_expr_test": tests}]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
def test_each_metrics_query_is_promql_giving_the_per_pod_value(tmp_path: Path) -> None:
    """Pods a and b of one ModelDeployment and c that has answered nothing yet, in `ml`; pod a of
    the same name in another namespace must not leak in."""

    def s(metric: str, pod: str, values: str, namespace: str = "ml", extra: str = "") -> dict[str, str]:
        return {"series": f'{metric}{{namespace="{namespace}",pod="{pod}",modeldeployment="fraud"{extra}}}',
                "values": values}

    series = [
        s("modelship_inflight_requests", "a", "3x20"), s("modelship_inflight_requests", "b", "5x20"),
        s("modelship_inflight_requests", "c", "0x20"), s("modelship_inflight_requests", "a", "99x20", "other"),
        s("modelship_queue_depth_rows", "a", "12x20"), s("modelship_queue_depth_rows", "b", "0x20"),
        s("modelship_queue_depth_rows", "c", "1x20"),
        # 10 and 5 requests per second, by two status codes on a; nothing on c yet.
        s("modelship_requests_total", "a", "0+240x20", extra=',code="200"'),
        s("modelship_requests_total", "a", "0+60x20", extra=',code="503"'),
        s("modelship_requests_total", "b", "0+150x20", extra=',code="200"'),
        s("modelship_requests_total", "a", "0+3000x20", "other"),
        *(s("modelship_ready", pod, "1x20") for pod in "abc"), s("modelship_ready", "a", "1x20", "other"),
    ]
    expected = {
        "modelship_inflight_requests": {"a": 3, "b": 5, "c": 0},
        "modelship_queue_depth_rows": {"a": 12, "b": 0, "c": 1},
        "modelship_requests_per_second": {"a": 10, "b": 5, "c": 0},
    }
    discovered = {"modelship_inflight_requests": 4, "modelship_queue_depth_rows": 3, "modelship_requests_per_second": 4}
    tests = []
    for name, values in expected.items():
        rule = by_name()[name]
        tests.append({"expr": expand(rule, "ml", ["a", "b", "c"]), "eval_time": "5m",
                      "exp_samples": [{"labels": f'{{pod="{pod}"}}', "value": v} for pod, v in values.items()]})
        # The seriesQuery is PromQL too: it finds the series the adapter discovers (every namespace).
        tests.append({"expr": f"count({rule['seriesQuery']})", "eval_time": "5m",
                      "exp_samples": [{"labels": "{}", "value": discovered[name]}]})
    proc = _promtool(tmp_path, series, tests)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Teeth: a wrong per-pod value fails.
    wrong = [dict(tests[0], exp_samples=[{"labels": '{pod="a"}', "value": 4}])]
    assert _promtool(tmp_path, series, wrong).returncode != 0


def test_values_schema_checks_the_adapter_values() -> None:
    import helm_python as helm

    chart = helm.Chart.load(CHART)
    chart.validate_schema({"monitoring": {"prometheusAdapter": {"enabled": True, "namespace": ""}}})
    for bad in ({"namespace": "Not_A_Namespace"}, {"enabled": "yes"}, {"rateWindow": "2m"}):
        with pytest.raises(helm.HelmError):
            chart.validate_schema({"monitoring": {"prometheusAdapter": bad}})
