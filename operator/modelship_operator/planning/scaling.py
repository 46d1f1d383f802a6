"""How many pods: spec.replicas within the autoscaler's bounds, the HorizontalPodAutoscaler, the
PodDisruptionBudget. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..spec import ModelDeployment
from .values import jsonable


@dataclass(frozen=True)
class AutoscalingPlan:
    min_replicas: int
    max_replicas: int
    metrics: tuple[Mapping, ...]  # complete autoscaling/v2 MetricSpecs


def desired_replicas(md: ModelDeployment) -> int:
    replicas = int(md.spec.replicas)
    scaling = md.spec.autoscaling
    if scaling is not None:
        # The HPA owns spec.replicas through /scale; keep within its bounds meanwhile.
        replicas = min(max(replicas, scaling.min_replicas), scaling.max_replicas)
    return replicas


def autoscaling_plan(md: ModelDeployment) -> AutoscalingPlan | None:
    scaling = md.spec.autoscaling
    if scaling is None:
        return None
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
    metrics.extend(jsonable(scaling.metrics) or ())
    return AutoscalingPlan(int(scaling.min_replicas), int(scaling.max_replicas), tuple(metrics))


def wants_pdb(replicas: tuple[int, ...], scaling: AutoscalingPlan | None) -> bool:
    """A PodDisruptionBudget is rendered when more than one pod may run."""
    # maxUnavailable 1 never blocks a single pod, so the budget follows the most wanted.
    return max(replicas, default=0) > 1 or (scaling is not None and scaling.max_replicas > 1)
