"""The kopf wiring: thin handlers around `reconcile`.

- create / update / resume of a ModelDeployment → reconcile (kopf retries TemporaryError).
- watch caches (caches.py) serve every read; a change to any child by someone else (readiness,
  `kubectl scale`, a patched Service) reconciles its owner within moments, so it is reported
  or put back without waiting for the resync.
- a periodic resync task (settings.resync_seconds) re-reconciles every ModelDeployment.
- timed wake-ups: after each reconcile, one asyncio task per object sleeps until the plan's
  `requeue_after` (a pause ends, an analysis window closes) and reconciles it then; a newer
  reconcile replaces it, a deleted object cancels it. Rollout timing therefore does not depend
  on the resync period, and the due times come from status, so a restart re-arms them.

Quiet steady state: kopf only calls create/update handlers when the object's essence (spec,
labels, annotations) changes, our handlers return nothing (nothing goes into status), kopf's
own handler-success events are switched off (posting level WARNING), and the periodic resync
is our own task rather than a kopf timer (kopf timers and daemons add a finalizer). kopf keeps
its state in annotations only (never in status): `kopf.zalando.org/last-handled-configuration`
is written once per handled change, progress annotations only while a handler is retried.
No finalizer is ever added (no on.delete handler, no timers/daemons): ownerReferences let the
garbage collector remove the children.
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from . import caches
from . import kube as kube_mod
from .canary_metrics import AnalysisMemory
from .planning import MANAGED_BY
from .reconcile import INSTANCE_LABEL, MANAGED_BY_LABEL, Discovery, ReconcileResult, reconcile
from .settings import Settings
from .spec import API_VERSION, GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 60.0
# Wake-up bounds: never a hot loop, and never longer than an hour (the resync covers the rest).
MIN_REQUEUE_S = 0.5
MAX_REQUEUE_S = 3600.0
REQUEUE_SLACK_S = 0.05  # wake just after the due time, not a hair before it


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class OperatorState:
    """What the handlers share: the kube client, discovery cache and per-object locks."""

    settings: Settings
    connection: kube_mod.Connection
    clock: Callable[[], datetime] = utcnow
    kube: kube_mod.Kube | None = None
    discovery: Discovery = field(default_factory=Discovery)
    resync_task: asyncio.Task | None = None
    watches: caches.Watches | None = None  # reads from watch caches; child changes reconcile the owner
    memory: AnalysisMemory = field(default_factory=AnalysisMemory)  # canary analysis baselines
    wakeups: dict[tuple[str, str], asyncio.Task] = field(default_factory=dict)  # one per object
    _locks: weakref.WeakValueDictionary = field(default_factory=weakref.WeakValueDictionary)

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        lock = self._locks.get((namespace, name))
        if lock is None:
            lock = asyncio.Lock()
            self._locks[(namespace, name)] = lock
        return lock

    async def reconcile(self, namespace: str, name: str, trigger: str) -> ReconcileResult:
        """One reconcile under the object's lock (handlers, child watch and resync may overlap).

        The object is read afresh under the lock: a body handed over by kopf may predate the
        status another trigger just wrote, and acting on it would repeat events and writes.
        """
        assert self.kube is not None, "startup handler has not run"
        async with self._lock(namespace, name):
            body = await self.kube.get(API_VERSION, KIND, namespace, name)
            if body is None:  # deleted meanwhile: the garbage collector takes the children
                self.cancel_wakeup(namespace, name)
                return ReconcileResult(name=name, namespace=namespace)
            result = await reconcile(body, self.kube, self.settings, self.clock(), discovery=self.discovery,
                                     memory=self.memory)
            self.schedule_wakeup(namespace, name, result.requeue_after)
        level = logging.WARNING if result.error else logging.INFO if result.wrote else logging.DEBUG
        log.log(level, "reconciled %s/%s (%s): phase=%s applied=%s pruned=%s status_written=%s events=%s%s",
                namespace, name, trigger, result.phase, result.applied, result.pruned, result.status_written,
                [e.reason for e in result.events], f" error={result.error}" if result.error else "",
                extra={"object": {"namespace": namespace, "name": name, "kind": KIND}, "trigger": trigger,
                       "phase": result.phase, "applied": result.applied, "pruned": result.pruned,
                       "status_written": result.status_written,
                       "events": [e.reason for e in result.events], "error": result.error,
                       "cleared": result.cleared, "requeue_after": result.requeue_after,
                       "analysis": result.analysis.result if result.analysis else None})
        return result

    def schedule_wakeup(self, namespace: str, name: str, delay: float | None) -> None:
        """Reconcile the object again after `delay` seconds (None: no timed wake-up needed).

        Replaces any earlier wake-up of the object: the latest reconcile knows best.
        """
        self.cancel_wakeup(namespace, name)
        if delay is None:
            return
        delay = min(max(delay + REQUEUE_SLACK_S, MIN_REQUEUE_S), MAX_REQUEUE_S)
        self.wakeups[(namespace, name)] = asyncio.create_task(
            self._wake(namespace, name, delay), name=f"modelship-wakeup-{namespace}/{name}")

    def cancel_wakeup(self, namespace: str, name: str) -> None:
        task = self.wakeups.pop((namespace, name), None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _wake(self, namespace: str, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.wakeups.get((namespace, name)) is asyncio.current_task():
            del self.wakeups[(namespace, name)]  # this task is done waiting; do not cancel itself
        try:
            await self.reconcile(namespace, name, "requeue")
        except kube_mod.KubeError as exc:  # the resync or the next event will catch up
            log.warning("timed reconcile of %s/%s failed: %s", namespace, name, exc,
                        extra={"object": {"namespace": namespace, "name": name, "kind": KIND}})

    async def stop_wakeups(self) -> None:
        tasks = list(self.wakeups.values())
        self.wakeups.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def resync_forever(self) -> None:
        """Re-reconcile every ModelDeployment we watch, every resync_seconds."""
        namespaces: tuple[str | None, ...] = self.settings.namespaces or (None,)
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            for namespace in namespaces:
                try:
                    assert self.kube is not None
                    items = await self.kube.list(API_VERSION, KIND, namespace)
                except kube_mod.KubeError as exc:
                    log.warning("resync: cannot list ModelDeployments in %s: %s", namespace or "all", exc)
                    continue
                for body in items:
                    try:
                        await self.reconcile(body["metadata"]["namespace"], body["metadata"]["name"],
                                             "resync")
                    except kube_mod.KubeError as exc:
                        log.warning("resync of %s/%s failed: %s", body["metadata"].get("namespace"),
                                    body["metadata"]["name"], exc)


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    """kopf's own behaviour, tuned for a quiet, finalizer-free operator."""
    ks = kopf.OperatorSettings()
    ks.posting.level = logging.WARNING  # no "Handler succeeded" events on every change
    ks.posting.reporting_component = settings.field_manager
    # kopf keeps its retry bookkeeping in annotations only: status belongs to reconcile
    # (and the CRD's structural schema would prune a status.kopf stanza anyway).
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage()
    ks.peering.standalone = True  # one replica; leader election is the Deployment's job
    ks.watching.server_timeout = 300  # the API server closes watches; kopf reconnects
    ks.watching.client_timeout = 330
    ks.networking.request_timeout = 30
    return ks


