"""A revision is the user's pod-shaping intent (issue 9 item 6): defaults the API server persists,
fields a newer API declares, the operator's default image and the hashing scheme itself never
make a new revision; an operator upgrade re-renders each Deployment in place.
"""
from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import TypeAdapter

from modelship_operator.planning import DeploymentState, Observed, plan, revision_hash
from modelship_operator.planning.revisions import _hash_v01, intent, intent_hash
from modelship_operator.render import render
from modelship_operator.settings import Settings
from modelship_operator.spec import ModelDeployment, ModelDeploymentSpec, parse_spec

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
OLD_IMAGE, NEW_IMAGE = "ghcr.io/modelship/server:0.1.0", "ghcr.io/modelship/server:0.2.0"
MINIMAL = {"model": {"uri": "pvc://models/fraud/1.4.0/model.pt", "version": "1.4.0"}, "replicas": 3,
           "rollout": {"steps": [{"setWeight": 25}, {"pause": {}}]}}


def persisted(spec: dict) -> dict:
    """The spec as the API server stores and returns it: every declared default written out."""
    dumped = TypeAdapter(ModelDeploymentSpec).dump_python(parse_spec(spec), mode="json", by_alias=True,
                                                         exclude_none=True, warnings=False)
    return json.loads(json.dumps(dumped))


def md(spec: dict, status: dict | None = None) -> ModelDeployment:
    return ModelDeployment.from_body({
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml", "uid": "uid-1", "generation": 4},
        "spec": copy.deepcopy(spec), "status": copy.deepcopy(status or {})})


def running(spec: dict, hash_: str, image: str) -> tuple[dict, Observed]:
    """A healthy stable revision `hash_` made from `spec`, as an earlier operator left it."""
    status = {"observedGeneration": 4, "phase": "Healthy",
              "stable": {"revision": 3, "hash": hash_, "version": "1.4.0", "uri": spec["model"]["uri"],
                         "replicas": 3, "readyReplicas": 3, "image": image,
                         "spec": {k: copy.deepcopy(spec[k]) for k in ("model", "server", "gpu", "scheduling",
                                                                      "monitoring") if k in spec}}}
    dep = DeploymentState(f"fraud-{hash_}", hash_, "stable", 3, 3, 3, 3, 1, 1, spec_replicas=3)
    return status, Observed((dep,))


def test_written_out_defaults_and_new_fields_at_their_default_are_not_intent() -> None:
    full = persisted(MINIMAL)
    assert full["server"]["batching"]["maxQueue"] == 2048 and full["server"]["adminPort"] == 9090
    assert intent(md(full)) == intent(md(MINIMAL)) == {"model": MINIMAL["model"]}
    assert intent_hash(md(full)) == intent_hash(md(MINIMAL))
    # A value the user sets (even one of a field added later) is intent.
    assert intent_hash(md({**MINIMAL, "server": {"adminPort": 9100}})) != intent_hash(md(MINIMAL))
    assert intent_hash(md({**MINIMAL, "model": {**MINIMAL["model"], "sha256": "a" * 64}})) != intent_hash(md(MINIMAL))


@pytest.mark.parametrize("change", [{"replicas": 9}, {"rollout": {"steps": []}}, {"historyLimit": 2},
                                    {"autoscaling": {"maxReplicas": 5}}])
def test_what_does_not_shape_pods_is_not_intent(change: dict[str, Any]) -> None:
    assert intent_hash(md({**MINIMAL, **change})) == intent_hash(md(MINIMAL))


def test_an_operator_upgrade_with_a_new_default_image_rolls_in_place() -> None:
    """Same object, the operator's default image changed: same revision, same Deployment, no canary;
    the Deployment is re-rendered with the new image (RollingUpdate, maxUnavailable 0)."""
    spec = persisted(MINIMAL)
    hash_ = revision_hash(md(spec), Settings(server_image=OLD_IMAGE))
    assert hash_ == revision_hash(md(spec), Settings(server_image=NEW_IMAGE))
    status, observed = running(spec, hash_, OLD_IMAGE)

    p = plan(md(spec, status), observed, Settings(server_image=NEW_IMAGE), T0)
    assert [(r.name, r.role, r.replicas) for r in p.revisions] == [(f"fraud-{hash_}", "stable", 3)]
    assert "canary" not in p.status and p.status["phase"] == "Healthy"
    assert not [e for e in p.events if e.reason in ("CanaryStarted", "RevisionCreated")]
    (dep,) = [m for m in render(p) if m["kind"] == "Deployment"]
    assert dep["metadata"]["name"] == f"fraud-{hash_}"
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == NEW_IMAGE
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    # A pinned image is intent: changing it is a new revision (a canary).
    pinned = {**spec, "server": {**spec["server"], "image": "registry.example.com/fraud-server:2"}}
    p = plan(md(pinned, status), observed, Settings(server_image=NEW_IMAGE), T0)
    assert [r.role for r in p.revisions] == ["stable", "canary"]


