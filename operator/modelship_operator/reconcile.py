"""One level-triggered reconcile of a ModelDeployment: observe → plan → render → apply → prune → status.

Idempotent: with nothing changed, a second call performs no write at all (a child is applied
only when the live object no longer holds what we render: see drift.py; status is patched only
when it differs, and the plan emits events only on transitions). Never writes `spec`.
All API access goes through the `kube` object passed in (kube.Kube or the test double).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from . import canary_metrics, recorder, shadow_config
from .analysis import Verdict, query_window
from .kube import KubeError, PermanentError, TemporaryError
from .planning import (APPLIED_HASH, INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, REVISION_LABEL, AnalysisResult,
                       DeploymentState, Event, Observed, Plan, PodState, analysis_due, failed_status, parse_time,
                       plan, revision_hash)
from .drift import drifted
from .planning.values import as_int
from .render import render
from .settings import Settings
from .spec import API_VERSION, KIND, ModelDeployment, SpecError

log = logging.getLogger(__name__)


# (group, version, plural) of the optional CRDs whose presence changes what we render.
SERVICE_MONITORS = ("monitoring.coreos.com", "v1", "servicemonitors")
HTTP_ROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
SCALED_OBJECTS = ("keda.sh", "v1alpha1", "scaledobjects")  # KEDA
OPTIONAL_CRDS = (SERVICE_MONITORS, HTTP_ROUTES, SCALED_OBJECTS)

# Every kind of child we may create, hence may have to prune; optional ones only when served.
CHILD_KINDS: tuple[tuple[str, str, tuple[str, str, str] | None], ...] = (
    ("apps/v1", "Deployment", None),
    ("v1", "Service", None),
    ("autoscaling/v2", "HorizontalPodAutoscaler", None),
    ("policy/v1", "PodDisruptionBudget", None),
    ("monitoring.coreos.com/v1", "ServiceMonitor", SERVICE_MONITORS),
    ("gateway.networking.k8s.io/v1", "HTTPRoute", HTTP_ROUTES),
    ("keda.sh/v1alpha1", "ScaledObject", SCALED_OBJECTS),
)
# At most one of these targets the ModelDeployment's /scale: the one no longer wanted goes
# before the other is applied (KEDA's admission webhook rejects a ScaledObject whose target
# another HPA already scales).
AUTOSCALER_KINDS = frozenset({"HorizontalPodAutoscaler", "ScaledObject"})


class KubeAPI(Protocol):
    """What reconcile needs of kube.Kube (the in-memory test double implements the same)."""

    async def list(self, api_version: str, kind: str, namespace: str | None = None,
                   label_selector: Mapping[str, str] | str | None = None) -> list[dict[str, Any]]: ...
    async def owned(self, api_version: str, kind: str, namespace: str, owner_uid: str,
                    label_selector: Mapping[str, str] | str | None = None) -> list[dict[str, Any]]: ...
    async def served(self, group: str, version: str, plural: str) -> bool: ...
    async def apply(self, manifest: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]: ...
    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str,
                     *, propagation: str = "Background") -> bool: ...
    async def patch_status(self, api_version: str, kind: str, namespace: str | None, name: str,
                           status_patch: Mapping[str, Any]) -> dict[str, Any]: ...
    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...
    async def create_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str,
                           *, component: str | None = None, name: str | None = None,
                           at: str | None = None) -> dict[str, Any]: ...
    async def patch(self, api_version: str, kind: str, namespace: str | None, name: str, body: Any,
                    *, json_patch: bool = False) -> dict[str, Any]: ...


@dataclass
class Discovery:
    """Caches "is this CRD served?" for `ttl` seconds: CRDs come and go rarely."""

    ttl: float = 60.0
    _seen: dict[tuple[str, str, str], tuple[float, bool]] = field(default_factory=dict)

    async def served(self, kube: KubeAPI, resource: tuple[str, str, str]) -> bool:
        at, value = self._seen.get(resource, (float("-inf"), False))
        if time.monotonic() - at > self.ttl:
            value = await kube.served(*resource)
            self._seen[resource] = (time.monotonic(), value)
        return value


@dataclass
class ReconcileResult:
    name: str
    namespace: str
    applied: list[str] = field(default_factory=list)  # "Kind/name"
    pruned: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)  # outgoing Deployments scaled to 0
    status_written: bool = False
    events: list[Event] = field(default_factory=list)
    phase: str | None = None
    error: str | None = None  # a permanent error, reported in status and an Event
    analysis: Verdict | None = None  # the canary analysis measured by this reconcile
    cleared: list[str] = field(default_factory=list)  # action annotations removed
    requeue_after: float | None = None  # seconds until the plan wants another look
    shadow: list[Any] = field(default_factory=list)  # shadow_config.PushReport of each revision pushed to

    @property
    def wrote(self) -> bool:
        return bool(self.applied or self.pruned or self.retired or self.status_written or self.events or self.cleared)


def status_patch(live: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns `live` into `desired` (removed keys become null)."""
    patch: dict[str, Any] = {key: None for key in live if key not in desired}
    for key, value in desired.items():
        old = live.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            sub = status_patch(old, value)
            if sub:
                patch[key] = sub
        elif old != value:
            patch[key] = value
    return patch


