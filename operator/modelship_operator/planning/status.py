"""The ModelDeployment's `.status`: assembled in one place for every kind of plan, with its
conditions, and the status of a permanent failure. Pure.

Conditions follow Kubernetes conventions: each carries observedGeneration, and its
lastTransitionTime only moves when its status flips (so a steady state writes nothing).
`/scale` reads `replicas` (the pods that exist, what the HPA divides by) and `selector`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping

from ..settings import Settings
from ..spec import ModelDeployment
from .children import selector_string, service_url
from .health import Health
from .observed import DeploymentState
from .pods import RevisionPlan
from .revisions import limit_history
from .rollout import Progress
from .values import as_int, find_condition, previous_status, timestamp

CONDITION_TYPES = ("Ready", "Available", "Progressing", "Degraded")


def assemble_status(
    md: ModelDeployment,
    settings: Settings,
    stamp: str,
    *,
    health: Health,
    available: int,
    wanted: int,
    stable: dict,
    history: list[dict],
    counted: Iterable[DeploymentState],
    mode: str,
    canary: dict | None = None,
) -> dict:
    """The complete desired status.

    `available`: pods available across the revisions that serve (the Available condition);
    `wanted`: the replicas the ModelDeployment asks for; `counted`: the Deployments whose pods
    `/scale` reports (in gateway mode a canary's pods are extra to spec.replicas).
    """
    previous = previous_status(md)
    generation = as_int(md.generation)
    counted = list(counted)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": health.phase,
        "conditions": conditions(health, available, wanted, previous, generation, stamp),
        "stable": stable,
    }
    if canary is not None:
        status["canary"] = canary
    status.update({
        "history": limit_history(md, history),
        "replicas": sum(d.replicas for d in counted),
        "readyReplicas": sum(d.ready_replicas for d in counted),
        "selector": selector_string(md.name),
        "url": service_url(md.name, md.namespace, settings),
        "trafficMode": mode,
    })
    return status


def revision_status(rev: RevisionPlan, state: DeploymentState | None, spec: Mapping) -> dict:
    """`status.stable`: the revision, its size and readiness, and the spec it was rendered from."""
    return {
        "revision": rev.number,
        "hash": rev.hash,
        "version": rev.version,
        "uri": rev.uri,
        "replicas": rev.replicas,
        "readyReplicas": state.ready_replicas if state else 0,
        "spec": dict(spec),
        "image": rev.image,
    }


def canary_status(rev: RevisionPlan, progress: Progress, *, effective: int, weight: int, ready: int,
                  analysis: Mapping[str, Any], holding: str | None = None) -> dict:
    """`status.canary`: everything a restarted operator needs to resume the rollout (the same
    progress is recorded on the canary Deployment, see recovery.py), and why a step holds."""
    status: dict[str, Any] = {
        "revision": rev.number,
        "hash": rev.hash,
        "version": rev.version,
        "uri": rev.uri,
        "weight": effective,
        "requestedWeight": weight,
        "step": progress.step,
        "stepStartedAt": progress.step_started_at,
        "replicas": rev.replicas,
        "readyReplicas": ready,
        "aborted": progress.aborted,
        "analysis": dict(analysis),
        "restarts": progress.restarts,
        "seq": progress.seq,
    }
    if progress.abort_reason and progress.aborted:
        status["abortReason"] = progress.abort_reason
    optional = {"actions": list(progress.actions), "heldReason": progress.held,
                "podRestarts": dict(progress.pod_restarts), "unreadySince": progress.unready_since,
                "shadowSince": progress.shadow_since,
                "holdReason": None if progress.aborted else holding}
    status.update({k: v for k, v in optional.items() if v})
    return status


def merge_condition(
    previous: Mapping, type_: str, status: str, reason: str, message: str, generation: int, now: str
) -> dict:
    """A condition whose lastTransitionTime only moves when its status flips."""
    before = find_condition(previous, type_)
    changed = before is None or before.get("status") != status or not before.get("lastTransitionTime")
    return {
        "type": type_,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": now if changed else before["lastTransitionTime"],
        "reason": reason,
        "message": message,
    }


def conditions(health: Health, available: int, n: int, previous: Mapping, generation: int, now: str) -> list[dict]:
    """The four conditions, after the Kubernetes API conventions (and what Deployments do):

    * Ready: serving at full capacity: the pods available over the serving revisions reach the
      replicas wanted, whatever the rollout does (a canary with every pod ready is Ready, so
      `kubectl wait --for=condition=Ready` works during a rollout). False when scaled to zero.
    * Available: at least one pod serves.
    * Progressing: the rollout: True while it moves (reason says how), Unknown while it is
      paused (as a paused Deployment), False once it is complete or stopped (reason says which).
    * Degraded: True only for a problem (an aborted canary, a Deployment that cannot progress,
      pods lost after being healthy); reason and message say which.
    """
    if n == 0:
        ready = ("False", "ScaledToZero", "no replicas are wanted")
    elif available >= n:
        ready = ("True", "AllReplicasReady", health.message if health.phase == "Healthy"
                 else f"{available} replica(s) available, {n} wanted; {health.message}")
    else:
        ready = ("False", health.reason if health.phase != "Healthy" else "ReplicasNotAvailable",
                 f"{available} of {n} wanted replica(s) available; {health.message}")
    if available > 0:
        avail = ("True", "MinimumReplicasAvailable", f"{available} replica(s) available")
    elif n == 0:
        avail = ("False", "ScaledToZero", "no replicas are wanted")
    else:
        avail = ("False", "NoReplicasAvailable", "no replica is available yet")
    if health.phase in ("Pending", "Progressing"):
        progressing = ("True", health.reason, health.message)
    elif health.phase == "Paused":
        progressing = ("Unknown", health.reason, health.message)
    elif health.phase == "Healthy":
        progressing = ("False", "RolloutComplete", health.message)
    else:
        progressing = ("False", health.reason, health.message)
    degraded = health.phase == "Degraded"
    rows = [
        ("Ready", *ready),
        ("Available", *avail),
        ("Progressing", *progressing),
        (
            "Degraded",
            "True" if degraded else "False",
            health.reason if degraded else "AsExpected",
            health.message if degraded else "no problems detected",
        ),
    ]
    return [merge_condition(previous, t, s, r, m, generation, now) for t, s, r, m in rows]


def failed_status(md: ModelDeployment | Mapping, reason: str, message: str, now: datetime) -> dict:
    """Status for a permanent error: phase Failed, Ready False, Degraded True; the rest kept.

    Accepts the raw body too, for a spec that could not be parsed into a ModelDeployment.
    """
    if isinstance(md, Mapping):
        previous = md.get("status") or {}
        generation = as_int((md.get("metadata") or {}).get("generation"))
    else:
        previous, generation = previous_status(md), as_int(md.generation)
    stamp = timestamp(now)
    status = {k: v for k, v in previous.items() if k not in ("phase", "observedGeneration", "conditions")}
    updates = {
        "Ready": ("False", reason, message),
        "Progressing": ("False", reason, message),
        "Degraded": ("True", reason, message),
    }
    rows = []
    for type_ in CONDITION_TYPES:
        if type_ in updates:
            rows.append(merge_condition(previous, type_, *updates[type_], generation, stamp))
        elif (kept := find_condition(previous, type_)) is not None:
            rows.append(dict(kept))
    return {"observedGeneration": generation, "phase": "Failed", "conditions": rows, **status}
