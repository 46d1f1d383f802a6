"""How many pods: spec.replicas within the autoscaler's bounds, the autoscaler (a
HorizontalPodAutoscaler or a KEDA ScaledObject), the PodDisruptionBudget. Pure.

Every autoscaler targets the ModelDeployment's own `/scale` subresource and so writes the total
(`spec.replicas`); the operator splits that total between revisions, whatever wrote it.

`autoscaling.metric` picks the signal:
- `cpu`: an HPA on CPU utilisation (plus any `metrics` passed through), as before;
- `inflight`, `queue`, `rps`: the server's own gauges and counter, per pod. With KEDA's
  ScaledObject CRD served and a Prometheus address known, a ScaledObject whose Prometheus
  trigger asks for the *sum* over the ModelDeployment's pods with `metricType: AverageValue`:
  the HPA KEDA makes then wants ceil(sum / target) pods, i.e. `target` per pod. Otherwise an
  HPA with a `Pods` metric of the same per-pod value, which prometheus-adapter serves with the
  rules the chart ships (charts/modelship/files/prometheus-adapter-rules.yaml). Extra `metrics`
  need an HPA (a ScaledObject cannot carry MetricSpecs), so they keep the HPA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Mapping

from ..analysis import INSTANCE_POD_LABEL, SERIES_LABELS, _promql_string, query_window
from ..settings import Settings
from ..spec import ModelDeployment
from .values import jsonable


@dataclass(frozen=True)
class ServingMetric:
    series: str  # what the server exports (server/modelship_server/metrics.py)
    adapter_name: str  # the per-pod custom metric prometheus-adapter serves (the HPA's Pods metric)
    counter: bool  # a counter: per second through rate()


# autoscaling.metric -> the server's series. The chart's adapter rules serve exactly these names
# (tests/packaging/test_adapter_rules.py holds the two together).
SERVING_METRICS: dict[str, ServingMetric] = {
    "inflight": ServingMetric("modelship_inflight_requests", "modelship_inflight_requests", False),
    "queue": ServingMetric("modelship_queue_depth_rows", "modelship_queue_depth_rows", False),
    "rps": ServingMetric("modelship_requests_total", "modelship_requests_per_second", True),
}
# Exported by every ready or starting server whatever its traffic: the rps query falls back to
# 0 through it for pods that have answered nothing yet (the request counter has no series until
# the first request), while no series at all (Prometheus lost the pods) stays an error.
PRESENCE_SERIES = "modelship_ready"


@dataclass(frozen=True)
class KedaTrigger:
    """One KEDA `prometheus` trigger (metricType AverageValue)."""

    server_address: str
    query: str  # the total over the ModelDeployment's pods, one sample
    threshold: str  # the per-pod target, a decimal


@dataclass(frozen=True)
class AutoscalingPlan:
    min_replicas: int
    max_replicas: int
    metrics: tuple[Mapping, ...]  # complete autoscaling/v2 MetricSpecs (the HPA); () with KEDA
    keda: KedaTrigger | None = None  # a ScaledObject instead of an HPA


def desired_replicas(md: ModelDeployment) -> int:
    replicas = int(md.spec.replicas)
    scaling = md.spec.autoscaling
    if scaling is not None:
        # The autoscaler owns spec.replicas through /scale; keep within its bounds meanwhile.
        replicas = min(max(replicas, scaling.min_replicas), scaling.max_replicas)
    return replicas


def quantity(value: float) -> str:
    """A positive number as the canonical Kubernetes quantity the API server stores ("4", "500m",
    "2500m", "100u"), so that what we apply reads back the same. Finer than nano rounds up."""
    exact = Decimal(repr(float(value)))
    for suffix, scale in (("", 1), ("m", 10**3), ("u", 10**6)):
        scaled = exact * scale
        if scaled == scaled.to_integral_value():
            return f"{int(scaled)}{suffix}"
    return f"{max(1, math.ceil(exact * 10**9))}n"


def decimal(value: float) -> str:
    """A number as plain decimal text (no exponent), as KEDA's threshold parses it."""
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def total_query(metric: str, namespace: str, name: str, scrape_interval_s: float) -> str:
    """PromQL: the sum of `metric` over the ModelDeployment's pods (every revision), one sample.

    Series are selected as the PromQL analysis selects them (`namespace`, `modeldeployment`,
    copied from the pod labels by the ServiceMonitor or the chart's PodMonitor)."""
    serving = SERVING_METRICS[metric]
    selector = (f"namespace={_promql_string(namespace)},"
                f"{SERIES_LABELS[INSTANCE_POD_LABEL]}={_promql_string(name)}")
    if not serving.counter:
        return f"sum({serving.series}{{{selector}}})"
    window = f"{int(math.ceil(query_window(0, 0, scrape_interval_s)))}s"  # rate() needs >= 2 samples
    return (f"sum(rate({serving.series}{{{selector}}}[{window}])) "
            f"or (0 * sum({PRESENCE_SERIES}{{{selector}}}))")


def autoscaling_plan(md: ModelDeployment, settings: Settings | None = None,
                     keda_served: bool = False) -> AutoscalingPlan | None:
    scaling = md.spec.autoscaling
    if scaling is None:
        return None
    bounds = (int(scaling.min_replicas), int(scaling.max_replicas))
    extra = tuple(jsonable(scaling.metrics) or ())
    if scaling.metric == "cpu":
        metrics: list[Mapping] = []
        if scaling.target_cpu_utilization:
            metrics.append(
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": int(scaling.target_cpu_utilization)},
                    },
                }
            )
        return AutoscalingPlan(*bounds, (*metrics, *extra))
    assert scaling.target is not None  # the API's rule: every metric but cpu has a target
    if keda_served and settings is not None and settings.prometheus_url and not extra:
        trigger = KedaTrigger(settings.prometheus_url,
                              total_query(scaling.metric, md.namespace, md.name, settings.prometheus_scrape_interval),
                              decimal(scaling.target))
        return AutoscalingPlan(*bounds, (), trigger)
    pods = {
        "type": "Pods",
        "pods": {
            "metric": {"name": SERVING_METRICS[scaling.metric].adapter_name},
            "target": {"type": "AverageValue", "averageValue": quantity(scaling.target)},
        },
    }
    return AutoscalingPlan(*bounds, (pods, *extra))


def wants_pdb(total: int, revision_replicas: tuple[int, ...], deployments: int,
              scaling: AutoscalingPlan | None) -> bool:
    """A PodDisruptionBudget (over the pods of every revision) whenever more than one pod may run:
    the total asked for, the pods of all revisions together (a canary's pods are extra in gateway
    mode), more than one Deployment with pods (a rollout, an outgoing revision scaling down), or
    the autoscaler's maximum. Never decided per revision: at weight 50 of 2 replicas each side
    has one pod, and the budget must still hold for the two together."""
    return (
        max(total, sum(revision_replicas)) > 1
        or deployments > 1
        or (scaling is not None and scaling.max_replicas > 1)
    )
