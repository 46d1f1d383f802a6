"""Rollout state that survives a lost status: the records on the revision Deployments. Pure.

Each revision Deployment carries `modelship.dev/rollout` (observed.ROLLOUT_RECORD, metadata
only, so no pod restarts), rendered with the rest of the Deployment and so healed with it:

* the stable's: revision number, hash, version, uri, pod-shaping spec and image (what
  re-renders the stable while the spec describes a canary);
* the canary's: its identity plus the resumable progress (step, stepStartedAt, abort,
  window tallies, consumed action ids, pod restart counts, `seq`).

Reconcile applies the children before it writes status, so a record is never older than
the status it goes with. `recover` fills a status that lost its stable or canary (a restore
that drops status, an operator that died between the apply and the status write) from the
records, and takes the canary's progress from whichever of status and record has the
higher `seq`. A canary whose progress is found nowhere restarts at step 1 (plan.py): never a
promotion without the rollout's evidence.
"""
from __future__ import annotations

from typing import Any, Mapping

from .revisions import history_entry
from .values import as_int, canonical_json

STABLE_RECORD_KEYS = ("revision", "hash", "version", "uri", "spec", "image")
CANARY_RECORD_KEYS = ("revision", "hash", "version", "uri", "step", "stepStartedAt", "aborted", "abortReason",
                      "analysis", "actions", "heldReason", "restarts", "podRestarts", "unreadySince", "shadowSince",
                      "seq")


def stable_record(entry: Mapping[str, Any]) -> str:
    """The record annotation of the stable Deployment, from its `status.stable` entry."""
    return canonical_json({"role": "stable", **{k: entry[k] for k in STABLE_RECORD_KEYS if entry.get(k) is not None}})


def canary_record(entry: Mapping[str, Any]) -> str:
    """The record annotation of the canary Deployment, from its `status.canary` entry."""
    return canonical_json({"role": "canary", **{k: entry[k] for k in CANARY_RECORD_KEYS if entry.get(k) is not None}})


def progress_changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether the recorded part of a canary entry differs (`seq` aside)."""
    keys = [k for k in CANARY_RECORD_KEYS if k != "seq"]
    return any(before.get(k) != after.get(k) for k in keys)


def _entry(record: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: record[k] for k in keys if k in record}


def recover(previous: Mapping[str, Any], records: Mapping[str, Mapping[str, Any]],
            stamp: str, current: str | None = None) -> tuple[dict, list[str]]:
    """The status to plan from: `previous` with what the records know better; and what was recovered.

    * stable: the stable record with the highest revision number, when the status names none
      or an older one (a promotion whose status write was lost);
    * canary: the record of the spec's revision (`current`) when the status names no canary or
      an older one (a status lost or read stale from a cache); when the status was lost
      entirely, the newest canary record; when status and record describe the same canary, the
      one with the higher `seq`. Otherwise the status is trusted (a canary that finished, was
      cancelled or replaced leaves no record for the spec's revision).
    """
    status = dict(previous)
    notes: list[str] = []
    stable = dict(previous.get("stable") or {})
    lost = not stable.get("hash")
    stables = sorted((r for r in records.values() if r.get("role") == "stable" and r.get("hash")),
                     key=lambda r: as_int(r.get("revision")))
    if stables and (lost or as_int(stables[-1].get("revision")) > as_int(stable.get("revision"))):
        record = stables[-1]
        if not lost and stable.get("hash") != record["hash"]:
            history = [dict(h) for h in previous.get("history") or () if isinstance(h, Mapping)]
            history.append(history_entry(stable, "Superseded", stamp))
            status["history"] = history
        stable = {**_entry(record, STABLE_RECORD_KEYS)}
        status["stable"] = stable
        notes.append(f"stable revision {as_int(record.get('revision'))} ({record['hash']})")
        if (status.get("canary") or {}).get("hash") == record["hash"]:
            status.pop("canary", None)
    canary = dict(status.get("canary") or {})
    canaries = sorted((r for r in records.values()
                       if r.get("role") == "canary" and r.get("hash") and r["hash"] != stable.get("hash")),
                      key=lambda r: as_int(r.get("revision")))
    by_hash = {r["hash"]: r for r in canaries}
    record: Mapping[str, Any] | None = None
    if canary.get("hash") in by_hash:
        newer = by_hash[canary["hash"]]
        record = newer if as_int(newer.get("seq")) > as_int(canary.get("seq")) else None
    elif current in by_hash:
        record, canary = by_hash[current], {}
    elif lost and not canary.get("hash") and canaries:
        record = canaries[-1]
    if record is not None:
        status["canary"] = {**canary, **_entry(record, CANARY_RECORD_KEYS)}
        notes.append(f"canary revision {as_int(record.get('revision'))} ({record['hash']}) at step "
                     f"{as_int(record.get('step')) + 1}")
    return status, notes
