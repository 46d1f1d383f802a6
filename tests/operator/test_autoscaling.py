"""Autoscaling on serving signals (issue 13 item 3): which autoscaler renders when, its exact
shape checked against KEDA's ScaledObject schema and Kubernetes' own, the switch between the
two through reconcile (the other one pruned first, no writes when nothing changed), the total
a ScaledObject writes through /scale split by the rollout, and the PromQL the trigger asks,
evaluated by a real Prometheus engine (promtool).
"""
from __future__ import annotations

import asyncio
import copy
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kube_double import ResourceType
from modelship_operator.kube import TemporaryError
from modelship_operator.planning import Observed, plan
from modelship_operator.planning.scaling import SERVING_METRICS, decimal, quantity, total_query
from modelship_operator.reconcile import Discovery, reconcile
from modelship_operator.render import render
from modelship_operator.settings import Settings
from modelship_operator.spec import ModelDeployment
from test_reconcile import NS, Cluster, example

PROMETHEUS = "http://prometheus-operated.monitoring:9090"
SETTINGS = Settings(server_image="registry.example/modelship-server:test", prometheus_url=PROMETHEUS)
NO_PROMETHEUS = Settings(server_image="registry.example/modelship-server:test")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
K8S_VERSION = "1.34"
PROMTOOL = shutil.which("promtool")

# ----------------------------------------------------------------------------- KEDA's schema
# The part of KEDA's ScaledObject (keda.sh/v1alpha1) the operator relies on, copied from
# kedacore/keda config/crd/bases/keda.sh_scaledobjects.yaml at commit
# 8b4f083ca8c8c2baf8477e322bd4d16ac4dfa09a (2026-08-20, v2.20.1-117-g8b4f083ca; unchanged in these
# fields since v2.x's v1 CRD): names, types, bounds and required lists exactly as written there;
# the fields we never set (advanced, fallback, pollingInterval, cooldownPeriod, idleReplicaCount,
# authenticationRef, ...) are left out, so rendering one of them fails here until it is added.
KEDA_VERSION = "v2.20.1-117-g8b4f083ca (8b4f083ca8c8c2baf8477e322bd4d16ac4dfa09a)"
SCALEDOBJECT_SPEC: dict[str, Any] = {
    "type": "object",
    "required": ["scaleTargetRef", "triggers"],
    "additionalProperties": False,
    "properties": {
        "scaleTargetRef": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "name": {"type": "string", "minLength": 1},
            },
        },
        "minReplicaCount": {"type": "integer", "format": "int32", "minimum": 0},
        "maxReplicaCount": {"type": "integer", "format": "int32", "minimum": 1},
        "triggers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["metadata", "type"],
                "additionalProperties": False,
                "properties": {
                    "type": {"type": "string", "minLength": 1},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "metricType": {"type": "string"},
                },
            },
        },
    },
}
# spec's x-kubernetes-validations there, as a predicate.
MIN_LE_MAX = ("minReplicaCount must be less than or equal to maxReplicaCount",
              lambda spec: "minReplicaCount" not in spec or spec["minReplicaCount"] <= spec.get("maxReplicaCount", 100))
# KEDA's prometheus scaler (pkg/scalers/prometheus_scaler.go, same commit): the metadata keys it
# reads (`keda:"name=..."`) and which it requires; ignoreNullValues parses as a bool (default
# true). GetMetricTargetType (pkg/scalers/scaler.go): "" means AverageValue, Utilization is
# refused, AverageValue and Value are what it passes on to the HPA.
PROMETHEUS_REQUIRED = {"serverAddress", "query", "threshold"}
PROMETHEUS_OPTIONAL = {"queryParameters", "activationThreshold", "namespace", "customHeaders", "ignoreNullValues",
                       "unsafeSsl", "awsRegion", "timeout", "identityOwner"}
METRIC_TYPES = {"AverageValue", "Value"}


