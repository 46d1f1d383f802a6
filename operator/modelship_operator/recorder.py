"""Post the plan's Events as series: a repeated event bumps one Event object's count and
lastTimestamp (planning/events.py decides which object and what changes); a new one is created.
I/O through `kube` only.

Requests: a transition event (RevisionCreated, Ready, ...) is nearly always the first of its
series, so it is created straight away (one POST; "already exists" falls back to read and bump).
The per-window analysis events repeat by design, so their series is read first (GET + PATCH).
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from .kube import TemporaryError
from .planning.events import REPEATING_REASONS, Event, series_name, series_update
from .planning.values import timestamp


class EventAPI(Protocol):
    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...
    async def create_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str,
                           *, component: str | None = None, name: str | None = None,
                           at: str | None = None) -> dict[str, Any]: ...
    async def patch(self, api_version: str, kind: str, namespace: str | None, name: str, body: Any,
                    *, json_patch: bool = False) -> dict[str, Any]: ...


async def record(kube: EventAPI, involved: Mapping[str, Any], event: Event, now: datetime) -> dict[str, Any]:
    """Record one occurrence of `event` about `involved`; returns the Event object as written.

    Raises kube.KubeError when the API server refuses (the caller decides whether that matters).
    """
    meta = involved.get("metadata") or {}
    namespace, name = meta.get("namespace"), series_name(str(meta.get("name")), str(meta.get("uid")), event)
    existing = await kube.get("v1", "Event", namespace, name) if event.reason in REPEATING_REASONS else None
    if existing is None:
        try:
            return await kube.create_event(involved, event.type, event.reason, event.message, name=name,
                                           at=timestamp(now))
        except TemporaryError as exc:
            if exc.status != 409:  # not "already exists" (created meanwhile): a real failure
                raise
            existing = await kube.get("v1", "Event", namespace, name)
            if existing is None:
                raise
    return await kube.patch("v1", "Event", namespace, name, series_update(existing, event, now))
