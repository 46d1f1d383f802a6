"""Desired state of one ModelDeployment: revisions, children to render, status and events.

Pure: no I/O and no clock reads (`now` is passed in). Reconcile observes the child
Deployments, calls `plan`, renders `Plan` and applies it, then writes `Plan.status`
when it differs from the live status and emits `Plan.events`.
"""
from __future__ import annotations

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
from .spec import API_VERSION, KIND, AnalysisSpec, ModelDeployment

MANAGED_BY = "modelship-operator"
REVISION_LABEL = "modelship.dev/revision"
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
    # a role are selected by `selector_labels(name) | {REVISION_LABEL: hash}` =
    # `Plan.pod_selector(role)`; the Deployment is `Plan.revision(role).name`.
    analysis: AnalysisSpec | None = None

    def revision(self, role: str) -> RevisionPlan | None:
        return next((r for r in self.revisions if r.role == role), None)

    def pod_selector(self, role: str) -> dict[str, str] | None:
        rev = self.revision(role)
        return None if rev is None else {**self.selector, REVISION_LABEL: rev.hash}


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


# The init container runs the server image's own downloader (model plus an optional
# signature.json next to it), so the server then loads a plain local file.
_FETCH_SCRIPT = (
    "import pathlib, sys; from modelship_server.model import fetch; "
    "print(fetch(sys.argv[1], pathlib.Path(sys.argv[2])))"
)


def model_source(uri: str) -> ModelSource:
    if uri.startswith("pvc://"):
        claim, _, path = uri[len("pvc://"):].partition("/")
        return ModelSource("pvc", uri, f"file://{posixpath.join(MODEL_MOUNT, path)}", claim=claim)
    if uri.startswith(("http://", "https://", "s3://")):
        target = posixpath.join(MODEL_MOUNT, download_name(uri))
        command = ("python", "-c", _FETCH_SCRIPT, uri, MODEL_MOUNT)
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


def _env(md: ModelDeployment, source: ModelSource, resources: Mapping) -> tuple[Mapping, ...]:
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
    # The CRD forbids user variables named MODELSHIP_* and duplicates, so appending is safe
    # for server-side apply (which rejects duplicate names in env).
    env = [{"name": k, "value": v} for k, v in server.items()]
    env.extend(_jsonable(spec.server.env) or ())
    return tuple(env)


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
        env=_env(md, source, resources),
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
    progressing = health.phase in ("Pending", "Progressing")
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


def _history(md: ModelDeployment, previous: Mapping, rev: RevisionPlan, now: str) -> list[dict]:
    history = [dict(h) for h in previous.get("history") or () if isinstance(h, Mapping)]
    before = previous.get("stable") or {}
    if before.get("hash") and before.get("hash") != rev.hash:
        history.append(
            {
                "revision": _int(before.get("revision")),
                "hash": before.get("hash"),
                "version": before.get("version", ""),
                "uri": before.get("uri", ""),
                "time": now,
                "outcome": "Superseded",
            }
        )
    limit = int(md.spec.history_limit)
    return history[-limit:] if limit > 0 else []


def _spec_warnings(rev: RevisionPlan, scaling: AutoscalingPlan | None) -> list[Event]:
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
    return warnings


def _events(
    previous: Mapping, status: Mapping, rev: RevisionPlan, scaling: AutoscalingPlan | None = None
) -> tuple[Event, ...]:
    """Events for the transitions between the live and the desired status; none in a steady state."""
    events: list[Event] = []
    if previous.get("observedGeneration") != status.get("observedGeneration"):
        events.extend(_spec_warnings(rev, scaling))
    before = previous.get("stable") or {}
    if not before.get("hash"):
        events.append(
            Event("Normal", "RevisionCreated", f"revision {rev.number} ({rev.hash}): version {rev.version}, {rev.replicas} replica(s)")
        )
    elif before.get("hash") != rev.hash:
        events.append(
            Event(
                "Normal",
                "NewRevision",
                f"revision {rev.number} ({rev.hash}, version {rev.version}) replaces "
                f"revision {_int(before.get('revision'))} ({before.get('hash')}, version {before.get('version', '')})",
            )
        )

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


def plan(md: ModelDeployment, observed: Observed, settings: Settings, now: datetime) -> Plan:
    previous = _previous_status(md)
    generation = _int(md.generation)
    stamp = timestamp(now)
    hash_ = revision_hash(md, settings)
    rev = revision_plan(md, settings, hash_, revision_number(hash_, previous), "stable", desired_replicas(md))
    state = next((d for d in observed.deployments if d.revision == hash_), None)
    # Outgoing revisions keep serving until the new one is fully available, then are pruned.
    outgoing = [d for d in observed.deployments if d.revision != hash_ and d.available_replicas > 0]
    health = _assess(rev, state, sum(d.available_replicas for d in outgoing), previous)
    kept = [] if health.phase == "Healthy" else sorted(outgoing, key=lambda d: d.name)
    counted = ([state] if state else []) + kept
    available = sum(d.available_replicas for d in counted)
    status = {
        "observedGeneration": generation,
        "phase": health.phase,
        "conditions": _conditions(health, available, rev.replicas, previous, generation, stamp),
        "stable": {
            "revision": rev.number,
            "hash": rev.hash,
            "version": rev.version,
            "uri": rev.uri,
            "replicas": rev.replicas,
            "readyReplicas": state.ready_replicas if state else 0,
        },
        "history": _history(md, previous, rev, stamp),
        # /scale: status.replicas counts the pods that exist (what the HPA divides by),
        # status.selector finds them for pod metrics.
        "replicas": sum(d.replicas for d in counted),
        "readyReplicas": sum(d.ready_replicas for d in counted),
        "selector": selector_string(md.name),
        "url": service_url(md.name, md.namespace, settings),
        "trafficMode": "replicas",
    }
    scaling = autoscaling_plan(md)
    return Plan(
        name=md.name,
        namespace=md.namespace,
        # Offline (a file without metadata.uid) there is no owner to reference yet.
        owner={
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": md.name,
            "uid": md.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        if md.uid
        else {},
        labels=common_labels(md.name),
        selector=selector_labels(md.name),
        port=SERVER_PORT,
        revisions=(rev,),
        autoscaling=scaling,
        # maxUnavailable 1 never blocks a single pod, so the budget follows the most wanted.
        pdb=rev.replicas > 1 or (scaling is not None and scaling.max_replicas > 1),
        service_monitor=observed.servicemonitor_served,
        retain=tuple(d.name for d in kept),
        status=status,
        events=_events(previous, status, rev, scaling),
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