def test_a_default_that_changed_keeps_the_running_revision() -> None:
    """The object was created when batching.maxQueue defaulted to 256: the API server persisted 256.
    Today's default is 2048, so 256 now reads as the user's value and the fresh hash differs; the
    revision is still recognised by its recorded intent, keeps its name, and renders 256."""
    spec = persisted(MINIMAL)
    spec["server"]["batching"]["maxQueue"] = 256  # what the old CRD default wrote into the object
    named_then = "0123abcdef"  # whatever that operator named it
    status, observed = running(spec, named_then, OLD_IMAGE)
    assert intent_hash(md(spec)) != named_then

    p = plan(md(spec, status), observed, Settings(server_image=OLD_IMAGE), T0)
    assert [r.name for r in p.revisions] == [f"fraud-{named_then}"] and "canary" not in p.status
    assert p.status["stable"]["hash"] == named_then and p.status["stable"]["revision"] == 3
    env = {e["name"]: e["value"] for e in p.revisions[0].env}
    assert env["MODELSHIP_MAX_QUEUE"] == "256"
    # A real change of intent still starts a canary (and gets a fresh name).
    changed = copy.deepcopy(spec)
    changed["model"] = {**changed["model"], "version": "1.5.0", "uri": "pvc://models/fraud/1.5.0/model.pt"}
    p = plan(md(changed, status), observed, Settings(server_image=OLD_IMAGE), T0)
    assert [(r.role, r.hash) for r in p.revisions] == [("stable", named_then), ("canary", intent_hash(md(changed)))]


def test_revisions_named_by_operator_0_1_are_kept_across_the_upgrade() -> None:
    """Operator 0.1 hashed the parsed spec with every default and the resolved image. Upgrading
    to this scheme renames nothing: a stable by its recorded spec, a canary (no spec recorded)
    by the 0.1 hash of the spec it runs."""
    v1 = persisted(MINIMAL)
    old_settings = Settings(server_image=OLD_IMAGE)
    stable_v01 = _hash_v01(md(v1), old_settings)
    assert stable_v01 != intent_hash(md(v1))
    status, observed = running(v1, stable_v01, OLD_IMAGE)
    p = plan(md(v1, status), observed, old_settings, T0)
    assert [r.name for r in p.revisions] == [f"fraud-{stable_v01}"] and "canary" not in p.status

    # Mid-canary: the canary 0.1 named keeps its name, its Deployment and its step.
    v2 = copy.deepcopy(v1)
    v2["model"] = {**v2["model"], "version": "1.5.0", "uri": "pvc://models/fraud/1.5.0/model.pt"}
    canary_v01 = _hash_v01(md(v2), old_settings)
    status["canary"] = {"revision": 4, "hash": canary_v01, "version": "1.5.0", "uri": v2["model"]["uri"],
                        "weight": 25, "requestedWeight": 25, "step": 1, "stepStartedAt": "2026-05-01T11:50:00Z",
                        "replicas": 1, "readyReplicas": 1, "aborted": False,
                        "analysis": {"lastTime": "2026-05-01T11:55:00Z"}}
    observed = Observed((DeploymentState(f"fraud-{stable_v01}", stable_v01, "stable", 2, 2, 2, 2, 1, 1, spec_replicas=2),
                         DeploymentState(f"fraud-{canary_v01}", canary_v01, "canary", 1, 1, 1, 1, 1, 1, spec_replicas=1)))
    assert revision_hash(md(v2, status), old_settings) == canary_v01
    p = plan(md(v2, status), observed, old_settings, T0)
    assert [(r.role, r.hash) for r in p.revisions] == [("stable", stable_v01), ("canary", canary_v01)]
    assert p.status["canary"]["step"] == 1 and p.status["canary"]["revision"] == 4
    assert not [e for e in p.events if e.reason in ("CanaryStarted", "CanaryReplaced")]
