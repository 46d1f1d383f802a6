"""The Grafana dashboard: real JSON whose every query (and every alert) reads metrics that exist."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from chart_render import CHART, ROOT, VALUE_SETS, by_kind, manifests

METRIC = re.compile(r"\bmodelship_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def _server_metric_names() -> set[str]:
    """Names the server really exposes: its Metrics registry with every family populated."""
    from modelship_server.metrics import Metrics

    m = Metrics("digits", "1.0.0")
    m.observe_request("v2", 200, 0.01)
    m.on_dispatch(0.001)
    m.on_batch(4, 0.002)
    m.on_split()
    m.track(lambda: 0.0, lambda: 0.0, lambda: 1.0)
    m.set_model_info("torchscript", "cpu", "fp32")
    m.track_gpu_memory(lambda: {"allocated": 1.0, "reserved": 2.0, "max_allocated": 3.0})
    text = m.render().decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def _monitoring_doc_names() -> set[str]:
    """Drift/feedback gauges: the names docs/monitoring.md fixes for the server's monitoring."""
    return set(re.findall(r"`(modelship_[a-z0-9_]+)", (ROOT / "docs" / "monitoring.md").read_text()))


def _ksm_names() -> set[str]:
    """ModelDeployment status metrics from the chart's kube-state-metrics config."""
    config = yaml.safe_load((CHART / "files" / "kube-state-metrics-config.yaml").read_text())
    return {f"{r['metricNamePrefix']}_{m['name']}" for r in config["spec"]["resources"] for m in r["metrics"]}


def _known() -> set[str]:
    return _server_metric_names() | _monitoring_doc_names() | _ksm_names()


def _exists(name: str, known: set[str]) -> bool:
    return name in known or any(name.endswith(s) and name.removesuffix(s) in known for s in SUFFIXES)


def _dashboard() -> dict:
    (cm,) = [d for d in by_kind(manifests(VALUE_SETS["monitoring"]), "ConfigMap") if d["metadata"]["name"].endswith("dashboard")]
    (text,) = cm["data"].values()
    return json.loads(text)


def _targets(dash: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]


def test_server_metric_names_are_read_from_the_real_registry() -> None:
    names = _server_metric_names()
    assert {"modelship_requests_total", "modelship_request_duration_seconds", "modelship_queue_depth_rows",
            "modelship_gpu_memory_allocated_bytes", "modelship_model_info"} <= names


def test_dashboard_json_is_a_grafana_dashboard() -> None:
    dash = _dashboard()
    assert dash["uid"] == "modelship-serving" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "namespace", "model", "version"}
    assert json.loads((CHART / "files" / "dashboard.json").read_text()) == dash


def test_dashboard_covers_what_operators_watch() -> None:
    exprs = " ".join(e for _, e in _targets(_dashboard()))
    for metric in ("modelship_requests_total", "modelship_request_duration_seconds_bucket", "modelship_batch_size_rows",
                   "modelship_queue_depth_rows", "modelship_gpu_memory_allocated_bytes", "modelship_canary_weight",
                   "modelship_canary_analysis_error_rate", "modelship_canary_analysis_failures"):
        assert metric in exprs, metric
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}," in exprs
    assert "by (version" in exprs  # per version


def test_every_dashboard_query_reads_metrics_that_exist() -> None:
    known = _known()
    targets = _targets(_dashboard())
    assert targets
    for title, expr in targets:
        names = METRIC.findall(expr)
        assert names, f"{title}: no modelship metric in {expr}"
        missing = [n for n in names if not _exists(n, known)]
        assert not missing, f"{title}: unknown metrics {missing}"


def test_every_alert_reads_metrics_that_exist() -> None:
    known = _known()
    (rule,) = by_kind(manifests(VALUE_SETS["monitoring"]), "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            names = METRIC.findall(r["expr"])
            assert names and all(_exists(n, known) for n in names), (r["alert"], names)


@pytest.mark.parametrize("bogus", ["modelship_requets_total", "modelship_latency_seconds_bucket"])
def test_the_metric_check_catches_a_typo(bogus: str) -> None:
    assert not _exists(bogus, _known())


def _status_schema() -> dict:
    crd = yaml.safe_load((ROOT / "crds" / "modeldeployments.modelship.dev.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _resolve(node: dict, path: list[str]) -> dict:
    for part in path:
        if node.get("type") == "array":
            node = node["items"]
        assert part in node.get("properties", {}), f"{part} not in the CRD schema"
        node = node["properties"][part]
    return node


def test_kube_state_metrics_config_reads_fields_the_crd_defines() -> None:
    """Every path the kube-state-metrics config reads exists in the CRD (status changes break it)."""
    config = yaml.safe_load((CHART / "files" / "kube-state-metrics-config.yaml").read_text())
    root = _status_schema()
    (resource,) = config["spec"]["resources"]
    assert resource["groupVersionKind"] == {"group": "modelship.dev", "version": "v1alpha1", "kind": "ModelDeployment"}
    for metric in resource["metrics"]:
        each = metric["each"]
        spec = each[each["type"][0].lower() + each["type"][1:]]
        base = _resolve(root, spec["path"])
        if "valueFrom" in spec:
            leaf = _resolve(base, spec["valueFrom"])
            assert leaf["type"] in ("integer", "number", "boolean"), (metric["name"], leaf)
        for label_path in spec.get("labelsFromPath", {}).values():
            _resolve(base, label_path)
        if each["type"] == "StateSet":
            phases = base.get("enum") or spec["list"]
            assert set(spec["list"]) == set(phases)
