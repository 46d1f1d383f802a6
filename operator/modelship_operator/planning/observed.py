"""What reconcile observed and hands to the plan: child Deployments (with the rollout records
they carry), canary pods, served CRDs, analysis. Pure."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from ..analysis import Verdict
from .children import REVISION_LABEL, ROLE_LABEL
from .values import parse_time

# The rollout record on each revision's Deployment (metadata only: no pod restarts). JSON of the
# revision's status entry (see planning/recovery.py): the stable's pod-shaping spec and image,
# the canary's step, timers, window tallies and consumed action ids. Lets a lost status be
# recovered and makes each manual action act once.
ROLLOUT_RECORD = "modelship.dev/rollout"


def parse_record(text: Any) -> dict[str, Any]:
    """A rollout record annotation as a dict ({} when absent or not a JSON object)."""
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class DeploymentState:
    """What reconcile observed of one child Deployment."""

    name: str
    revision: str
    role: str
    replicas: int  # status.replicas: pods that exist, of any template
    ready_replicas: int
    available_replicas: int
    updated_replicas: int
    generation: int
    observed_generation: int
    conditions: tuple[Mapping, ...] = ()
    record: Mapping[str, Any] | None = None  # the parsed ROLLOUT_RECORD annotation, if any
    spec_replicas: int | None = None  # spec.replicas (None: not known)
    terminating_replicas: int = 0  # status.terminatingReplicas (reported from Kubernetes 1.33 on)

    @classmethod
    def from_manifest(cls, obj: Mapping) -> "DeploymentState":
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        status = obj.get("status") or {}
        return cls(
            name=str(meta.get("name", "")),
            revision=str(labels.get(REVISION_LABEL, "")),
            role=str(labels.get(ROLE_LABEL, "")),
            replicas=int(status.get("replicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            available_replicas=int(status.get("availableReplicas") or 0),
            updated_replicas=int(status.get("updatedReplicas") or 0),
            generation=int(meta.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            conditions=tuple(dict(c) for c in status.get("conditions") or ()),
            record=parse_record((meta.get("annotations") or {}).get(ROLLOUT_RECORD)) or None,
            spec_replicas=int((obj.get("spec") or {}).get("replicas", 1)),
            terminating_replicas=int(status.get("terminatingReplicas") or 0),
        )

    @property
    def drained(self) -> bool:
        """Scaled to 0 and seen so by the Deployment controller, with no pod left (terminating
        ones included): deleting it now strands no pod without its ReplicaSet."""
        return (self.spec_replicas == 0 and self.observed_generation >= self.generation
                and self.replicas == 0 and self.terminating_replicas == 0)

    def condition(self, type_: str) -> Mapping | None:
        return next((c for c in self.conditions if c.get("type") == type_), None)


@dataclass(frozen=True)
class AnalysisResult:
    """One finished analysis window of the canary, measured by reconcile (I/O side).

    Reconcile measures only when `analysis_due(md, now)` says so, over the window from
    `status.canary.analysis.lastTime` to `time`, and passes the result in `Observed.analysis`.
    The plan counts a result once: only when `hash` is the current canary's and `time` is
    later than `status.canary.analysis.lastTime` (then lastTime becomes `time`), so passing
    the same result again is harmless.
    """

    hash: str  # the canary revision that was measured
    time: datetime  # end of the measured window
    verdict: Verdict


@dataclass(frozen=True)
class PodState:
    """What reconcile observed of one canary pod: readiness, restarts and why it last failed."""

    name: str
    revision: str
    ready: bool
    restarts: int  # restartCount over its init and app containers
    ready_changed_at: datetime | None = None  # the Ready condition's lastTransitionTime
    # Why it is not well, as "CrashLoopBackOff: Error exit 1: model file not found" (the waiting
    # reason, then the last termination's reason, exit code and message); "" when nothing is known.
    problem: str = ""
    terminating: bool = False
    started: bool = False  # every app container passed its startup probe (ready before, if not now)

    @classmethod
    def from_manifest(cls, obj: Mapping) -> "PodState":
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        ready_condition = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
        containers = [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]
        return cls(
            name=str(meta.get("name", "")),
            revision=str((meta.get("labels") or {}).get(REVISION_LABEL, "")),
            ready=ready_condition.get("status") == "True",
            restarts=sum(int(c.get("restartCount") or 0) for c in containers),
            ready_changed_at=parse_time(ready_condition.get("lastTransitionTime")),
            problem=_problem(containers, status),
            terminating=bool(meta.get("deletionTimestamp")),
            started=bool(status.get("containerStatuses"))
            and all(c.get("started") is True for c in status.get("containerStatuses") or ()),
        )


def _problem(containers: list[Mapping], status: Mapping) -> str:
    """The most telling failure of a pod's containers, for events and abort reasons."""
    for c in containers:
        waiting = ((c.get("state") or {}).get("waiting") or {})
        last = ((c.get("lastState") or {}).get("terminated") or {})
        current = ((c.get("state") or {}).get("terminated") or {})
        terminated = last or (current if current.get("exitCode") not in (None, 0) else {})
        parts = [str(waiting["reason"])] if waiting.get("reason") and waiting["reason"] != "ContainerCreating" else []
        if terminated:
            what = str(terminated.get("reason") or "Terminated")
            if terminated.get("exitCode") is not None:
                what += f" exit {terminated['exitCode']}"
            parts.append(what)
            if terminated.get("message"):
                parts.append(str(terminated["message"]).strip()[:300])
        elif waiting.get("message") and parts:
            parts.append(str(waiting["message"]).strip()[:300])
        if parts:
            return ": ".join(parts)
    if status.get("reason"):  # e.g. Evicted
        return f"{status['reason']}: {status.get('message', '')}".strip(": ")
    return ""


@dataclass(frozen=True)
class Observed:
    deployments: tuple[DeploymentState, ...] = ()
    httproute_served: bool = False  # HTTPRoute CRD served: traffic "auto" may use gateway mode
    servicemonitor_served: bool = False  # ServiceMonitor CRD served -> render one
    analysis: AnalysisResult | None = None  # the latest finished analysis window, if any
    # The canary revision's pods (reconcile lists them during a canary); None: not observed.
    pods: tuple[PodState, ...] | None = None
    # The rollout record of every revision Deployment by hash ({} for one without a record).
    # None: read them from `deployments`. Reconcile pins what it read first for its second
    # pass, so that pass plans from the same state (and does not take the Deployment it has
    # just created for one that was there without a record).
    recorded: Mapping[str, Mapping[str, Any]] | None = None
    scaledobject_served: bool = False  # KEDA's ScaledObject CRD served: serving-signal autoscaling may use it

    def pinned(self) -> Mapping[str, Mapping[str, Any]]:
        if self.recorded is not None:
            return self.recorded
        return {d.revision: dict(d.record or {}) for d in sorted(self.deployments, key=lambda d: d.name)}

    def records(self) -> Mapping[str, Mapping[str, Any]]:
        """The records found, by revision hash."""
        return {h: r for h, r in self.pinned().items() if r}
