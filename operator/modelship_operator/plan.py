"""Desired state of one ModelDeployment: revisions, children to render, status and events.

Pure: no I/O and no clock reads (`now` is passed in). Reconcile observes the child
Deployments, calls `plan`, renders `Plan` and applies it, then writes `Plan.status`
when it differs from the live status and emits `Plan.events`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import posixpath
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from .analysis import Verdict
from .rollout import (
    Outcome,
    Progress,
    advance,
    describe_step,
    requested_weight,
)
from .rollout import (  # noqa: F401  (the action names are part of the plan's interface)
    ABORT_ANNOTATION,
    ACTION_ANNOTATIONS,
    PROMOTE_ANNOTATION,
    PROMOTE_FULL,
    PROMOTE_STEP,
    RETRY_ANNOTATION,
    Event,
    parse_time,
)
from .settings import Settings
from .split import scale_plan, split_replicas
from .spec import API_VERSION, KIND, AnalysisSpec, ModelDeployment, MonitoringSpec, SpecError, parse_duration

MANAGED_BY = "modelship-operator"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
REVISION_LABEL = "modelship.dev/revision"
APPLIED_HASH = "modelship.dev/applied-hash"  # on every child: reconcile skips unchanged applies
ROLE_LABEL = "modelship.dev/role"
SERVER_PORT = 8080
MODEL_MOUNT = "/mnt/models"  # PVC mount or download target inside the pod

# Probe budget: a model may take up to 15 minutes to download, load and warm up.
STARTUP_PERIOD_S = 10
STARTUP_FAILURES = 90
PRE_STOP_SLEEP_S = 5  # lets endpoint controllers drop the pod before SIGTERM arrives
GPU_TAINT_KEY = "nvidia.com/gpu"

CONDITION_TYPES = ("Ready", "Available", "Progressing", "Degraded")



# --------------------------------------------------------------------------- observed state


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
        )

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


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ModelSource:
    """Where the server finds the model inside the pod."""

    kind: str  # image | pvc | download
    uri: str  # as written in the spec
    server_uri: str  # MODELSHIP_MODEL_URI as the server sees it
    claim: str | None = None  # pvc: the claim, mounted read-only at mount_path
    mount_path: str = MODEL_MOUNT  # pvc and download: where the model volume is mounted
    fetch_command: tuple[str, ...] = ()  # download: the init container's command


@dataclass(frozen=True)
class RevisionPlan:
    """One revision: one Deployment named `<name>-<hash>`."""

    name: str
    hash: str
    number: int
    role: str  # stable | canary
    replicas: int
    version: str
    uri: str
    image: str
    env: tuple[Mapping, ...]  # the complete container env, server settings first
    user_env: tuple[Mapping, ...]  # the user's own variables (credentials for the init container)
    resources: Mapping  # container requests/limits, GPUs included
    node_selector: Mapping
    tolerations: tuple[Mapping, ...]
    affinity: Mapping
    priority_class_name: str
    model: ModelSource
    termination_grace_seconds: int
    progress_deadline_seconds: int
    startup_period_seconds: int = STARTUP_PERIOD_S
    startup_failure_threshold: int = STARTUP_FAILURES
    pre_stop_sleep_seconds: int = PRE_STOP_SLEEP_S
    feedback: bool = False  # the server keeps predictions for feedback (and asks its peers)


@dataclass(frozen=True)
class AutoscalingPlan:
    min_replicas: int
    max_replicas: int
    metrics: tuple[Mapping, ...]  # complete autoscaling/v2 MetricSpecs


@dataclass(frozen=True)
class RouteBackend:
    service: str  # the per-role Service `<name>-stable` / `<name>-canary`
    role: str
    hash: str  # the revision its Service selects
    weight: int


@dataclass(frozen=True)
class RoutePlan:
    """Gateway mode: one HTTPRoute `<name>` with weighted backendRefs (and an optional mirror)."""

    parent_refs: tuple[Mapping, ...]
    hostnames: tuple[str, ...]
    backends: tuple[RouteBackend, ...]
    mirror_service: str | None = None  # the canary Service, when mirroring
    mirror_percent: int | None = None


@dataclass(frozen=True)
class Plan:
    name: str
    namespace: str
    owner: Mapping  # the ownerReference every child carries ({} offline: no uid known)
    labels: Mapping  # common labels of every child
    selector: Mapping  # pods of all revisions (Service, PDB, /scale)
    port: int
    revisions: tuple[RevisionPlan, ...]
    autoscaling: AutoscalingPlan | None
    pdb: bool
    service_monitor: bool
    # Deployments of outgoing revisions that reconcile must leave alone (not prune) this
    # time: they keep serving until the new revision is fully available.
    retain: tuple[str, ...]
    status: Mapping  # the complete desired .status (camelCase, JSON-ready)
    events: tuple[Event, ...] = field(default=())
    # Rollout (canary) side. Reconcile removes these annotations from the ModelDeployment
    # after applying the plan: the plan has acted on them.
    consumed_actions: tuple[str, ...] = ()
    # Seconds until the next timed thing (a pause ends, an analysis is due); None: nothing timed.
    requeue_after: float | None = None
    traffic_mode: str = "replicas"  # replicas | gateway (what was rendered)
    route: RoutePlan | None = None  # gateway mode: the HTTPRoute and the per-role Services
    # The analysis to run while the canary takes traffic (None: no analysis now). Pods of
    # a role carry INSTANCE_LABEL and REVISION_LABEL = `Plan.revision(role).hash`; the
    # Deployment is `Plan.revision(role).name`.
    analysis: AnalysisSpec | None = None
    # The headless Service `<name>-peers` over the pods of every revision, whose DNS name is
    # MODELSHIP_FEEDBACK_PEERS; None when no revision keeps predictions for feedback.
    peers_service: str | None = None

    def revision(self, role: str) -> RevisionPlan | None:
        return next((r for r in self.revisions if r.role == role), None)


# --------------------------------------------------------------------------- helpers


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def server_image(md: ModelDeployment, settings: Settings) -> str:
    return md.spec.server.image or settings.server_image


def revision_hash(md: ModelDeployment, settings: Settings) -> str:
    """10 hex chars over everything that shapes the pods (not replicas, autoscaling, rollout)."""
    spec = md.spec
    shaping = {
        "model": spec.model,
        "server": spec.server,
        "gpu": spec.gpu,
        "scheduling": spec.scheduling,
        "image": server_image(md, settings),
    }
    if spec.monitoring is not None:  # only when set: objects without it keep their hash
        shaping["monitoring"] = spec.monitoring
    return hashlib.sha256(canonical_json(shaping).encode()).hexdigest()[:10]


def timestamp(now: datetime) -> str:
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def common_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelship",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "modelship", "app.kubernetes.io/instance": name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def service_url(name: str, namespace: str, settings: Settings) -> str:
    host = f"{name}.{namespace}.svc"
    if settings.cluster_domain:
        host += f".{settings.cluster_domain}"
    return f"http://{host}:{SERVER_PORT}"


def peers_service(name: str) -> str:
    return f"{name}-peers"


def feedback_peers(name: str, namespace: str, settings: Settings) -> str:
    """MODELSHIP_FEEDBACK_PEERS: one DNS name whose A records are the ready pods of every
    revision, so feedback for a canary's prediction is joined wherever the Service sent it."""
    host = f"{peers_service(name)}.{namespace}.svc"
    if settings.cluster_domain:
        host += f".{settings.cluster_domain}"
    return f"{host}:{SERVER_PORT}"


