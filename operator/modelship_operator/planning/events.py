"""Kubernetes Events the plan asks reconcile to emit: one per transition, none in a steady state,
and how a repeated event continues one series instead of piling up Event objects. Pure.

Series (what client-go's EventRecorder does with its correlator): an event that repeats is one
Event object whose `count` and `lastTimestamp` move, not a new object each time. The object's name
is derived from what makes events "the same" (`series_name`), so the series survives operator
restarts and leader changes without memory: the same (type, reason, message), or for the reasons
that repeat once per analysis window (`REPEATING_REASONS`, whose numbers differ every window) the
same (type, reason) with the newest message. A series whose last occurrence is older than
`SERIES_WINDOW_S` starts again at count 1.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from ..spec import ModelDeployment
from .pods import RevisionPlan
from .scaling import AutoscalingPlan
from .values import as_int, aware, find_condition, parse_time, timestamp

REPEATING_REASONS = frozenset({"AnalysisPassed", "AnalysisInconclusive", "AnalysisFailed"})
SERIES_WINDOW_S = 600.0


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
    serving = md.spec.autoscaling.metric if md is not None and md.spec.autoscaling is not None else "cpu"
    if scaling is not None and scaling.keda is None and serving != "cpu":
        pods = next((m["pods"]["metric"]["name"] for m in scaling.metrics if m.get("type") == "Pods"), "")
        warnings.append(
            Event(
                "Normal",
                "AutoscalingThroughAdapter",
                f"autoscaling.metric {serving}: KEDA's ScaledObject CRD is not served or the operator has no "
                f"Prometheus address, so a HorizontalPodAutoscaler scales on the Pods metric {pods}; "
                "prometheus-adapter must serve it (the chart's monitoring.prometheusAdapter rules)",
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



def series_name(involved_name: str, involved_uid: str, event: Event) -> str:
    """The name of the Event object that holds this event's series (a DNS subdomain)."""
    key = [involved_uid, event.type, event.reason]
    if event.reason not in REPEATING_REASONS:
        key.append(event.message)
    digest = hashlib.sha256("\x00".join(key).encode()).hexdigest()[:16]
    return f"{involved_name}.{digest}"


def series_update(existing: Mapping[str, Any], event: Event, now: datetime) -> dict[str, Any]:
    """The merge patch that records `event` on the Event object `existing` of its series: one
    more occurrence (count, lastTimestamp, the newest message), or a fresh start when the series
    went quiet for longer than SERIES_WINDOW_S."""
    stamp = timestamp(now)
    last = parse_time(existing.get("lastTimestamp") or existing.get("eventTime"))
    if last is not None and (aware(now) - last).total_seconds() > SERIES_WINDOW_S:
        return {"count": 1, "firstTimestamp": stamp, "lastTimestamp": stamp, "message": event.message[:1024]}
    return {"count": as_int(existing.get("count"), 1) + 1, "lastTimestamp": stamp, "message": event.message[:1024]}
