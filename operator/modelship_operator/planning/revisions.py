"""Revision identity and bookkeeping: the hash, the revision number, the pod-shaping spec kept in
status, and `status.history`. Pure.

A revision is one pod template: `revision_hash` covers everything that shapes the pods (not
replicas, autoscaling or rollout), and its Deployment is `<name>-<hash>`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
from typing import Mapping

from ..settings import Settings
from ..spec import ModelDeployment, SpecError
from .pods import server_image
from .values import as_int, canonical_json

# The pod-shaping part of the spec (what revision_hash covers, besides the resolved image).
SHAPING_KEYS = ("model", "server", "gpu", "scheduling", "monitoring")


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


def revision_number(hash_: str, previous: Mapping) -> int:
    """Kept while the hash is unchanged; otherwise one more than any number seen so far."""
    seen: list[int] = []
    for key in ("stable", "canary"):
        entry = previous.get(key) or {}
        if entry.get("hash") == hash_ and as_int(entry.get("revision")) > 0:
            return as_int(entry.get("revision"))
        seen.append(as_int(entry.get("revision")))
    seen.extend(as_int(h.get("revision")) for h in previous.get("history") or () if isinstance(h, Mapping))
    return max(seen, default=0) + 1


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


def history_entry(source: Mapping, outcome: str, now: str) -> dict:
    """A `status.history` entry for a revision leaving (or failing as) stable or canary."""
    entry = {
        "revision": as_int(source.get("revision")),
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


def limit_history(md: ModelDeployment, history: list[dict]) -> list[dict]:
    limit = int(md.spec.history_limit)
    return history[-limit:] if limit > 0 else []


def previous_history(previous: Mapping) -> list[dict]:
    return [dict(h) for h in previous.get("history") or () if isinstance(h, Mapping)]

