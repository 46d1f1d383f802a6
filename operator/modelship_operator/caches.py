"""What the operator keeps in watch caches, and how a child's change reaches its owner.

`start()` gives the operator's `Kube` a `WatchCache` over the ModelDeployments and every kind
of child (children filtered server-side by our managed-by label; the optional kinds start the
first time reconcile asks for them, i.e. once their CRD is served). Reads then cost no request.

A child changed by anyone but us (the deployment controller reporting readiness, `kubectl
scale`, a patched Service, a deletion) reconciles the ModelDeployment named in its controller
ownerReference within moments: one reconcile per owner at a time, later changes coalesced
into one more. Our own writes do not come back as changes (the cache already holds them).

A ModelDeployment changed by anyone but us (created, its spec or annotations edited, deleted)
is handed to `on_model_deployment` once the cache holds that change, so the reconcile it
starts reads at least that version from the cache (kopf's own watch could run ahead of it).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .kube import Kube, KubeError
from .planning import MANAGED_BY, MANAGED_BY_LABEL
from .reconcile import CHILD_KINDS
from .spec import API_VERSION, GROUP, KIND
from .watchcache import WatchCache

log = logging.getLogger(__name__)

COALESCE_S = 0.2  # a Deployment rolling out reports many status changes in quick succession
ReconcileOwner = Callable[[str, str, str], Awaitable[Any]]  # (namespace, name, trigger)
ModelDeploymentChanged = Callable[[str, dict[str, Any]], None]  # (ADDED|MODIFIED|DELETED, object)


def owner_of(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the ModelDeployment that controls obj, if one does."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(
                GROUP + "/"):
            return meta.get("namespace") or "", ref["name"]
    return None


@dataclass
class OwnerTrigger:
    """Reconciles the owner of a changed child; at most one pending run per owner."""

    reconcile_owner: ReconcileOwner
    on_model_deployment: ModelDeploymentChanged | None = None
    pending: set[tuple[str, str]] = field(default_factory=set)
    tasks: set[asyncio.Task] = field(default_factory=set)

    def __call__(self, kind: str, event_type: str, obj: dict[str, Any]) -> None:
        if kind == KIND:
            if self.on_model_deployment is not None:
                self.on_model_deployment(event_type, obj)
            return
        owner = owner_of(obj)
        if owner is None or owner in self.pending:
            return
        self.pending.add(owner)
        trigger = f"{kind.lower()} {obj['metadata'].get('name')} {event_type.lower()}"
        task = asyncio.create_task(self._run(owner, trigger), name=f"modelship-child-{owner[0]}/{owner[1]}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, owner: tuple[str, str], trigger: str) -> None:
        await asyncio.sleep(COALESCE_S)  # a burst of events about one owner: one reconcile
        self.pending.discard(owner)  # a change from now on needs another run
        try:
            await self.reconcile_owner(owner[0], owner[1], trigger)
        except KubeError as exc:  # the resync or the next event will catch up
            log.warning("reconcile of %s/%s after %s failed: %s", owner[0], owner[1], trigger, exc)
        except Exception:  # noqa: BLE001 - one bad object must not stop the others
            log.exception("reconcile of %s/%s after %s failed", owner[0], owner[1], trigger)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass
class Watches:
    cache: WatchCache
    trigger: OwnerTrigger

    async def stop(self) -> None:
        await self.trigger.stop()
        await self.cache.stop()
        # What this process asked of the API server, by verb (benchmarks/bench_operator.py reads it).
        log.info("api requests: %s", dict(self.cache.kube.requests),
                 extra={"requests": dict(self.cache.kube.requests)})


async def start(kube: Kube, namespaces: tuple[str, ...], reconcile_owner: ReconcileOwner,
                on_model_deployment: ModelDeploymentChanged | None = None) -> Watches:
    """Cache the ModelDeployments and their children for `kube` and wait for the first LISTs."""
    trigger = OwnerTrigger(reconcile_owner, on_model_deployment)
    ours = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    cache = WatchCache(kube, namespaces=tuple(namespaces) or (None,), on_change=trigger,
                       label_selectors={(api_version, kind): ours for api_version, kind, _ in CHILD_KINDS})
    cache.start(API_VERSION, KIND)
    for api_version, kind, optional in CHILD_KINDS:
        if optional is None:
            cache.start(api_version, kind)
        else:
            cache.lazy.add((api_version, kind))
    kube.cache = cache
    await cache.wait_synced()
    return Watches(cache, trigger)
