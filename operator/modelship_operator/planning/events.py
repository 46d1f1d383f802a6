"""Kubernetes Events the plan asks reconcile to emit: one per transition, none in a steady state. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..spec import ModelDeployment
from .pods import RevisionPlan
from .scaling import AutoscalingPlan
from .values import as_int, find_condition


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def spec_warnings(
    rev: RevisionPlan, scaling: AutoscalingPlan | None, md: ModelDeployment | None = None, mode: str = "replicas"
) -> list[Event]:
    """Mistakes the API cannot reject but a user should hear about once per spec change."""
    warnings = []
    cpu_target = scaling is not None and any(
        m.get("type") == "Resource" and (m.get("resource") or {}).get("name") == "cpu" for m in scaling.metrics
    )
    if cpu_target and "cpu" not in (rev.resources.get("requests") or {}) and "cpu" not in (rev.resources.get("limits") or {}):
        warnings.append(
            Event(
                "Warning",
                "CPUTargetWithoutRequests",
                "autoscaling targets CPU utilisation but server.resources sets no cpu request: "
                "the HorizontalPodAutoscaler cannot compute utilisation until one is set",
            )
        )
    if md is not None and md.spec.rollout.traffic == "gateway" and mode != "gateway":
        warnings.append(
            Event(
                "Warning",
                "GatewayAPIUnavailable",
                "rollout.traffic is gateway but the HTTPRoute CRD (gateway.networking.k8s.io/v1) is not served: "
                "splitting traffic by replicas instead",
            )
        )
    return warnings


def transition_events(
    previous: Mapping,
    status: Mapping,
    rev: RevisionPlan,
    warnings: list[Event],
    rollout_events: list[Event] | tuple[Event, ...] = (),
    announce_replacement: bool = True,
) -> tuple[Event, ...]:
    """Events for the transitions between the live and the desired status; none in a steady state."""
    events: list[Event] = []
    if previous.get("observedGeneration") != status.get("observedGeneration"):
        events.extend(warnings)
    before = previous.get("stable") or {}
    if not before.get("hash"):
        events.append(
            Event("Normal", "RevisionCreated", f"revision {rev.number} ({rev.hash}): version {rev.version}, {rev.replicas} replica(s)")
        )
    elif before.get("hash") != rev.hash and announce_replacement:
        events.append(
            Event(
                "Normal",
                "NewRevision",
                f"revision {rev.number} ({rev.hash}, version {rev.version}) replaces "
                f"revision {as_int(before.get('revision'))} ({before.get('hash')}, version {before.get('version', '')})",
            )
        )
    events.extend(rollout_events)

    def flipped(type_: str, to: str) -> Mapping | None:
        now_c = find_condition(status, type_)
        was = find_condition(previous, type_) or {}
        return now_c if now_c and now_c["status"] == to and was.get("status") != to else None

    if cond := flipped("Ready", "True"):
        events.append(Event("Normal", "Ready", cond["message"]))
    degraded = find_condition(status, "Degraded") or {}
    was_degraded = find_condition(previous, "Degraded") or {}
    if degraded.get("status") == "True" and (
        was_degraded.get("status") != "True" or was_degraded.get("reason") != degraded.get("reason")
    ):
        events.append(Event("Warning", degraded["reason"], degraded["message"]))
    elif degraded.get("status") == "False" and was_degraded.get("status") == "True":
        events.append(Event("Normal", "Recovered", (find_condition(status, "Ready") or {}).get("message", "")))
    return tuple(events)

