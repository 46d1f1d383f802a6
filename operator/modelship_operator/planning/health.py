"""Health: the phase of a ModelDeployment and why, from its child Deployments. Pure.

`Health` is what the Ready / Progressing / Degraded conditions report (status.py turns it
into conditions); these functions only decide it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..spec import RolloutStep
from .observed import DeploymentState
from .pods import RevisionPlan
from .rollout import Progress, describe_step
from .values import as_int, find_condition


@dataclass(frozen=True)
class Health:
    phase: str  # Pending | Progressing | Paused | Healthy | Degraded
    reason: str  # CamelCase, used by the conditions that are not fine
    message: str


def deployment_failure(state: DeploymentState) -> tuple[str, str] | None:
    progressing = state.condition("Progressing")
    if progressing and progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        return "ProgressDeadlineExceeded", str(progressing.get("message") or "rollout did not progress in time")
    failure = state.condition("ReplicaFailure")
    if failure and failure.get("status") == "True":
        return "ReplicaFailure", str(failure.get("message") or failure.get("reason") or "pods cannot be created")
    return None


def was_healthy(rev: RevisionPlan, previous: Mapping) -> bool:
    """The same revision at the same size was fully available at the last reconcile."""
    stable = previous.get("stable") or {}
    if stable.get("hash") != rev.hash or as_int(stable.get("replicas"), -1) != rev.replicas:
        return False
    if previous.get("phase") == "Healthy":
        return True
    degraded = find_condition(previous, "Degraded") or {}
    return previous.get("phase") == "Degraded" and degraded.get("reason") == "ReplicasUnavailable"


def assess(rev: RevisionPlan, state: DeploymentState | None, serving: int, previous: Mapping) -> Health:
    """Phase of the revision from its Deployment; `serving` counts pods of outgoing revisions."""
    label = f"revision {rev.number} ({rev.hash})"
    n = rev.replicas
    if state is None:
        if serving:
            return Health("Progressing", "RolloutInProgress", f"creating {label}; the previous revision keeps serving")
        return Health("Pending", "Creating", f"creating {label}")
    failure = deployment_failure(state)
    if failure:
        return Health("Degraded", failure[0], f"{label}: {failure[1]}")
    lagging = state.observed_generation < state.generation
    rolling = (
        lagging
        or state.updated_replicas < n
        or state.ready_replicas < n
        or state.available_replicas < n
        or state.replicas > n
    )
    if not rolling:
        if n == 0:
            return Health("Healthy", "ScaledToZero", f"{label} is scaled to zero replicas")
        return Health("Healthy", "AllReplicasReady", f"{label}: {state.ready_replicas}/{n} replicas ready")
    if not lagging and state.available_replicas < n and was_healthy(rev, previous):
        return Health(
            "Degraded", "ReplicasUnavailable", f"{label}: only {state.available_replicas} of {n} replicas available"
        )
    progress = f"{label}: {state.updated_replicas} updated, {state.ready_replicas}/{n} ready"
    if lagging:
        progress = f"{label}: waiting for the Deployment controller to observe the change"
    if state.ready_replicas == 0 and not serving:
        return Health("Pending", "NoReplicasReady", progress)
    return Health("Progressing", "RolloutInProgress", progress)


def canary_health(label: str, progress: Progress, failure: tuple[str, str] | None, paused: bool,
                  steps: tuple[RolloutStep, ...], effective: int, weight: int, canary_ready: int,
                  total: int) -> Health:
    """Phase while a canary runs next to the stable; `label` names the canary revision."""
    if progress.aborted:
        return Health("Degraded", "CanaryAborted", f"{label} aborted: {progress.abort_reason}")
    if failure:
        return Health("Degraded", failure[0], f"{label}: {failure[1]}")
    if progress.held:  # the rollout paused itself: analysis could not tell whether the canary is fine
        return Health("Paused", "InconclusiveAnalysis",
                      f"{label} at {effective}%: paused after {progress.held}; promote to continue")
    if paused:
        return Health("Paused", "RolloutPaused",
                      f"{label} at {effective}%: paused at {describe_step(steps, progress.step)}; promote to continue")
    if progress.step >= len(steps):
        return Health("Progressing", "RolloutInProgress", f"{label}: promoting, {canary_ready}/{total} replicas ready")
    return Health("Progressing", "RolloutInProgress",
                  f"{label} at {effective}% (asked {weight}%), {describe_step(steps, progress.step)}")