def feedback_enabled(md: ModelDeployment) -> bool:
    # spec.monitoring unset: the server's defaults, in which feedback is on.
    return md.spec.monitoring is None or md.spec.monitoring.feedback.enabled


def _previous_status(md: ModelDeployment) -> Mapping:
    return md.raw_status if isinstance(md.raw_status, Mapping) else {}


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def revision_number(hash_: str, previous: Mapping) -> int:
    """Kept while the hash is unchanged; otherwise one more than any number seen so far."""
    seen: list[int] = []
    for key in ("stable", "canary"):
        entry = previous.get(key) or {}
        if entry.get("hash") == hash_ and _int(entry.get("revision")) > 0:
            return _int(entry.get("revision"))
        seen.append(_int(entry.get("revision")))
    seen.extend(_int(h.get("revision")) for h in previous.get("history") or () if isinstance(h, Mapping))
    return max(seen, default=0) + 1


def _aware(now: datetime) -> datetime:
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


def next_analysis_at(md: ModelDeployment) -> datetime | None:
    """When the current analysis window of the canary ends (None: no analysis is running).

    The window starts when the canary first takes traffic (the plan then writes
    `status.canary.analysis.lastTime` with no verdict) and restarts at each counted result.
    """
    canary = _previous_status(md).get("canary") or {}
    if not canary.get("hash") or canary.get("aborted") or _int(canary.get("weight")) <= 0:
        return None
    start = parse_time((canary.get("analysis") or {}).get("lastTime"))
    if start is None:
        return None
    return start + timedelta(seconds=md.spec.rollout.analysis.interval_seconds)


def analysis_due(md: ModelDeployment, now: datetime) -> bool:
    """True when reconcile should measure the canary (`status.canary.hash`) and pass the
    result to the plan as `Observed.analysis`: a window of `analysis.interval` has passed
    since `status.canary.analysis.lastTime` while the canary takes traffic and is not aborted."""
    due = next_analysis_at(md)
    return due is not None and _aware(now) >= due


# --------------------------------------------------------------------------- pod shaping


# The init container runs the server image's own torch-free downloader (the model plus an
# optional signature.json and reference_profile.json next to it), so the server then loads a
# plain local file.
_FETCH_MODULE = "modelship_server.fetch"


def model_source(uri: str) -> ModelSource:
    if uri.startswith("pvc://"):
        claim, _, path = uri[len("pvc://"):].partition("/")
        return ModelSource("pvc", uri, f"file://{posixpath.join(MODEL_MOUNT, path)}", claim=claim)
    if uri.startswith(("http://", "https://", "s3://")):
        target = posixpath.join(MODEL_MOUNT, download_name(uri))
        command = ("python", "-m", _FETCH_MODULE, uri, MODEL_MOUNT)
        return ModelSource("download", uri, f"file://{target}", fetch_command=command)
    return ModelSource("image", uri, uri)


def download_name(uri: str) -> str:
    """The file name the server's downloader gives a remote model (its URL path's last part)."""
    return posixpath.basename(urllib.parse.urlparse(uri).path) or "model.pt"


