"""One object's reconcile as the scheduler calls it: read the object afresh, reconcile, log."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..canary_metrics import AnalysisMemory
from ..kube import Kube
from ..reconcile import Discovery, reconcile
from ..settings import Settings
from ..spec import API_VERSION, KIND

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Reconciler:
    settings: Settings
    kube: Kube
    clock: Callable[[], datetime] = utcnow
    discovery: Discovery = field(default_factory=Discovery)
    memory: AnalysisMemory = field(default_factory=AnalysisMemory)  # canary analysis baselines

    async def __call__(self, namespace: str, name: str, trigger: str) -> float | None:
        """Reconcile the object; seconds until it wants another reconcile (None: nothing timed).

        The object is read afresh (the scheduler holds its lock): a body handed over by kopf
        may predate the status another trigger just wrote, and acting on it would repeat
        events and writes. A deleted object needs nothing: the garbage collector takes the
        children.
        """
        body = await self.kube.get(API_VERSION, KIND, namespace, name)
        if body is None:
            return None
        result = await reconcile(body, self.kube, self.settings, self.clock(), discovery=self.discovery,
                                 memory=self.memory)
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