def keda_errors(so: dict[str, Any]) -> list[str]:
    """What the pinned KEDA schema and its prometheus scaler would reject in a ScaledObject."""
    errors = [f"{'.'.join(map(str, e.absolute_path)) or 'spec'}: {e.message}"
              for e in jsonschema.Draft7Validator(SCALEDOBJECT_SPEC).iter_errors(so.get("spec"))]
    if (so.get("apiVersion"), so.get("kind")) != ("keda.sh/v1alpha1", "ScaledObject"):
        errors.append("not a keda.sh/v1alpha1 ScaledObject")
    spec = so.get("spec") or {}
    if not errors and not MIN_LE_MAX[1](spec):
        errors.append(MIN_LE_MAX[0])
    for trigger in spec.get("triggers") or ():
        if not isinstance(trigger, dict) or trigger.get("type") != "prometheus":
            continue
        keys = set(trigger.get("metadata") or {})
        errors += [f"prometheus trigger: {k} is required" for k in sorted(PROMETHEUS_REQUIRED - keys)]
        errors += [f"prometheus trigger: unknown {k}" for k in sorted(keys - PROMETHEUS_REQUIRED - PROMETHEUS_OPTIONAL)]
        if trigger.get("metricType", "AverageValue") not in METRIC_TYPES:
            errors.append(f"metricType {trigger['metricType']!r}")
        if (trigger.get("metadata") or {}).get("ignoreNullValues", "true") not in ("true", "false"):
            errors.append("ignoreNullValues must be true or false")
        try:
            float((trigger.get("metadata") or {}).get("threshold", ""))
        except ValueError:
            errors.append("threshold must parse as a float")
    return errors