def build_registry(state: OperatorState) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    conn = state.connection

    @kopf.on.login(registry=registry, id="login")
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=conn.server, ca_path=conn.ca_file, insecure=conn.insecure or None,
            token=conn.bearer_token(), certificate_path=conn.cert_file,
            private_key_path=conn.key_file, default_namespace=conn.namespace,
        )

    @kopf.on.startup(registry=registry, id="startup")
    async def startup(logger: logging.Logger, **_: Any) -> None:
        state.kube = kube_mod.Kube(conn, field_manager=state.settings.field_manager)
        state.watches = await caches.start(state.kube, state.settings.namespaces, state.reconcile)
        state.resync_task = asyncio.create_task(state.resync_forever(), name="modelship-resync")
        logger.info("modelship operator starting: namespaces=%s server_image=%s resync=%ss",
                    ",".join(state.settings.namespaces) or "(all)", state.settings.server_image,
                    state.settings.resync_seconds)

    @kopf.on.cleanup(registry=registry, id="cleanup")
    async def cleanup(**_: Any) -> None:
        if state.resync_task is not None:
            state.resync_task.cancel()
            await asyncio.gather(state.resync_task, return_exceptions=True)
        await state.stop_wakeups()
        if state.watches is not None:
            await state.watches.stop()
        if state.kube is not None:
            await state.kube.close()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-resume")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-create")
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-update")
    async def on_change(body: kopf.Body, logger: logging.Logger, retry: int, **_: Any) -> None:
        try:
            await state.reconcile(body.metadata.namespace, body.metadata.name, "change")
        except kube_mod.TemporaryError as exc:
            raise kopf.TemporaryError(str(exc), delay=min(2.0 ** retry, MAX_RETRY_DELAY)) from exc
        except kube_mod.PermanentError as exc:  # e.g. status itself rejected: no hot loop
            raise kopf.PermanentError(str(exc)) from exc

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="forget-deleted",
                   when=lambda type, **_: type == "DELETED")
    async def on_md_deleted(body: kopf.Body, **_: Any) -> None:
        # Not an on.delete handler: that would add a finalizer. Drop the wake-up and baselines.
        state.cancel_wakeup(body.metadata.namespace, body.metadata.name)
        if body.metadata.uid:
            state.memory.forget(body.metadata.uid)

    return registry


async def operator(settings: Settings, connection: kube_mod.Connection, *,
                   liveness_endpoint: str | None = None,
                   stop_flag: asyncio.Event | None = None) -> None:
    """Run the operator until stopped (kopf.operator with our registry and settings)."""
    state = OperatorState(settings=settings, connection=connection)
    await kopf.operator(
        registry=build_registry(state),
        settings=kopf_settings(settings),
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
    )