def _ident(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


async def _write_status(kube: KubeAPI, body: Mapping[str, Any], desired: Mapping[str, Any],
                        result: ReconcileResult) -> None:
    meta = body["metadata"]
    patch = status_patch(body.get("status") or {}, desired)
    if patch:
        await kube.patch_status(API_VERSION, KIND, meta.get("namespace"), meta["name"], patch)
        result.status_written = True


async def _emit(kube: KubeAPI, body: Mapping[str, Any], events: list[Event] | tuple[Event, ...],
                result: ReconcileResult, now: datetime) -> None:
    """Post each event; a repeat continues its series on one Event object (recorder.py)."""
    for event in events:
        try:
            await recorder.record(kube, body, event, now)
            result.events.append(event)
        except KubeError as exc:  # events help users, but must not fail the reconcile
            log.warning("could not post event %s: %s", event.reason, exc)


async def _fail(kube: KubeAPI, body: Mapping[str, Any], reason: str, message: str,
                now: datetime, result: ReconcileResult) -> ReconcileResult:
    """A permanent error: Failed status plus a Warning event, once (not on every resync)."""
    result.error, result.phase = message, "Failed"
    await _write_status(kube, body, failed_status(body, reason, message, now), result)
    if result.status_written:
        await _emit(kube, body, [Event("Warning", reason, message)], result, now)
    return result


async def observe(kube: KubeAPI, md: ModelDeployment, discovery: Discovery) -> tuple[Observed, list[dict]]:
    """The live children this ModelDeployment controls (its uid in their controller
    ownerReference, not a label a copy may keep too) and what the cluster offers."""
    selector = {INSTANCE_LABEL: md.name, MANAGED_BY_LABEL: MANAGED_BY}
    served: dict[tuple[str, str, str], bool] = {}
    for resource in OPTIONAL_CRDS:
        served[resource] = await discovery.served(kube, resource)
    children: list[dict] = []
    for api_version, kind, optional in CHILD_KINDS:
        if optional is None or served[optional]:
            children += await kube.owned(api_version, kind, md.namespace, str(md.uid), selector)
    deployments = tuple(DeploymentState.from_manifest(c) for c in children if c["kind"] == "Deployment")
    observed = Observed(deployments=deployments, httproute_served=served[HTTP_ROUTES],
                        servicemonitor_served=served[SERVICE_MONITORS],
                        scaledobject_served=served[SCALED_OBJECTS])
    return observed, children


async def _apply_and_prune(kube: KubeAPI, md: ModelDeployment, desired_plan: Any,
                           live_children: list[dict], result: ReconcileResult) -> bool:
    """Apply each child whose live object no longer holds what we render (missing, edited by
    someone else, or rendered differently), prune the children we control that are no longer
    desired. A child that holds everything we apply costs no write."""
    manifests = render(desired_plan)
    live = {_ident(c): c for c in live_children}
    desired = {_ident(m) for m in manifests}
    changed = switched = False
    for child in live_children:  # the autoscaler switched kind: the old one goes first
        ident = _ident(child)
        if ident[0] in AUTOSCALER_KINDS and ident not in desired and not _deleting(child):
            await kube.delete(child["apiVersion"], child["kind"], md.namespace, ident[1])
            result.pruned.append("/".join(ident))
            changed = switched = True
    for manifest in manifests:
        current = live.get(_ident(manifest))
        if current is not None:
            where = drifted(manifest, current)
            if where is None:
                continue
            log.info("%s %s/%s differs from what we apply at %s: applying it again", manifest["kind"],
                     md.namespace, manifest["metadata"]["name"], where)
        try:
            await kube.apply(manifest)
        except PermanentError as exc:
            if switched and manifest["kind"] in AUTOSCALER_KINDS:
                # An admission webhook may still see the autoscaler just deleted: retry, not Failed.
                raise TemporaryError(f"{exc.message} (the previous autoscaler was just removed)",
                                     status=exc.status, reason=exc.reason) from exc
            raise
        result.applied.append("/".join(_ident(manifest)))
        changed = True
    for child in live_children:  # only children whose controller is this ModelDeployment
        ident = _ident(child)
        if ident in desired or (ident[0] == "Deployment" and ident[1] in desired_plan.retain):
            continue
        if ident[0] in AUTOSCALER_KINDS or _deleting(child):
            continue  # pruned above / already going (e.g. a ScaledObject waiting for KEDA's finalizer)
        if ident[0] == "Deployment" and ident[1] in desired_plan.retire:
            # Scaled to 0 first, deleted once its pods are gone (the plan stops naming it).
            if (child.get("spec") or {}).get("replicas", 1) != 0:
                await kube.patch(child["apiVersion"], child["kind"], md.namespace, ident[1],
                                 {"spec": {"replicas": 0}})
                result.retired.append("/".join(ident))
                changed = True
            continue
        await kube.delete(child["apiVersion"], child["kind"], md.namespace, ident[1])
        result.pruned.append("/".join(ident))
        changed = True
    return changed


# Retry soon when an analysis was due but could not be measured (e.g. the pod list failed).
ANALYSIS_RETRY_S = 5.0


async def _measure(kube: KubeAPI, md: ModelDeployment, settings: Settings, now: datetime,
                   memory: canary_metrics.AnalysisMemory) -> AnalysisResult | None:
    """The canary analysis whose window ends now (the plan said it is due), or None on API trouble."""
    status = md.raw_status if isinstance(md.raw_status, Mapping) else {}
    canary = status.get("canary") or {}
    stable = (status.get("stable") or {}).get("hash") or None
    limits = md.spec.rollout.analysis
    common = {"namespace": md.namespace, "name": md.name, "canary": str(canary["hash"]), "stable": stable,
              "now": now}
    if as_int(canary.get("shadowPercent")) > 0:  # a shadow step's window: the stable pods' comparison too
        common.update(shadow=True, shadow_note=shadow_config.shadow_note(memory, str(md.uid)))
    if settings.prometheus_url:
        started = parse_time((canary.get("analysis") or {}).get("lastTime"))
        window = (now - started).total_seconds() if started else limits.interval_seconds
        verdict = await canary_metrics.measure_prometheus(
            settings.prometheus_url, limits, **common,
            window_s=query_window(window, limits.interval_seconds, settings.prometheus_scrape_interval))
    else:
        try:
            verdict = await canary_metrics.measure_scrape(kube, memory, limits, uid=str(md.uid), **common)
        except KubeError as exc:  # cannot even list the pods: measure at the next reconcile
            log.warning("analysis of %s/%s: cannot list pods: %s", md.namespace, md.name, exc)
            return None
    return AnalysisResult(hash=str(canary["hash"]), time=now, verdict=verdict)


async def _canary_pods(kube: KubeAPI, md: ModelDeployment, observed: Observed,
                       settings: Settings) -> tuple[PodState, ...] | None:
    """The pods of the spec's revision while it is a canary (restarts, readiness, why they fail);
    () when there is no canary, None when they could not be listed (the pod checks then wait)."""
    hash_ = revision_hash(md, settings)
    if not any(d.revision == hash_ and d.role == "canary" for d in observed.deployments):
        return ()
    try:
        pods = await kube.list("v1", "Pod", md.namespace, {INSTANCE_LABEL: md.name, REVISION_LABEL: hash_})
    except KubeError as exc:
        log.warning("canary pods of %s/%s: cannot list them: %s", md.namespace, md.name, exc)
        return None
    return tuple(PodState.from_manifest(p) for p in pods)


async def _baseline(kube: KubeAPI, md: ModelDeployment, desired: Plan, settings: Settings, now: datetime,
                    memory: canary_metrics.AnalysisMemory) -> None:
    """Start the scrape window of a canary that takes traffic and has none for the current
    window yet (a new step restarts the window: its windows count only its own weight);
    forget finished ones."""
    uid = str(md.uid)
    canary = desired.revision("canary")
    if desired.analysis is None or canary is None:
        memory.end_window(uid)
        return
    if settings.prometheus_url:
        return
    stable = desired.revision("stable")
    stable_hash = stable.hash if stable else None
    start = parse_time(((desired.status.get("canary") or {}).get("analysis") or {}).get("lastTime"))
    held = memory.baselines.get(uid)
    if memory.has_baseline(uid, canary.hash, stable_hash) and held is not None and (
            start is None or held.taken >= start):
        return
    try:
        await canary_metrics.take_baseline(kube, memory, uid=uid, namespace=md.namespace, name=md.name,
                                           canary=canary.hash, stable=stable_hash, now=now)
    except KubeError as exc:  # tried again at the next reconcile
        log.warning("analysis of %s/%s: cannot list pods for a baseline: %s", md.namespace, md.name, exc)


# Retry soon when a stable pod could not be told to start or stop mirroring (shadow steps).
SHADOW_RETRY_S = 10.0


async def _shadow(kube: KubeAPI, body: Mapping[str, Any], md: ModelDeployment, desired: Plan,
                  memory: canary_metrics.AnalysisMemory, result: ReconcileResult, now: datetime) -> bool:
    """Bring the stable pods' mirror config in line with the plan (shadow_config.py): on during
    an active shadow step, off on the revisions that may still mirror. True when every pod
    holds its config (nothing to retry)."""
    uid = str(md.uid)
    mirror = desired.shadow if desired.shadow is not None and desired.shadow.active else None
    if mirror is None and not desired.shadow_off and not memory.mirroring.get(uid):
        memory.last_on.pop(uid, None)
        return True
    on = (mirror.stable, mirror.service, mirror.percent, mirror.canary) if mirror else None
    reports = await shadow_config.sync(kube, memory, uid=uid, namespace=md.namespace, name=md.name,
                                       on=on, off=desired.shadow_off)
    result.shadow = reports
    # Observable: an Event when pods were (re)configured (a restarted pod is configured again).
    events = [Event("Normal", "ShadowConfigured" if r.config.on else "ShadowStopped",
                    f"{len(r.changed)} stable pod(s) of revision {r.revision} "
                    + (f"copy {r.config.percent:g}% of their requests to {r.config.url} (canary {r.config.revision})"
                       if r.config.on else "stopped mirroring"))
              for r in reports if r.changed]
    await _emit(kube, body, events, result, now)
    return all(r.complete for r in reports)


async def _clear_actions(kube: KubeAPI, body: Mapping[str, Any], consumed: tuple[str, ...],
                         result: ReconcileResult) -> None:
    """Remove the action annotations the plan acted on (after its status is written), so each
    request acts once. Only metadata is patched, never spec.

    A JSON patch that first tests each value: an annotation set anew meanwhile (say promote
    `full` after a consumed `step`) fails the test, stays, and is acted on at the next reconcile.
    """
    present = (body.get("metadata") or {}).get("annotations") or {}
    gone = [key for key in consumed if key in present]
    if not gone:
        return
    ops: list[dict[str, Any]] = []
    for key in gone:
        path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
        ops += [{"op": "test", "path": path, "value": present[key]}, {"op": "remove", "path": path}]
    meta = body["metadata"]
    try:
        await kube.patch(API_VERSION, KIND, meta.get("namespace"), meta["name"], ops, json_patch=True)
    except PermanentError as exc:  # 422: changed meanwhile; the next reconcile sees the new value
        log.info("action annotations of %s/%s changed meanwhile, kept: %s", meta.get("namespace"), meta["name"], exc)
        return
    result.cleared.extend(gone)


async def reconcile(body: Mapping[str, Any], kube: KubeAPI, settings: Settings, now: datetime,
                    *, discovery: Discovery | None = None,
                    memory: canary_metrics.AnalysisMemory | None = None) -> ReconcileResult:
    """Bring the children and status of one ModelDeployment in line with its spec.

    Raises kube.TemporaryError for failures worth retrying; permanent failures end up in
    status (phase Failed, Ready False, Degraded True) and a Warning event instead.
    `memory` holds the canary analysis baselines between reconciles (one per operator).
    """
    meta = body.get("metadata") or {}
    result = ReconcileResult(name=str(meta.get("name")), namespace=str(meta.get("namespace")))
    if meta.get("deletionTimestamp"):  # being deleted (e.g. foreground): recreate nothing
        if memory is not None and meta.get("uid"):
            memory.forget(str(meta["uid"]))
        return result
    try:
        md = ModelDeployment.from_body(body)
    except SpecError as exc:
        return await _fail(kube, body, "InvalidSpec", f"invalid spec: {exc}", now, result)
    memory = memory if memory is not None else canary_metrics.AnalysisMemory()

    measured = await _measure(kube, md, settings, now, memory) if analysis_due(md, now) else None
    result.analysis = measured.verdict if measured else None

    # A second pass after any write: the status must describe the children as they are now
    # (e.g. the Deployment just created), or the next reconcile would find it stale and write.
    # Both passes plan from the rollout records read first (the second sees our own apply) and
    # from the canary pods listed once.
    first: Observed | None = None
    for _ in range(2):
        observed, live_children = await observe(kube, md, discovery or Discovery(ttl=0))
        if first is None or first.pods == ():
            pods = await _canary_pods(kube, md, observed, settings)
        else:
            pods = first.pods
        observed = dataclasses.replace(observed, analysis=measured, pods=pods,
                                       recorded=(first or observed).pinned())
        first = first or observed
        desired_plan = plan(md, observed, settings, now)
        try:
            changed = await _apply_and_prune(kube, md, desired_plan, live_children, result)
        except PermanentError as exc:
            return await _fail(kube, body, "ApplyFailed", exc.message, now, result)
        if not changed:
            break

    result.phase = desired_plan.status.get("phase")
    await _write_status(kube, body, desired_plan.status, result)
    await _emit(kube, body, desired_plan.events, result, now)
    await _clear_actions(kube, body, desired_plan.consumed_actions, result)
    shadow_done = await _shadow(kube, body, md, desired_plan, memory, result, now)
    await _baseline(kube, md, desired_plan, settings, now, memory)
    result.requeue_after = desired_plan.requeue_after
    if not shadow_done:  # a stable pod not (yet) configured: look again soon
        result.requeue_after = min(result.requeue_after or SHADOW_RETRY_S, SHADOW_RETRY_S)
    if measured is None and analysis_due(md, now) and desired_plan.analysis is not None:
        result.requeue_after = min(result.requeue_after or ANALYSIS_RETRY_S, ANALYSIS_RETRY_S)
    return result
