"""Revision identity and bookkeeping: the hash, the revision number, the pod-shaping spec kept in
status, and `status.history`. Pure.

A revision is the user's pod-shaping intent: the parts of the spec that shape the pods (model,
server, gpu, scheduling, monitoring; not replicas, autoscaling or rollout) as the user wrote
them, with every value equal to its declared default left out. Its Deployment is
`<name>-<hash>`. What the operator adds or resolves itself (the default server image, defaults
the API server persisted into the object, a field a newer API declares, how env and probes are
rendered) is not intent: an operator or CRD upgrade that changes it re-renders each Deployment in
place (RollingUpdate, maxUnavailable 0) and never starts a rollout.

The hash names a revision when it is first seen; after that the revision is recognised by its
intent (`revision_hash` compares with the intent of the spec recorded for the stable), so a
default that changes later, or a hashing scheme that changes, never renames a running revision.
Revisions named by operator 0.1 (a hash of the parsed spec with every default and the resolved
image) are recognised the same way, so the upgrade to this scheme rolls nothing.
"""
from __future__ import annotations

import copy
import hashlib
from typing import Any, Mapping

from pydantic import TypeAdapter

from ..settings import Settings
from ..spec import ModelDeployment, ModelDeploymentSpec, SpecError
from .pods import server_image
from .values import as_int, canonical_json, previous_status

# The pod-shaping part of the spec (what a revision's identity covers).
SHAPING_KEYS = ("model", "server", "gpu", "scheduling", "monitoring")

_SPEC = TypeAdapter(ModelDeploymentSpec)


def intent(md: ModelDeployment) -> dict[str, Any]:
    """The user's pod-shaping intent: the shaping parts of the spec, camelCase, with every value
    equal to its declared default removed (at any depth). The API server persists defaults into
    the stored object, so a written-out default must count as much as an omitted one: not at all.
    The server image is in it only when the user set spec.server.image."""
    dumped = _SPEC.dump_python(md.spec, mode="json", by_alias=True, exclude_defaults=True, warnings=False)
    return {key: dumped[key] for key in SHAPING_KEYS if key in dumped}


def intent_hash(md: ModelDeployment) -> str:
    """10 hex chars over `intent(md)`: the name a new revision gets."""
    spec = md.spec
    held = _HASHES.get(id(spec))
    if held is not None and held[0] is spec:
        return held[1]
    digest = hashlib.sha256(canonical_json(intent(md)).encode()).hexdigest()[:10]
    _HASHES[id(spec)] = (spec, digest)
    if len(_HASHES) > _HASHES_KEPT:
        del _HASHES[next(iter(_HASHES))]  # the oldest
    return digest


# intent_hash of the last few parsed specs, by identity (a spec is frozen): one reconcile plans
# twice and asks for its hash several times each, and dumping the spec is most of the cost.
# The spec object is held with its hash, so an id reused by a newer object never matches.
_HASHES: dict[int, tuple[ModelDeploymentSpec, str]] = {}
_HASHES_KEPT = 64


def revision_hash(md: ModelDeployment, settings: Settings) -> str:
    """The revision of md's spec: a revision recorded in its status (stable, then canary) when it
    has the same intent, else a new one named by `intent_hash`."""
    previous = previous_status(md)
    own = intent_hash(md)
    for key in ("stable", "canary"):
        entry = previous.get(key)
        if isinstance(entry, Mapping) and _same_revision(md, settings, entry, own):
            return str(entry["hash"])
    return own


def _same_revision(md: ModelDeployment, settings: Settings, entry: Mapping, own: str) -> bool:
    hash_ = entry.get("hash")
    if not isinstance(hash_, str) or not hash_:
        return False
    if hash_ == own:
        return True
    recorded = _recorded_spec(md, entry)
    if recorded is not None:  # the stable: compare intents (as today's API defaults them)
        return intent(recorded) == intent(md)
    # No spec recorded (a canary entry): a name operator 0.1 gave this same spec.
    return _hash_v01(md, settings) == hash_


def _recorded_spec(md: ModelDeployment, entry: Mapping) -> ModelDeployment | None:
    spec = entry.get("spec")
    if not isinstance(spec, Mapping) or "model" not in spec:
        return None
    try:
        return ModelDeployment.from_body({"metadata": {"name": md.name, "namespace": md.namespace},
                                          "spec": copy.deepcopy(dict(spec))})
    except SpecError:
        return None


def _hash_v01(md: ModelDeployment, settings: Settings) -> str:
    """The revision hash of operator 0.1: the parsed spec with every default (fields added since
    left out while at their default) and the resolved image. Only to recognise its revisions."""
    spec = md.spec
    shaping: dict[str, Any] = {"model": spec.model, "server": spec.server, "gpu": spec.gpu,
                               "scheduling": spec.scheduling, "image": server_image(md, settings)}
    if spec.monitoring is not None:
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
    """The ModelDeployment (and settings) a status entry's revision is rendered from: its recorded
    spec with today's operator settings (the default image included: an operator upgrade rolls it
    in place like the rest), or None when the entry lacks a spec that parses."""
    old = _recorded_spec(md, entry)
    return None if old is None else (old, settings)


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

