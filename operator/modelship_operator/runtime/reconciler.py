"""One object's reconcile as the scheduler calls it: read the object afresh, reconcile, log.

Settled objects cost no rendering: when a reconcile wrote nothing and wants no timed look, the
inputs it read (the object's resourceVersion, each child's, which optional CRDs are served) are
remembered, and a later reconcile that finds exactly those inputs again (a resync, a duplicate
trigger) stops there: planning is pure, so it would render, compare and write the same nothing.
A change to anything it reads changes a resourceVersion. Canaries are always reconciled in full
(their plan reads the clock and the pods), and every object at least every SETTLED_TTL_S.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..canary_metrics import AnalysisMemory
from ..kube import Kube
from ..planning import INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from ..reconcile import CHILD_KINDS, OPTIONAL_CRDS, Discovery, reconcile
from ..settings import Settings
from ..spec import API_VERSION, KIND

log = logging.getLogger(__name__)

# A settled object is reconciled in full at least this often anyway (the backstop of the backstop).
SETTLED_TTL_S = 600.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Reconciler:
    settings: Settings
    kube: Kube
    clock: Callable[[], datetime] = utcnow
    discovery: Discovery = field(default_factory=Discovery)
    memory: AnalysisMemory = field(default_factory=AnalysisMemory)  # canary analysis baselines
    monotonic: Callable[[], float] = time.monotonic
    # (namespace, name) -> (inputs of its last reconcile that wrote nothing, when)
    settled: dict[tuple[str, str], tuple[tuple, float]] = field(default_factory=dict)

    def forget(self, namespace: str, name: str) -> None:
        self.settled.pop((namespace, name), None)

    async def _inputs(self, body: Mapping[str, Any]) -> tuple | None:
        """What a reconcile of `body` reads, as resourceVersions; None when the object's plan
        depends on more (a canary: the clock and its pods) or reads would cost requests."""
        meta = body.get("metadata") or {}
        if getattr(self.kube, "cache", None) is None or meta.get("deletionTimestamp") or \
                (body.get("status") or {}).get("canary"):
            return None
        served = {r: await self.discovery.served(self.kube, r) for r in OPTIONAL_CRDS}
        selector = {INSTANCE_LABEL: meta.get("name"), MANAGED_BY_LABEL: MANAGED_BY}
        children: list[tuple[str, str, str]] = []
        for api_version, kind, optional in CHILD_KINDS:
            if optional is None or served[optional]:
                children += sorted((kind, c["metadata"]["name"], str(c["metadata"].get("resourceVersion")))
                                   for c in await self.kube.owned(api_version, kind, meta.get("namespace"),
                                                                  str(meta.get("uid")), selector))
        return (meta.get("uid"), meta.get("resourceVersion"), tuple(served.values()), tuple(children))

    async def _changed_meanwhile(self, body: Mapping[str, Any], cleared: list[str]) -> bool:
        """Whether the object's spec, labels or annotations (but for the action annotations this
        reconcile removed) are no longer those of `body`."""
        meta = body.get("metadata") or {}
        now = await self.kube.get(API_VERSION, KIND, meta.get("namespace"), meta.get("name"))
        if now is None:
            return False

        def essence(m: Mapping[str, Any]) -> tuple:
            annotations = {k: v for k, v in (m.get("annotations") or {}).items() if k not in cleared}
            return m.get("generation"), m.get("labels") or {}, annotations
        return essence(now.get("metadata") or {}) != essence(meta)

    async def __call__(self, namespace: str, name: str, trigger: str) -> float | None:
        """Reconcile the object; seconds until it wants another reconcile (None: nothing timed).

        The object is read afresh (the scheduler holds its lock): a body handed over by kopf
        may predate the status another trigger just wrote, and acting on it would repeat
        events and writes. A deleted object needs nothing: the garbage collector takes the
        children.
        """
        body = await self.kube.get(API_VERSION, KIND, namespace, name)
        if body is None:
            self.forget(namespace, name)
            return None
        key = (namespace, name)
        inputs = await self._inputs(body)
        seen = self.settled.get(key)
        if inputs is not None and seen is not None and seen[0] == inputs and \
                self.monotonic() - seen[1] < SETTLED_TTL_S:
            log.debug("%s/%s (%s): settled, nothing it reads changed", namespace, name, trigger)
            return None
        self.settled.pop(key, None)
        result = await reconcile(body, self.kube, self.settings, self.clock(), discovery=self.discovery,
                                 memory=self.memory)
        if inputs is not None and not result.wrote and result.requeue_after is None and not result.error \
                and result.analysis is None:
            self.settled[key] = (inputs, self.monotonic())
        if (result.status_written or result.cleared) and await self._changed_meanwhile(body, result.cleared):
            # Someone changed the object while our write was under way: the watch event of that
            # change is folded into our write's answer, so nothing else would reconcile it.
            result.requeue_after = 0.0
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
        return result.requeue_after