def keda_crd() -> dict[str, Any]:
    """A CRD for the API doubles built from the pinned schema: the double prunes every field it
    does not declare, as the API server does, so a rendered field outside it shows as drift."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "scaledobjects.keda.sh"},
        "spec": {
            "group": "keda.sh", "scope": "Namespaced",
            "names": {"kind": "ScaledObject", "listKind": "ScaledObjectList", "plural": "scaledobjects",
                      "singular": "scaledobject", "shortNames": ["so"]},
            "versions": [{
                "name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "required": ["spec"], "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                    "spec": {k: v for k, v in SCALEDOBJECT_SPEC.items() if k != "additionalProperties"}
                    | {"properties": {k: {kk: vv for kk, vv in v.items() if kk != "additionalProperties"}
                                      if k != "triggers" else
                                      {**v, "items": {kk: vv for kk, vv in v["items"].items()
                                                      if kk != "additionalProperties"}}
                                      for k, v in SCALEDOBJECT_SPEC["properties"].items()}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                }}},
            }],
        },
    }


# ----------------------------------------------------------------------------- rendering


def body(autoscaling: dict[str, Any] | None, name: str = "fraud") -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": "pvc://models/fraud/1.4.0/model.pt", "version": "1.4.0"},
                            "replicas": 2, "gpu": {"count": 1}}
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    return {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS, "uid": "u-1"}, "spec": spec}


def autoscaler(autoscaling: dict[str, Any] | None, *, keda: bool, settings: Settings = SETTINGS) -> list[dict]:
    manifests = render(plan(ModelDeployment.from_body(body(autoscaling)), Observed(scaledobject_served=keda),
                            settings, NOW))
    return [m for m in manifests if m["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]


def test_cpu_scaling_renders_todays_hpa_whatever_the_cluster_offers() -> None:
    spec = {"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilization": 60,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": "x"},
                                                  "target": {"type": "AverageValue", "averageValue": "1"}}}]}
    for keda in (False, True):
        (hpa,) = autoscaler(spec, keda=keda)
        assert hpa["kind"] == "HorizontalPodAutoscaler"
        assert hpa["spec"]["metrics"] == [
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                        "averageUtilization": 60}}},
            spec["metrics"][0]]
        assert "metric" not in yaml.safe_dump(hpa["spec"]["metrics"][0])  # no serving metric added
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


@pytest.mark.parametrize("metric, name, target, value", [
    ("inflight", "modelship_inflight_requests", 4, "4"),
    ("queue", "modelship_queue_depth_rows", 16, "16"),
    ("rps", "modelship_requests_per_second", 2.5, "2500m"),
])
def test_a_serving_metric_without_keda_is_an_hpa_pods_metric(metric: str, name: str, target: float,
                                                             value: str) -> None:
    spec = {"minReplicas": 1, "maxReplicas": 8, "metric": metric, "target": target}
    # No KEDA, or KEDA but no Prometheus address for its trigger: prometheus-adapter's metric.
    for keda, settings in ((False, SETTINGS), (True, NO_PROMETHEUS)):
        (hpa,) = autoscaler(spec, keda=keda, settings=settings)
        assert hpa["kind"] == "HorizontalPodAutoscaler"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
                                                 "name": "fraud"}
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 8)
        # The CPU default (targetCPUUtilization 70) belongs to metric cpu: not scaled on here.
        assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
            "metric": {"name": name}, "target": {"type": "AverageValue", "averageValue": value}}}]
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


def test_extra_metrics_need_an_hpa_even_with_keda() -> None:
    extra = {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization",
                                                                           "averageUtilization": 80}}}
    (hpa,) = autoscaler({"maxReplicas": 4, "metric": "inflight", "target": 3, "metrics": [extra]}, keda=True)
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods", "Resource"]
    assert hpa["spec"]["metrics"][1] == extra
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


@pytest.mark.parametrize("metric, target", [("inflight", 4), ("queue", 16), ("rps", 0.5)])
def test_a_serving_metric_with_keda_and_prometheus_is_a_scaledobject(metric: str, target: float) -> None:
    (so,) = autoscaler({"minReplicas": 2, "maxReplicas": 10, "metric": metric, "target": target}, keda=True)
    assert keda_errors(so) == [], KEDA_VERSION
    assert so["metadata"]["name"] == "fraud" and so["metadata"]["namespace"] == NS
    assert so["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert so["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelship-operator"
    # KEDA's own HPA does not pose as the operator's child.
    assert so["metadata"]["annotations"]["scaledobject.keda.sh/hpa-excluded-labels"] == \
        "app.kubernetes.io/managed-by,app.kubernetes.io/name"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
                                      "name": "fraud"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 10)
    (trigger,) = spec["triggers"]
    # The sum over the pods with AverageValue: KEDA's HPA wants ceil(sum / threshold) pods.
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": PROMETHEUS,
        "query": total_query(metric, NS, "fraud", SETTINGS.prometheus_scrape_interval),
        "threshold": decimal(target),
        "ignoreNullValues": "false",  # no series is an error (HPA holds), never 0 (scale in)
    }
    assert trigger["metadata"]["query"].startswith("sum(") and f'namespace="{NS}"' in trigger["metadata"]["query"]
    assert 'modeldeployment="fraud"' in trigger["metadata"]["query"]


def test_the_pinned_schema_has_teeth() -> None:
    (so,) = autoscaler({"maxReplicas": 3, "metric": "inflight", "target": 2}, keda=True)
    assert keda_errors(so) == []
    broken = {
        "no name": lambda s: s["spec"]["scaleTargetRef"].pop("name"),
        "threshold as a number": lambda s: s["spec"]["triggers"][0]["metadata"].update(threshold=2),
        "no triggers": lambda s: s["spec"].update(triggers=[]),
        "min above max": lambda s: s["spec"].update(minReplicaCount=5),
        "a typo": lambda s: s["spec"].update(maxReplicas=3),
        "no query": lambda s: s["spec"]["triggers"][0]["metadata"].pop("query"),
        "utilization": lambda s: s["spec"]["triggers"][0].update(metricType="Utilization"),
        "unknown trigger field": lambda s: s["spec"]["triggers"][0]["metadata"].update(serverAdress="x"),
    }
    for what, breaks in broken.items():
        bad = copy.deepcopy(so)
        breaks(bad)
        assert keda_errors(bad), what


@pytest.mark.parametrize("value, text", [(4, "4"), (0.5, "500m"), (2.5, "2500m"), (0.0001, "100u"),
                                         (1e-12, "1n"), (1e6, "1000000"), (12.25, "12250m")])
def test_targets_render_as_the_quantity_the_api_server_keeps(value: float, text: str) -> None:
    assert quantity(value) == text
    assert float(decimal(value)) == value and "e" not in decimal(value)


def test_the_api_names_the_same_metrics() -> None:
    import dataclasses
    import typing

    from modelship_operator.api.v1alpha1 import AutoscalingSpec

    (field,) = [f for f in dataclasses.fields(AutoscalingSpec) if f.name == "metric"]
    hint = typing.get_type_hints(AutoscalingSpec)["metric"]
    assert set(typing.get_args(hint)) == {"cpu", *SERVING_METRICS}, field


# ----------------------------------------------------------------------------- PromQL, evaluated


def _promql_test(tmp_path: Path, series: list[dict], tests: list[dict]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "empty.rules.yaml").write_text("groups: []\n")
    spec = {"rule_files": ["empty.rules.yaml"], "evaluation_interval": "30s",
            "tests": [{"interval": "30s", "input_series": series, "promql_expr_test": tests}]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def _series(metric: str, pod: str, values: str, md: str = "fraud", namespace: str = NS) -> dict[str, str]:
    return {"series": f'{metric}{{namespace="{namespace}",modeldeployment="{md}",pod="{pod}",revision="r1"}}',
            "values": values}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
def test_the_trigger_queries_give_the_total_over_the_modeldeployments_pods(tmp_path: Path) -> None:
    """Two pods of `fraud` (stable and canary), a pod of another ModelDeployment and one of a
    `fraud` in another namespace: the query sums exactly the first two, one sample."""
    series = [
        _series("modelship_inflight_requests", "a", "3x20"),
        _series("modelship_inflight_requests", "b", "5x20"),
        _series("modelship_inflight_requests", "c", "100x20", md="other"),
        _series("modelship_inflight_requests", "d", "100x20", namespace="elsewhere"),
        _series("modelship_queue_depth_rows", "a", "10x20"),
        _series("modelship_queue_depth_rows", "b", "22x20"),
        # 10 and 5 requests per second (300 and 150 per 30 s scrape); one pod has none yet.
        _series("modelship_requests_total", "a", "0+300x20"),
        _series("modelship_requests_total", "b", "0+150x20"),
        _series("modelship_requests_total", "c", "0+9000x20", md="other"),
        *(_series("modelship_ready", pod, "1x20") for pod in "abe"),
    ]
    at = "5m"

    def case(metric: str, value: float, md: str = "fraud") -> dict:
        return {"expr": total_query(metric, NS, md, 30.0), "eval_time": at,
                "exp_samples": [{"labels": "{}", "value": value}]}

    tests = [case("inflight", 8), case("queue", 32), case("rps", 15)]
    # A ModelDeployment whose pods answered nothing yet: 0 requests per second, not "no data".
    quiet = [_series("modelship_ready", "q", "1x20", md="quiet")]
    tests.append(case("rps", 0, md="quiet"))
    # No series at all (Prometheus lost the pods): no sample, which KEDA with ignoreNullValues
    # false reports as an error (the HPA holds), never as 0.
    tests += [{"expr": total_query(m, NS, "gone", 30.0), "eval_time": at, "exp_samples": []}
              for m in SERVING_METRICS]
    proc = _promql_test(tmp_path, series + quiet, tests)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The check has teeth: a wrong expectation fails.
    proc = _promql_test(tmp_path, series, [case("inflight", 9)])
    assert proc.returncode != 0


# ----------------------------------------------------------------------------- reconcile


def _cluster(*, keda: bool) -> Cluster:
    cluster = Cluster()
    if keda:
        store = cluster.kube.store
        store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None, keda_crd())
    return cluster


def _reconcile(cluster: Cluster, name: str, settings: Settings = SETTINGS):
    cluster.now += timedelta(seconds=5)
    return asyncio.run(reconcile(cluster.md(name), cluster.kube, settings, cluster.now, discovery=Discovery(ttl=0)))


def _serving(name: str = "recommender", metric: str = "inflight", target: float = 4) -> dict[str, Any]:
    md = example("autoscaling.yaml")
    md["metadata"]["name"] = name
    md["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 12, "metric": metric, "target": target}
    return md


def _autoscalers(cluster: Cluster) -> list[tuple[str, str]]:
    found = [(h["kind"], h["metadata"]["name"]) for h in cluster.children("HorizontalPodAutoscaler", "autoscaling/v2")]
    if ("keda.sh", "scaledobjects") in cluster.kube.store.types:
        found += [(s["kind"], s["metadata"]["name"]) for s in cluster.children("ScaledObject", "keda.sh/v1alpha1")]
    return found


def test_reconcile_applies_a_scaledobject_when_keda_is_served_and_then_writes_nothing() -> None:
    cluster = _cluster(keda=True)
    cluster.create(_serving())
    first = _reconcile(cluster, "recommender")
    assert "ScaledObject/recommender" in first.applied
    assert not any(a.startswith("HorizontalPodAutoscaler/") for a in first.applied)
    assert _autoscalers(cluster) == [("ScaledObject", "recommender")]
    (so,) = cluster.children("ScaledObject", "keda.sh/v1alpha1")
    assert keda_errors(so) == []
    assert so["metadata"]["ownerReferences"][0]["uid"] == cluster.md("recommender")["metadata"]["uid"]
    mark = len(cluster.kube.writes)
    again = _reconcile(cluster, "recommender")
    # Every field we render survived the schema's pruning: nothing differs, nothing is written.
    assert not again.wrote and cluster.kube.writes_since(mark) == []


def test_reconcile_applies_the_adapter_hpa_without_keda() -> None:
    cluster = _cluster(keda=False)
    cluster.create(_serving(metric="queue", target=8))
    first = _reconcile(cluster, "recommender")
    assert "HorizontalPodAutoscaler/recommender" in first.applied
    (hpa,) = cluster.children("HorizontalPodAutoscaler", "autoscaling/v2")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "modelship_queue_depth_rows"
    assert not _reconcile(cluster, "recommender").wrote


def test_switching_prunes_the_other_autoscaler_first_both_ways() -> None:
    cluster = _cluster(keda=False)
    cluster.create(_serving())
    _reconcile(cluster, "recommender")
    assert _autoscalers(cluster) == [("HorizontalPodAutoscaler", "recommender")]

    # KEDA is installed: the HPA goes before the ScaledObject is applied (KEDA's webhook
    # rejects a ScaledObject whose target another HPA scales).
    store = cluster.kube.store
    store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None, keda_crd())
    mark = len(cluster.kube.writes)
    result = _reconcile(cluster, "recommender")
    assert result.pruned == ["HorizontalPodAutoscaler/recommender"]
    writes = [(w.verb, w.kind) for w in cluster.kube.writes_since(mark)]
    assert writes.index(("delete", "HorizontalPodAutoscaler")) < writes.index(("apply", "ScaledObject"))
    assert _autoscalers(cluster) == [("ScaledObject", "recommender")]
    assert not _reconcile(cluster, "recommender").wrote

    # Back to cpu: the ScaledObject goes first, today's HPA comes back.
    cluster.patch_spec("recommender", {"autoscaling": {"metric": "cpu", "target": None, "targetCPUUtilization": 70}})
    mark = len(cluster.kube.writes)
    result = _reconcile(cluster, "recommender")
    assert result.pruned == ["ScaledObject/recommender"]
    writes = [(w.verb, w.kind) for w in cluster.kube.writes_since(mark)]
    assert writes.index(("delete", "ScaledObject")) < writes.index(("apply", "HorizontalPodAutoscaler"))
    (hpa,) = cluster.children("HorizontalPodAutoscaler", "autoscaling/v2")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert _autoscalers(cluster) == [("HorizontalPodAutoscaler", "recommender")]
    assert not _reconcile(cluster, "recommender").wrote

    # The operator loses its Prometheus address: the adapter HPA replaces the ScaledObject.
    cluster.patch_spec("recommender", {"autoscaling": {"metric": "rps", "target": 20}})
    assert "ScaledObject/recommender" in _reconcile(cluster, "recommender").applied
    result = _reconcile(cluster, "recommender", NO_PROMETHEUS)
    assert result.pruned == ["ScaledObject/recommender"] and "HorizontalPodAutoscaler/recommender" in result.applied
    assert not _reconcile(cluster, "recommender", NO_PROMETHEUS).wrote


def test_a_webhook_that_still_sees_the_old_hpa_is_retried_not_failed() -> None:
    cluster = _cluster(keda=False)
    cluster.create(_serving())
    _reconcile(cluster, "recommender")
    store = cluster.kube.store
    store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None, keda_crd())
    cluster.kube.fail_next("apply", 403, 'admission webhook "vscaledobject.kb.io" denied the request: the workload '
                           "'recommender' of type 'modelship.dev/v1alpha1.ModelDeployment' is already managed by "
                           "the hpa 'recommender'", kind="ScaledObject")
    with pytest.raises(TemporaryError, match="previous autoscaler was just removed"):
        _reconcile(cluster, "recommender")
    assert cluster.md("recommender")["status"].get("phase") != "Failed"
    result = _reconcile(cluster, "recommender")  # the retry
    assert "ScaledObject/recommender" in result.applied and result.error is None
    assert _autoscalers(cluster) == [("ScaledObject", "recommender")]


def test_a_scaledobject_held_by_kedas_finalizer_is_deleted_once() -> None:
    cluster = _cluster(keda=True)
    cluster.create(_serving())
    _reconcile(cluster, "recommender")
    store = cluster.kube.store
    so_type = store.type_for("keda.sh/v1alpha1", "ScaledObject")
    store.patch(so_type, NS, "recommender", "application/merge-patch+json",
                {"metadata": {"finalizers": ["finalizer.keda.sh"]}})
    cluster.patch_spec("recommender", {"autoscaling": {"metric": "cpu", "target": None}})
    assert "ScaledObject/recommender" in _reconcile(cluster, "recommender").pruned
    assert store.get(so_type, NS, "recommender")["metadata"]["deletionTimestamp"]  # KEDA has not let go yet
    mark = len(cluster.kube.writes)
    assert not _reconcile(cluster, "recommender").wrote  # not deleted again and again
    assert cluster.kube.writes_since(mark) == []


def test_the_rollout_splits_the_total_the_scaledobject_writes_through_scale() -> None:
    """KEDA (its HPA) writes only spec.replicas through the ModelDeployment's /scale; the operator
    splits that total between stable and canary by the step's weight, and never writes spec."""
    cluster = _cluster(keda=True)
    md = example("canary-replicas.yaml")
    md["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 12, "metric": "inflight", "target": 4}
    cluster.create(md)
    name = "fraud-cpu"
    _reconcile(cluster, name)
    (stable,) = cluster.deployments()
    cluster.available(stable["metadata"]["name"], 4)
    _reconcile(cluster, name)
    assert cluster.md(name)["status"]["phase"] == "Healthy"
    assert _autoscalers(cluster) == [("ScaledObject", name)]

    # A new model version: the canary at setWeight 25 of the total 4.
    cluster.patch_spec(name, {"model": {"uri": "pvc://models/fraud/1.6.0/model.pt", "version": "1.6.0"}})
    _reconcile(cluster, name)

    def replicas() -> dict[str, int]:
        return {d["metadata"]["labels"]["modelship.dev/role"]: d["spec"]["replicas"] for d in cluster.deployments()}

    def all_ready() -> None:
        for dep in cluster.deployments():
            cluster.available(dep["metadata"]["name"], dep["spec"]["replicas"])
        _reconcile(cluster, name)

    all_ready()
    assert replicas() == {"stable": 3, "canary": 1}

    # KEDA scales out to 8 through /scale (its own field manager, the scale subresource).
    store = cluster.kube.store
    store.patch(cluster.md_type, NS, name, "application/merge-patch+json", {"spec": {"replicas": 8}},
                subresource="scale", manager="keda")
    spec_before = cluster.md(name)["spec"]
    _reconcile(cluster, name)
    all_ready()
    assert replicas() == {"stable": 6, "canary": 2}  # still 25 %
    all_ready()  # the surplus stable pod is gone
    status = cluster.md(name)["status"]
    assert status["replicas"] == 8 and status["canary"]["weight"] == 25
    assert cluster.md(name)["spec"] == spec_before  # the operator never wrote spec
    assert not any(w.kind == "ModelDeployment" and w.verb in ("apply", "patch") and
                   "spec" in (w.body or {}) for w in cluster.kube.writes)
    # And in: 4 again.
    store.patch(cluster.md_type, NS, name, "application/merge-patch+json", {"spec": {"replicas": 4}},
                subresource="scale", manager="keda")
    _reconcile(cluster, name)
    all_ready()
    assert replicas() == {"stable": 3, "canary": 1}
    assert _autoscalers(cluster) == [("ScaledObject", name)]


def test_kubectl_modelship_render_shows_either_autoscaler() -> None:
    """`render --keda` with the operator's Prometheus setting prints the ScaledObject; without
    either, the HPA the operator applies on a cluster without KEDA."""
    import io

    from modelship_operator.cli import main

    def rendered(argv: list[str], env: dict[str, str]) -> list[str]:
        out, err = io.StringIO(), io.StringIO()
        path = Path(__file__).resolve().parents[2] / "examples" / "autoscaling-serving.yaml"
        assert main(["render", "-f", str(path), *argv], env=env, stdout=out, stderr=err, stdin=io.StringIO()) == 0
        return [d["kind"] for d in yaml.safe_load_all(out.getvalue()) if d]

    with_url = {"MODELSHIP_PROMETHEUS_URL": PROMETHEUS}
    assert "ScaledObject" in rendered(["--keda"], with_url)
    for argv, env in (([], with_url), (["--keda"], {})):
        kinds = rendered(argv, env)
        assert "HorizontalPodAutoscaler" in kinds and "ScaledObject" not in kinds


def test_a_settled_object_is_reconciled_again_once_keda_is_installed(apiserver) -> None:
    """The runtime skips settled objects while nothing they read changes; whether KEDA's CRD is
    served is one of those inputs, so installing KEDA swaps the HPA for a ScaledObject at the
    next resync without any change to the object or its children."""
    from kube_double import deployment_status
    from modelship_operator import caches
    from modelship_operator.kube import Connection, Kube
    from modelship_operator.runtime.reconciler import Reconciler

    root = Path(__file__).resolve().parents[2]
    double, store = apiserver, apiserver.store
    double.call(lambda: store.create(store.type_for("v1", "Namespace"), None, {"metadata": {"name": NS}}))
    double.call(lambda: store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"), None,
                                     yaml.safe_load((root / "crds" / "modeldeployments.modelship.dev.yaml").read_text())))
    md = yaml.safe_load((root / "examples" / "autoscaling-serving.yaml").read_text())
    double.call(lambda: store.create(store.type_for("modelship.dev/v1alpha1", "ModelDeployment"), NS, md))
    deps, name = store.type_for("apps/v1", "Deployment"), md["metadata"]["name"]

    async def go() -> None:
        kube = Kube(Connection(server=double.url, token=double.token))

        async def nothing(*_: Any) -> None:
            return None
        watches = await caches.start(kube, (NS,), nothing)
        r = Reconciler(SETTINGS, kube, discovery=Discovery(ttl=0))
        try:
            await r(NS, name, "change")
            (dep,) = double.call(lambda: store.list(deps, NS))
            double.call(lambda: store.set_status(deps, NS, dep["metadata"]["name"],
                                                 deployment_status(dep, int(dep["spec"]["replicas"]))))
            for _ in range(100):  # the watch cache sees the deployment controller's status
                (cached,) = await kube.list("apps/v1", "Deployment", NS)
                if (cached.get("status") or {}).get("readyReplicas"):
                    break
                await asyncio.sleep(0.05)
            await r(NS, name, "deployment modified")
            await r(NS, name, "resync")
            assert (NS, name) in r.settled
            assert await kube.get(*("autoscaling/v2", "HorizontalPodAutoscaler"), NS, name) is not None

            double.call(lambda: store.create(store.type_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
                                             None, keda_crd()))
            await r(NS, name, "resync")
            assert (NS, name) not in r.settled
            assert double.call(lambda: store.find(store.type_for("keda.sh/v1alpha1", "ScaledObject"), NS, name))
            assert double.call(lambda: store.find(store.type_for("autoscaling/v2", "HorizontalPodAutoscaler"),
                                                  NS, name)) is None
        finally:
            await watches.stop()
            await kube.close()

    asyncio.run(go())


def test_an_event_says_when_a_serving_signal_needs_prometheus_adapter() -> None:
    for keda, reasons in ((False, ["RevisionCreated", "AutoscalingThroughAdapter"]), (True, ["RevisionCreated"])):
        cluster = _cluster(keda=keda)
        cluster.create(_serving(metric="rps", target=20))
        _reconcile(cluster, "recommender")
        events = cluster.kube.events_for("recommender")
        assert sorted(e["reason"] for e in events) == sorted(reasons)
        if not keda:
            (note,) = [e for e in events if e["reason"] == "AutoscalingThroughAdapter"]
            assert note["type"] == "Normal" and "modelship_requests_per_second" in note["message"]
        assert not _reconcile(cluster, "recommender").events  # once per spec change
