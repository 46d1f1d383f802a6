"""Planning: the desired state of one ModelDeployment, decided without I/O.

Reconcile observes the child Deployments, calls `plan`, renders the `Plan` and applies it,
then writes `Plan.status` when it differs from the live status and emits `Plan.events`.
Each module decides one thing (see docs/internals.md); this package re-exports what the
rest of the operator uses.
"""
from .children import (APPLIED_HASH, INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, REVISION_LABEL, ROLE_LABEL,
                       SERVER_PORT)
from .events import Event
from .observed import ROLLOUT_RECORD, AnalysisResult, DeploymentState, Observed, PodState
from .plan import Plan, plan
from .revisions import SHAPING_KEYS, revision_hash
from .rollout import (ABORT_ANNOTATION, ACTION_ANNOTATIONS, ACTION_ID_SEPARATOR, PROMOTE_ANNOTATION, PROMOTE_FULL,
                      PROMOTE_STEP, RETRY_ANNOTATION, analysis_due, next_analysis_at)
from .status import failed_status
from .values import parse_time

__all__ = [
    "ABORT_ANNOTATION", "ACTION_ANNOTATIONS", "ACTION_ID_SEPARATOR", "APPLIED_HASH", "INSTANCE_LABEL", "MANAGED_BY", "MANAGED_BY_LABEL",
    "PROMOTE_ANNOTATION", "PROMOTE_FULL", "PROMOTE_STEP", "RETRY_ANNOTATION", "REVISION_LABEL", "ROLE_LABEL",
    "ROLLOUT_RECORD", "SERVER_PORT", "SHAPING_KEYS", "AnalysisResult", "DeploymentState", "Event", "Observed",
    "Plan", "PodState",
    "analysis_due", "failed_status", "next_analysis_at", "parse_time", "plan", "revision_hash",
]
