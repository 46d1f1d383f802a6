"""What reconcile observed and hands to the plan: child Deployments, served CRDs, analysis. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from ..analysis import Verdict
from .children import REVISION_LABEL, ROLE_LABEL


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
class Observed:
    deployments: tuple[DeploymentState, ...] = ()
    httproute_served: bool = False  # HTTPRoute CRD served: traffic "auto" may use gateway mode
    servicemonitor_served: bool = False  # ServiceMonitor CRD served -> render one
    analysis: AnalysisResult | None = None  # the latest finished analysis window, if any
