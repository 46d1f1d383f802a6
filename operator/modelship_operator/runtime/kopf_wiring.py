"""The kopf wiring, thin: kopf runs the process (login, startup and cleanup, the liveness
endpoint, signals); it has no resource handlers.

The ModelDeployments are watched by our own watch cache (caches.py, started by Runtime.start):
a created or changed one goes to `scheduler.enqueue` once the cache holds that version (so the
reconcile never reads an older object than the one that triggered it), a deleted one has its
wake-up, back-off state and analysis baselines forgotten, and at start every object is enqueued
once (what kopf's resume handlers did). Children are watched the same way: a change to any
child reconciles its owner within moments.

Why not kopf's on.create / on.update / on.resume: kopf keeps a second watch of every
ModelDeployment beside the cache and writes its `kopf.zalando.org/last-handled-configuration`
annotation once per new or changed object (1,000 new objects: 1,000 more PATCHes and their
watch events); its event could also run ahead of the cache the reconcile reads. kopf writes
nothing to our objects now: no annotations, no finalizer (ownerReferences let the garbage
collector remove the children), no status. kopf runs standalone: which instance acts is
decided by the Lease (leader.py) before kopf starts.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import kopf

from ..settings import Settings

if TYPE_CHECKING:
    from .operator import Runtime


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    """kopf's own behaviour, tuned for a quiet operator that only hosts our runtime."""
    ks = kopf.OperatorSettings()
    ks.posting.level = logging.WARNING  # no "Activity succeeded" events
    ks.posting.reporting_component = settings.field_manager
    # No resource handlers, so kopf stores nothing; were one added, its bookkeeping would go
    # to annotations (status belongs to reconcile, and the structural schema prunes status.kopf).
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage()
    ks.peering.standalone = True  # the Lease, not kopf peering, keeps a second instance idle
    ks.watching.server_timeout = 300  # the API server closes watches; kopf reconnects
    ks.watching.client_timeout = 330
    ks.networking.request_timeout = 30
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