def _cpu_cores(quantity: Any) -> int | None:
    """Whole cores of a CPU quantity ("2", "1500m", 0.5) rounded down, at least 1."""
    if quantity is None:
        return None
    text = str(quantity).strip()
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None
    return max(1, math.floor(cores)) if cores > 0 else None


def _resources(md: ModelDeployment) -> dict[str, dict[str, Any]]:
    raw = _jsonable(md.spec.server.resources) or {}
    out: dict[str, dict[str, Any]] = {}
    for part in ("requests", "limits"):
        values = {k: str(v) for k, v in sorted((raw.get(part) or {}).items()) if v is not None}
        if values:
            out[part] = values
    gpu = md.spec.gpu
    if gpu.count > 0:
        # Extended resources cannot be overcommitted: requests must equal limits.
        for part in ("requests", "limits"):
            out.setdefault(part, {})[gpu.resource_name] = str(gpu.count)
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def _threads(md: ModelDeployment, resources: Mapping) -> int | None:
    if md.spec.server.threads:
        return int(md.spec.server.threads)
    limits = resources.get("limits", {})
    requests = resources.get("requests", {})
    return _cpu_cores(limits.get("cpu", requests.get("cpu")))


def _env(md: ModelDeployment, settings: Settings, source: ModelSource, resources: Mapping) -> tuple[Mapping, ...]:
    spec = md.spec
    batching = spec.server.batching
    server: dict[str, str] = {
        "MODELSHIP_MODEL_URI": source.server_uri,
        "MODELSHIP_MODEL_NAME": spec.model.name or md.name,
        "MODELSHIP_MODEL_VERSION": spec.model.version,
        "MODELSHIP_MODEL_FORMAT": spec.model.format,
        "MODELSHIP_MAX_BATCH_SIZE": str(batching.max_batch_size),
        "MODELSHIP_MAX_DELAY_MS": str(batching.max_delay_ms),
        "MODELSHIP_MAX_QUEUE": str(batching.max_queue),
        "MODELSHIP_TIMEOUT_MS": str(batching.timeout_ms),
        "MODELSHIP_MAX_BATCH_ROWS": str(spec.server.max_batch_rows),
        "MODELSHIP_PRECISION": spec.server.precision,
        "MODELSHIP_DEVICE": "cuda" if spec.gpu.count > 0 else "cpu",
        "MODELSHIP_PORT": str(SERVER_PORT),
    }
    threads = _threads(md, resources)
    if threads:
        server["MODELSHIP_TORCH_THREADS"] = str(threads)
    if spec.monitoring is not None:
        server.update(monitoring_env(spec.monitoring))
    if feedback_enabled(md):
        # Not part of the revision hash (it is derived, not spec): adding it rolls pods once.
        server["MODELSHIP_FEEDBACK_PEERS"] = feedback_peers(md.name, md.namespace, settings)
    # The CRD forbids user variables named MODELSHIP_* and duplicates, so appending is safe
    # for server-side apply (which rejects duplicate names in env).
    env = [{"name": k, "value": v} for k, v in server.items()]
    env.extend(_jsonable(spec.server.env) or ())
    return tuple(env)


def _number(value: float) -> str:
    """3.0 -> "3", 0.25 -> "0.25": env values as a person would write them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def monitoring_env(mon: MonitoringSpec) -> dict[str, str]:
    """spec.monitoring as the server's MODELSHIP_DRIFT_* / _FEEDBACK_* / _AUDIT_* settings."""
    drift, feedback, audit = mon.drift, mon.feedback, mon.audit
    reference = drift.reference or ""
    if reference.startswith("file://"):
        reference = reference[len("file://"):]
    env = {
        "MODELSHIP_DRIFT_REFERENCE": reference if drift.enabled else "off",
        "MODELSHIP_DRIFT_WINDOW": str(drift.window),
        "MODELSHIP_DRIFT_INTERVAL_S": _number(parse_duration(drift.interval)),
        "MODELSHIP_DRIFT_THRESHOLD": _number(drift.threshold),
        "MODELSHIP_FEEDBACK_TTL_S": _number(parse_duration(feedback.ttl)),
        # The server turns feedback off with 0 pending entries.
        "MODELSHIP_FEEDBACK_MAX_ENTRIES": str(feedback.max_entries if feedback.enabled else 0),
        "MODELSHIP_AUDIT_LOG": "stdout" if audit.enabled else "off",
        "MODELSHIP_AUDIT_SAMPLE_RATE": _number(audit.sample_rate),
        "MODELSHIP_AUDIT_INPUTS": audit.inputs,
        "MODELSHIP_AUDIT_MASK": ",".join(audit.mask_fields),
    }
    return env


