"""The kopf wiring, thin: kopf tells us what changed, the scheduler decides when to reconcile.

- create / update / resume of a ModelDeployment → `scheduler.enqueue` (the handler returns at
  once; the scheduler reconciles when a slot is free and retries failures itself, with back-off,
  so kopf never retries and writes no progress annotations).
- children are watched by the watch caches (caches.py, started by Runtime.start): a change to
  any child reconciles its owner within moments, instead of at the next resync.
- a deleted ModelDeployment → forget its wake-up, back-off state and analysis baselines.

Quiet steady state: kopf only calls create/update handlers when the object's essence (spec,
labels, annotations) changes, our handlers return nothing (nothing goes into status), kopf's
own handler-success events are switched off (posting level WARNING), and the periodic resync
is the scheduler's task rather than a kopf timer (kopf timers and daemons add a finalizer).
kopf keeps its state in annotations only (never in status): `kopf.zalando.org/last-handled-
configuration` is written once per handled change. No finalizer is ever added (no on.delete
handler, no timers/daemons): ownerReferences let the garbage collector remove the children.
kopf runs standalone: which instance acts is decided by the Lease (leader.py) before kopf starts.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import kopf

from ..settings import Settings
from ..spec import GROUP, PLURAL, VERSION

if TYPE_CHECKING:
    from .operator import Runtime


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    """kopf's own behaviour, tuned for a quiet, finalizer-free operator."""
    ks = kopf.OperatorSettings()
    ks.posting.level = logging.WARNING  # no "Handler succeeded" events on every change
    ks.posting.reporting_component = settings.field_manager
    # kopf keeps its bookkeeping in annotations only: status belongs to reconcile
    # (and the CRD's structural schema would prune a status.kopf stanza anyway).
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage()
    ks.peering.standalone = True  # the Lease, not kopf peering, keeps a second instance idle
    ks.watching.server_timeout = 300  # the API server closes watches; kopf reconnects
    ks.watching.client_timeout = 330
    ks.networking.request_timeout = 30
    # kopf's per-object workers at once: each only enqueues a key and patches kopf's annotation,
    # so a few keep up; unbounded, a burst of 1,000 new objects runs 1,000 workers and their
    # annotation patches at once (the operator's peak memory).
    ks.batching.worker_limit = 32
    return ks


def build_registry(rt: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    conn = rt.connection

    @kopf.on.login(registry=registry, id="login")
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=conn.server, ca_path=conn.ca_file, insecure=conn.insecure or None,
            token=conn.bearer_token(), certificate_path=conn.cert_file,
            private_key_path=conn.key_file, default_namespace=conn.namespace,
        )

    @kopf.on.startup(registry=registry, id="startup")
    async def startup(logger: logging.Logger, **_: Any) -> None:
        await rt.start()
        logger.info("modelship operator starting: namespaces=%s server_image=%s resync=%ss",
                    ",".join(rt.settings.namespaces) or "(all)", rt.settings.server_image,
                    rt.settings.resync_seconds)

    @kopf.on.cleanup(registry=registry, id="cleanup")
    async def cleanup(**_: Any) -> None:
        await rt.stop()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-resume")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-create")
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-update")
    async def on_change(body: kopf.Body, **_: Any) -> None:
        # Hand the key over and return: awaiting the reconcile would keep kopf's per-object
        # worker and its event body alive while it waits for a reconcile slot (1,000 new
        # objects: 1,000 bodies held). The reconcile reads the object when its turn comes.
        rt.scheduler.enqueue(body.metadata.namespace, body.metadata.name, "change")

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="forget-deleted",
                   when=lambda type, **_: type == "DELETED")
    async def on_md_deleted(body: kopf.Body, **_: Any) -> None:
        # Not an on.delete handler: that would add a finalizer.
        rt.forget(body.metadata.namespace, body.metadata.name, body.metadata.uid)

    return registry


async def run_kopf(rt: Runtime, *, liveness_endpoint: str | None, stop_flag: asyncio.Event) -> None:
    """kopf.operator with our registry and settings, until `stop_flag` is set."""
    settings = rt.settings
    await kopf.operator(
        registry=build_registry(rt),
        settings=kopf_settings(settings),
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
    )
