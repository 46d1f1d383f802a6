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