def _tolerations(md: ModelDeployment) -> tuple[Mapping, ...]:
    tolerations = [
        {k: v for k, v in t.items() if v is not None} for t in _jsonable(md.spec.scheduling.tolerations) or ()
    ]
    if md.spec.gpu.count > 0 and not any(t.get("key") == GPU_TAINT_KEY for t in tolerations):
        tolerations.append({"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    return tuple(tolerations)


def _node_selector(md: ModelDeployment, settings: Settings) -> dict[str, str]:
    selector = dict(_jsonable(md.spec.scheduling.node_selector) or {})
    if md.spec.gpu.type and md.spec.gpu.count > 0:
        selector[settings.gpu_label_key] = md.spec.gpu.type
    return dict(sorted(selector.items()))


def revision_plan(
    md: ModelDeployment, settings: Settings, hash_: str, number: int, role: str, replicas: int
) -> RevisionPlan:
    image = server_image(md, settings)
    source = model_source(md.spec.model.uri)
    resources = _resources(md)
    timeout_s = math.ceil(md.spec.server.batching.timeout_ms / 1000)
    return RevisionPlan(
        name=f"{md.name}-{hash_}",
        hash=hash_,
        number=number,
        role=role,
        replicas=replicas,
        version=md.spec.model.version,
        uri=md.spec.model.uri,
        image=image,
        env=_env(md, settings, source, resources),
        user_env=tuple(_jsonable(md.spec.server.env) or ()),
        resources=resources,
        node_selector=_node_selector(md, settings),
        tolerations=_tolerations(md),
        affinity=_jsonable(md.spec.scheduling.affinity) or {},
        priority_class_name=md.spec.scheduling.priority_class_name or "",
        model=source,
        # preStop pause + the longest a queued request may still take + margin to exit.
        termination_grace_seconds=PRE_STOP_SLEEP_S + timeout_s + 10,
        # Longer than the startup probe's budget, so slow loads are not reported as stuck.
        progress_deadline_seconds=STARTUP_PERIOD_S * STARTUP_FAILURES + 300,
        feedback=feedback_enabled(md),
    )


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
    metrics.extend(_jsonable(scaling.metrics) or ())
    return AutoscalingPlan(int(scaling.min_replicas), int(scaling.max_replicas), tuple(metrics))


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class _Health:
    phase: str
    reason: str  # CamelCase, used by the conditions that are not fine
    message: str


def _failure(state: DeploymentState) -> tuple[str, str] | None:
    progressing = state.condition("Progressing")
    if progressing and progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        return "ProgressDeadlineExceeded", str(progressing.get("message") or "rollout did not progress in time")
    failure = state.condition("ReplicaFailure")
    if failure and failure.get("status") == "True":
        return "ReplicaFailure", str(failure.get("message") or failure.get("reason") or "pods cannot be created")
    return None


def _was_healthy(rev: RevisionPlan, previous: Mapping) -> bool:
    """The same revision at the same size was fully available at the last reconcile."""
    stable = previous.get("stable") or {}
    if stable.get("hash") != rev.hash or _int(stable.get("replicas"), -1) != rev.replicas:
        return False
    if previous.get("phase") == "Healthy":
        return True
    degraded = _condition(previous, "Degraded") or {}
    return previous.get("phase") == "Degraded" and degraded.get("reason") == "ReplicasUnavailable"


def _assess(rev: RevisionPlan, state: DeploymentState | None, serving: int, previous: Mapping) -> _Health:
    """Phase of the revision from its Deployment; `serving` counts pods of outgoing revisions."""
    label = f"revision {rev.number} ({rev.hash})"
    n = rev.replicas
    if state is None:
        if serving:
            return _Health("Progressing", "RolloutInProgress", f"creating {label}; the previous revision keeps serving")
        return _Health("Pending", "Creating", f"creating {label}")
    failure = _failure(state)
    if failure:
        return _Health("Degraded", failure[0], f"{label}: {failure[1]}")
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
            return _Health("Healthy", "ScaledToZero", f"{label} is scaled to zero replicas")
        return _Health("Healthy", "AllReplicasReady", f"{label}: {state.ready_replicas}/{n} replicas ready")
    if not lagging and state.available_replicas < n and _was_healthy(rev, previous):
        return _Health(
            "Degraded", "ReplicasUnavailable", f"{label}: only {state.available_replicas} of {n} replicas available"
        )
    progress = f"{label}: {state.updated_replicas} updated, {state.ready_replicas}/{n} ready"
    if lagging:
        progress = f"{label}: waiting for the Deployment controller to observe the change"
    if state.ready_replicas == 0 and not serving:
        return _Health("Pending", "NoReplicasReady", progress)
    return _Health("Progressing", "RolloutInProgress", progress)


def _condition(status: Mapping, type_: str) -> Mapping | None:
    return next(
        (c for c in status.get("conditions") or () if isinstance(c, Mapping) and c.get("type") == type_), None
    )


def _merge_condition(
    previous: Mapping, type_: str, status: str, reason: str, message: str, generation: int, now: str
) -> dict:
    """A condition whose lastTransitionTime only moves when its status flips."""
    before = _condition(previous, type_)
    changed = before is None or before.get("status") != status or not before.get("lastTransitionTime")
    return {
        "type": type_,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": now if changed else before["lastTransitionTime"],
        "reason": reason,
        "message": message,
    }


def _conditions(health: _Health, available: int, n: int, previous: Mapping, generation: int, now: str) -> list[dict]:
    ready = health.phase == "Healthy" and n > 0
    progressing = health.phase in ("Pending", "Progressing", "Paused")
    degraded = health.phase == "Degraded"
    if available > 0:
        avail = ("True", "MinimumReplicasAvailable", f"{available} replica(s) available")
    elif n == 0:
        avail = ("False", "ScaledToZero", "no replicas are wanted")
    else:
        avail = ("False", "NoReplicasAvailable", "no replica is available yet")
    rows = [
        ("Ready", "True" if ready else "False", health.reason, health.message),
        ("Available", *avail),
        (
            "Progressing",
            "True" if progressing else "False",
            "RolloutComplete" if health.phase == "Healthy" else health.reason,
            health.message,
        ),
        (
            "Degraded",
            "True" if degraded else "False",
            health.reason if degraded else "AsExpected",
            health.message if degraded else "no problems detected",
        ),
    ]
    return [_merge_condition(previous, t, s, r, m, generation, now) for t, s, r, m in rows]


def _entry(source: Mapping, outcome: str, now: str) -> dict:
    """A `status.history` entry for a revision leaving (or failing as) stable or canary."""
    entry = {
        "revision": _int(source.get("revision")),
        "hash": source.get("hash"),
        "version": source.get("version", ""),
        "uri": source.get("uri", ""),
        "time": now,
        "outcome": outcome,
    }
    # The pod-shaping spec lets `rollback` restore the revision exactly.
    for key in ("spec", "image"):
        if source.get(key):
            entry[key] = source[key]
    return entry


def _limit_history(md: ModelDeployment, history: list[dict]) -> list[dict]:
    limit = int(md.spec.history_limit)
    return history[-limit:] if limit > 0 else []


def _previous_history(previous: Mapping) -> list[dict]:
    return [dict(h) for h in previous.get("history") or () if isinstance(h, Mapping)]


def _spec_warnings(
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


def _events(
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
                f"revision {_int(before.get('revision'))} ({before.get('hash')}, version {before.get('version', '')})",
            )
        )
    events.extend(rollout_events)

    def flipped(type_: str, to: str) -> Mapping | None:
        now_c = _condition(status, type_)
        was = _condition(previous, type_) or {}
        return now_c if now_c and now_c["status"] == to and was.get("status") != to else None

    if cond := flipped("Ready", "True"):
        events.append(Event("Normal", "Ready", cond["message"]))
    degraded = _condition(status, "Degraded") or {}
    was_degraded = _condition(previous, "Degraded") or {}
    if degraded.get("status") == "True" and (
        was_degraded.get("status") != "True" or was_degraded.get("reason") != degraded.get("reason")
    ):
        events.append(Event("Warning", degraded["reason"], degraded["message"]))
    elif degraded.get("status") == "False" and was_degraded.get("status") == "True":
        events.append(Event("Normal", "Recovered", (_condition(status, "Ready") or {}).get("message", "")))
    return tuple(events)


# --------------------------------------------------------------------------- revisions and traffic

# The pod-shaping part of the spec (what revision_hash covers, besides the resolved image).
SHAPING_KEYS = ("model", "server", "gpu", "scheduling", "monitoring")


def shaping_spec(md: ModelDeployment) -> dict:
    """The pod-shaping fields as written, kept in status (`stable.spec`, history entries) so the
    stable can still be rendered while the spec describes a canary, and `rollback` can restore
    a revision exactly."""
    return {k: copy.deepcopy(md.raw_spec[k]) for k in SHAPING_KEYS if k in md.raw_spec}


def revision_source(
    md: ModelDeployment, settings: Settings, entry: Mapping
) -> tuple[ModelDeployment, Settings] | None:
    """The ModelDeployment (and settings) a status entry's revision was rendered from, or None
    when the entry lacks its spec or no longer hashes the same (then it cannot be re-rendered)."""
    spec, image = entry.get("spec"), entry.get("image")
    if not isinstance(spec, Mapping) or "model" not in spec or not isinstance(image, str) or not image:
        return None
    try:
        old = ModelDeployment.from_body({"metadata": {"name": md.name, "namespace": md.namespace}, "spec": dict(spec)})
    except SpecError:
        return None
    old_settings = dataclasses.replace(settings, server_image=image)
    if revision_hash(old, old_settings) != entry.get("hash"):
        return None
    return old, old_settings


def traffic_mode(md: ModelDeployment, observed: Observed) -> str:
    """gateway needs rollout.gateway and a served HTTPRoute CRD; anything else splits replicas."""
    rollout = md.spec.rollout
    if rollout.gateway is not None and rollout.traffic in ("auto", "gateway") and observed.httproute_served:
        return "gateway"
    return "replicas"


def role_service(name: str, role: str) -> str:
    return f"{name}-{role}"


def route_plan(md: ModelDeployment, stable: RevisionPlan, canary: RevisionPlan | None,
               canary_weight: int, mirror: bool) -> RoutePlan:
    gateway = md.spec.rollout.gateway
    assert gateway is not None
    backends = [RouteBackend(role_service(md.name, "stable"), "stable", stable.hash, 100 - canary_weight)]
    if canary is not None:
        backends.append(RouteBackend(role_service(md.name, "canary"), "canary", canary.hash, canary_weight))
    percent = gateway.mirror_percent
    mirroring = canary is not None and mirror and bool(percent)
    return RoutePlan(
        parent_refs=tuple(gateway.parent_refs),
        hostnames=tuple(gateway.hostnames),
        backends=tuple(backends),
        mirror_service=role_service(md.name, "canary") if mirroring else None,
        mirror_percent=percent if mirroring else None,
    )


def _owner(md: ModelDeployment) -> Mapping:
    # Offline (a file without metadata.uid) there is no owner to reference yet.
    if not md.uid:
        return {}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": md.name,
        "uid": md.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _revision_status(rev: RevisionPlan, state: DeploymentState | None, spec: Mapping) -> dict:
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


def _seconds_until(at: datetime | None, now: datetime) -> float | None:
    if at is None:
        return None
    # At least a second: a due analysis that reconcile could not measure must not spin.
    return max(1.0, (at - _aware(now)).total_seconds())


# --------------------------------------------------------------------------- the plan


def plan(md: ModelDeployment, observed: Observed, settings: Settings, now: datetime) -> Plan:
    previous = _previous_status(md)
    hash_ = revision_hash(md, settings)
    stable_before = previous.get("stable") or {}
    canary_before = previous.get("canary") or {}
    if stable_before.get("hash") and stable_before.get("hash") != hash_:
        source = revision_source(md, settings, stable_before)
        stable_state = next((d for d in observed.deployments if d.revision == stable_before.get("hash")), None)
        # A stable that serves nothing has no traffic to protect: the new revision replaces it
        # directly (e.g. fixing a first deploy that never became ready).
        serving = stable_state is not None and stable_state.available_replicas > 0
        if source is not None and (serving or canary_before.get("hash")):
            return _canary_plan(md, observed, settings, now, hash_, source)
    return _single_plan(md, observed, settings, now, hash_)


def _base_plan(md: ModelDeployment, observed: Observed, settings: Settings, **fields: Any) -> Plan:
    scaling = autoscaling_plan(md)
    revisions: tuple[RevisionPlan, ...] = fields.pop("revisions")
    most = max((r.replicas for r in revisions), default=0)
    return Plan(
        name=md.name,
        namespace=md.namespace,
        owner=_owner(md),
        labels=common_labels(md.name),
        selector=selector_labels(md.name),
        port=SERVER_PORT,
        revisions=revisions,
        autoscaling=scaling,
        # maxUnavailable 1 never blocks a single pod, so the budget follows the most wanted.
        pdb=most > 1 or (scaling is not None and scaling.max_replicas > 1),
        service_monitor=observed.servicemonitor_served,
        peers_service=peers_service(md.name) if any(r.feedback for r in revisions) else None,
        **fields,
    )


def _single_plan(md: ModelDeployment, observed: Observed, settings: Settings, now: datetime, hash_: str) -> Plan:
    """One revision (no canary): the first deploy, a steady state, a cancelled canary, or a
    direct replacement of a stable that serves nothing."""
    previous = _previous_status(md)
    generation = _int(md.generation)
    stamp = timestamp(now)
    mode = traffic_mode(md, observed)
    rev = revision_plan(md, settings, hash_, revision_number(hash_, previous), "stable", desired_replicas(md))
    state = next((d for d in observed.deployments if d.revision == hash_), None)
    canary_before = previous.get("canary") or {}
    history = _previous_history(previous)
    rollout_events: list[Event] = []
    stable_before = previous.get("stable") or {}
    if canary_before.get("hash") and canary_before.get("hash") != hash_:
        # The spec went back to the stable revision: the canary is removed at once.
        rollout_events.append(
            Event("Normal", "CanaryCancelled",
                  f"the spec is back at stable revision {rev.number} ({hash_}): canary revision "
                  f"{_int(canary_before.get('revision'))} ({canary_before.get('hash')}) removed")
        )
        if not canary_before.get("aborted"):  # an aborted canary is in history already
            history.append(_entry(canary_before, "Cancelled", stamp))
    if stable_before.get("hash") and stable_before.get("hash") != hash_:
        history.append(_entry(stable_before, "Superseded", stamp))
    consumed = tuple(a for a in ACTION_ANNOTATIONS if a in md.annotations)
    if consumed:
        rollout_events.append(
            Event("Normal", "ActionIgnored", f"no canary rollout in progress: {', '.join(consumed)} has nothing to act on")
        )
    # Outgoing revisions (a direct replacement) keep serving until the new one is fully
    # available, then are pruned. A cancelled canary is not kept.
    outgoing = [
        d for d in observed.deployments
        if d.revision != hash_ and d.available_replicas > 0 and d.revision != canary_before.get("hash")
    ]
    health = _assess(rev, state, sum(d.available_replicas for d in outgoing), previous)
    kept = [] if health.phase == "Healthy" else sorted(outgoing, key=lambda d: d.name)
    counted = ([state] if state else []) + kept
    available = sum(d.available_replicas for d in counted)
    status = {
        "observedGeneration": generation,
        "phase": health.phase,
        "conditions": _conditions(health, available, rev.replicas, previous, generation, stamp),
        "stable": _revision_status(rev, state, shaping_spec(md)),
        "history": _limit_history(md, history),
        # /scale: status.replicas counts the pods that exist (what the HPA divides by),
        # status.selector finds them for pod metrics.
        "replicas": sum(d.replicas for d in counted),
        "readyReplicas": sum(d.ready_replicas for d in counted),
        "selector": selector_string(md.name),
        "url": service_url(md.name, md.namespace, settings),
        "trafficMode": mode,
    }
    scaling = autoscaling_plan(md)
    warnings = _spec_warnings(rev, scaling, md, mode)
    return _base_plan(
        md, observed, settings,
        revisions=(rev,),
        retain=tuple(d.name for d in kept),
        status=status,
        events=_events(previous, status, rev, warnings, rollout_events),
        consumed_actions=consumed,
        traffic_mode=mode,
        route=route_plan(md, rev, None, 0, False) if mode == "gateway" else None,
    )


def _canary_plan(
    md: ModelDeployment,
    observed: Observed,
    settings: Settings,
    now: datetime,
    hash_: str,
    source: tuple[ModelDeployment, Settings],
) -> Plan:
    """A stable revision plus the spec's revision as the canary, walking rollout.steps."""
    previous = _previous_status(md)
    generation = _int(md.generation)
    stamp = timestamp(now)
    mode = traffic_mode(md, observed)
    total = desired_replicas(md)
    steps = md.spec.rollout.steps
    limits = md.spec.rollout.analysis
    stable_before = previous.get("stable") or {}
    canary_before = previous.get("canary") or {}
    history = _previous_history(previous)
    events: list[Event] = []

    old_md, old_settings = source
    stable_hash = str(stable_before["hash"])
    stable_number = _int(stable_before.get("revision")) or revision_number(stable_hash, previous)
    number = revision_number(hash_, previous)
    by_hash = {d.revision: d for d in sorted(observed.deployments, key=lambda d: d.name)}
    stable_state, canary_state = by_hash.get(stable_hash), by_hash.get(hash_)
    canary_ready = canary_state.ready_replicas if canary_state else 0
    stable_ready = stable_state.ready_replicas if stable_state else 0

    if canary_before.get("hash") != hash_:
        if canary_before.get("hash"):
            events.append(
                Event("Normal", "CanaryReplaced",
                      f"canary revision {_int(canary_before.get('revision'))} ({canary_before.get('hash')}) "
                      f"is replaced by revision {number} ({hash_}); the steps restart")
            )
            if not canary_before.get("aborted"):
                history.append(_entry(canary_before, "Replaced", stamp))
        events.append(
            Event("Normal", "CanaryStarted",
                  f"revision {number} ({hash_}, version {md.spec.model.version}) is the canary of stable revision "
                  f"{stable_number} ({stable_hash}, version {stable_before.get('version', '')}); "
                  + (f"{len(steps)} step(s)" if steps else "no steps: promoted once ready"))
        )
        progress = Progress.start(stamp)
    else:
        progress = Progress.from_status(canary_before, stamp)

    def ready_at(weight: int) -> bool:
        return canary_ready >= split_replicas(total, weight).canary

    verdict = None
    result = observed.analysis
    last = parse_time((progress.analysis or {}).get("lastTime"))
    if result is not None and result.hash == hash_ and (last is None or _aware(result.time) > last):
        verdict = (result.verdict, timestamp(result.time))
    actions = {a: md.annotations[a] for a in ACTION_ANNOTATIONS if a in md.annotations}
    outcome = advance(progress, steps, limits, actions, verdict, ready_at, _aware(now), stamp)
    progress = outcome.progress
    events.extend(outcome.events)
    n = len(steps)
    weight = 0 if progress.aborted else requested_weight(steps, progress.step)
    if outcome.aborted_now:
        history.append(_entry({**canary_before, "revision": number, "hash": hash_,
                               "version": md.spec.model.version, "uri": md.spec.model.uri,
                               "spec": shaping_spec(md), "image": server_image(md, settings)},
                              "Aborted", stamp))

    scale = scale_plan(total, weight, canary_ready, stable_ready)
    promote = (
        not progress.aborted
        and progress.step >= n
        and canary_state is not None
        and canary_ready >= total
        and canary_state.available_replicas >= total
    )
    if promote:
        return _promoted_plan(md, observed, settings, now, hash_, number, canary_state, history, events, outcome)

    if mode == "gateway":
        # Stable keeps every pod: the route, not the pod count, moves traffic.
        stable_replicas, canary_replicas = total, scale.target.canary
        effective = scale.route_weight
    else:
        stable_replicas, canary_replicas = scale.stable_replicas, scale.canary_replicas
        effective = scale.effective_weight
    stable_rev = revision_plan(old_md, old_settings, stable_hash, stable_number, "stable", stable_replicas)
    canary_rev = revision_plan(md, settings, hash_, number, "canary", canary_replicas)

    analysis = dict(progress.analysis)
    analysing = not progress.aborted and effective > 0
    if analysing and not analysis.get("lastTime"):
        analysis["lastTime"] = stamp  # the first analysis window starts with the first traffic
    canary_status: dict[str, Any] = {
        "revision": number,
        "hash": hash_,
        "version": canary_rev.version,
        "uri": canary_rev.uri,
        "weight": effective,
        "requestedWeight": weight,
        "step": progress.step,
        "stepStartedAt": progress.step_started_at,
        "replicas": canary_replicas,
        "readyReplicas": canary_ready,
        "aborted": progress.aborted,
        "analysis": analysis,
    }
    if progress.abort_reason and progress.aborted:
        canary_status["abortReason"] = progress.abort_reason

    label = f"canary revision {number} ({hash_}, version {canary_rev.version})"
    failure = _failure(canary_state) if canary_state else None
    if progress.aborted:
        health = _Health("Degraded", "CanaryAborted", f"{label} aborted: {progress.abort_reason}")
    elif failure:
        health = _Health("Degraded", failure[0], f"{label}: {failure[1]}")
    elif outcome.paused:
        health = _Health("Paused", "RolloutPaused",
                         f"{label} at {effective}%: paused at {describe_step(steps, progress.step)}; promote to continue")
    elif progress.step >= n:
        health = _Health("Progressing", "RolloutInProgress",
                         f"{label}: promoting, {canary_ready}/{total} replicas ready")
    else:
        health = _Health("Progressing", "RolloutInProgress",
                         f"{label} at {effective}% (asked {weight}%), {describe_step(steps, progress.step)}")

    states = [s for s in (stable_state, canary_state) if s is not None]
    # /scale (what the HPA divides by): in gateway mode the canary's pods are extra to spec.replicas.
    scaled = states if mode == "replicas" else [s for s in (stable_state,) if s is not None]
    available = sum(s.available_replicas for s in states)
    status = {
        "observedGeneration": generation,
        "phase": health.phase,
        "conditions": _conditions(health, available, total, previous, generation, stamp),
        "stable": _revision_status(stable_rev, stable_state, stable_before.get("spec") or {}),
        "canary": canary_status,
        "history": _limit_history(md, history),
        "replicas": sum(s.replicas for s in scaled),
        "readyReplicas": sum(s.ready_replicas for s in scaled),
        "selector": selector_string(md.name),
        "url": service_url(md.name, md.namespace, settings),
        "trafficMode": mode,
    }
    wake = [outcome.wake_at]
    if analysing:
        start = parse_time(analysis.get("lastTime"))
        wake.append(start + timedelta(seconds=limits.interval_seconds) if start else None)
    waits = [w for w in (_seconds_until(at, now) for at in wake) if w is not None]
    scaling = autoscaling_plan(md)
    warnings = _spec_warnings(canary_rev, scaling, md, mode)
    # Gateway mode: the canary backend and the mirror only once canary pods are ready.
    return _base_plan(
        md, observed, settings,
        revisions=(stable_rev, canary_rev),
        retain=(),
        status=status,
        events=_events(previous, status, stable_rev, warnings, events),
        consumed_actions=outcome.consumed,
        requeue_after=min(waits) if waits else None,
        traffic_mode=mode,
        route=route_plan(md, stable_rev, canary_rev, effective, canary_ready > 0 and not progress.aborted)
        if mode == "gateway" else None,
        analysis=limits if analysing else None,
    )


def _promoted_plan(
    md: ModelDeployment,
    observed: Observed,
    settings: Settings,
    now: datetime,
    hash_: str,
    number: int,
    state: DeploymentState,
    history: list[dict],
    events: list[Event],
    outcome: Outcome,
) -> Plan:
    """The canary carries everything and is ready: it becomes the stable, the old stable goes."""
    previous = _previous_status(md)
    generation = _int(md.generation)
    stamp = timestamp(now)
    mode = traffic_mode(md, observed)
    stable_before = previous.get("stable") or {}
    rev = revision_plan(md, settings, hash_, number, "stable", desired_replicas(md))
    # Back to a revision that was stable before: the one it replaces was rolled back.
    rolled_back = any(h.get("hash") == hash_ for h in history if h.get("outcome") in ("Superseded", "RolledBack"))
    history.append(_entry(stable_before, "RolledBack" if rolled_back else "Superseded", stamp))
    events.append(
        Event("Normal", "Promoted",
              f"revision {number} ({hash_}, version {rev.version}) is now stable; revision "
              f"{_int(stable_before.get('revision'))} ({stable_before.get('hash')}, version "
              f"{stable_before.get('version', '')}) is removed")
    )
    health = _assess(rev, state, 0, previous)
    status = {
        "observedGeneration": generation,
        "phase": health.phase,
        "conditions": _conditions(health, state.available_replicas, rev.replicas, previous, generation, stamp),
        "stable": _revision_status(rev, state, shaping_spec(md)),
        "history": _limit_history(md, history),
        "replicas": state.replicas,
        "readyReplicas": state.ready_replicas,
        "selector": selector_string(md.name),
        "url": service_url(md.name, md.namespace, settings),
        "trafficMode": mode,
    }
    scaling = autoscaling_plan(md)
    return _base_plan(
        md, observed, settings,
        revisions=(rev,),
        retain=(),
        status=status,
        events=_events(previous, status, rev, _spec_warnings(rev, scaling, md, mode), events,
                       announce_replacement=False),
        consumed_actions=outcome.consumed,
        traffic_mode=mode,
        route=route_plan(md, rev, None, 0, False) if mode == "gateway" else None,
    )


def failed_status(md: ModelDeployment | Mapping, reason: str, message: str, now: datetime) -> dict:
    """Status for a permanent error: phase Failed, Ready False, Degraded True; the rest kept.

    Accepts the raw body too, for a spec that could not be parsed into a ModelDeployment.
    """
    if isinstance(md, Mapping):
        previous = md.get("status") or {}
        generation = _int((md.get("metadata") or {}).get("generation"))
    else:
        previous, generation = _previous_status(md), _int(md.generation)
    stamp = timestamp(now)
    status = {k: v for k, v in previous.items() if k not in ("phase", "observedGeneration", "conditions")}
    updates = {
        "Ready": ("False", reason, message),
        "Progressing": ("False", reason, message),
        "Degraded": ("True", reason, message),
    }
    conditions = []
    for type_ in CONDITION_TYPES:
        if type_ in updates:
            conditions.append(_merge_condition(previous, type_, *updates[type_], generation, stamp))
        elif (kept := _condition(previous, type_)) is not None:
            conditions.append(dict(kept))
    return {"observedGeneration": generation, "phase": "Failed", "conditions": conditions, **status}
