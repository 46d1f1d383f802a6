"""The typed spec (api.v1alpha1, re-exported by spec.py) parses bodies with the CRD's defaults and
verdicts: the CRD is generated from the same models, and the typed rules agree with CEL."""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelship_operator import spec
from modelship_operator.api import validate as schema
from modelship_operator.spec import ModelDeployment, SpecError, parse_duration

MINIMAL = {
    "apiVersion": "modelship.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "digits", "namespace": "ml"},
    "spec": {"model": {"uri": "file:///models/digits/model.pt", "version": "1.0.0"}},
}


def test_every_spec_attribute_is_a_crd_field() -> None:
    """The planning code reads snake_case attributes; each is one camelCase field of the CRD."""
    root = schema.openapi_schema()["properties"]["spec"]

    def check(cls: Any, node: dict[str, Any], path: str) -> None:
        fields = cls.__pydantic_fields__
        assert sorted(f.alias for f in fields.values()) == sorted(node["properties"]), path
        for name, info in fields.items():
            value = getattr(cls, "__dataclass_fields__")[name]
            assert value.name == name
            sub = node["properties"][info.alias]
            inner = typing.get_args(info.annotation) or (info.annotation,)
            for tp in inner:
                tp = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
                if dataclasses.is_dataclass(tp):
                    check(tp, sub.get("items", sub), f"{path}.{info.alias}")

    check(spec.ModelDeploymentSpec, root, "spec")


def test_parsed_defaults_equal_the_crd_defaults() -> None:
    """Offline parsing of a bare body equals parsing the object an API server would store."""
    defaulted = schema.apply_defaults(MINIMAL, schema.openapi_schema())
    assert defaulted["spec"]["server"]["batching"]["maxBatchSize"] == 32  # defaults did apply
    assert ModelDeployment.from_body(MINIMAL) == ModelDeployment.from_body(defaulted)
    with_autoscaling = copy.deepcopy(MINIMAL)
    with_autoscaling["spec"]["autoscaling"] = {"maxReplicas": 3}
    with_gateway = copy.deepcopy(MINIMAL)
    with_gateway["spec"]["rollout"] = {"gateway": {"parentRefs": [{"name": "gw"}]}, "steps": [{"pause": {}}, {"setWeight": 5}]}
    for body in (with_autoscaling, with_gateway):
        assert ModelDeployment.from_body(body) == ModelDeployment.from_body(
            schema.apply_defaults(body, schema.openapi_schema()))


def test_from_body_reads_metadata_spec_and_status() -> None:
    body = copy.deepcopy(MINIMAL)
    body["metadata"].update(uid="u-1", generation=3, resourceVersion="42", labels={"team": "risk"},
                            annotations={"modelship.dev/promote": "true"})
    body["spec"]["model"]["uri"] = "pvc://models/digits/1.0.0/model.pt"
    body["spec"]["rollout"] = {"steps": [{"setWeight": 10}, {"pause": {"duration": "1m30s"}}, {"pause": {}}]}
    body["status"] = {
        "observedGeneration": 2, "phase": "Progressing",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Available", "message": "2/2",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "stable": {"revision": 3, "hash": "abc123def0", "version": "0.9.0", "replicas": 2, "readyReplicas": 2},
        "canary": {"revision": 4, "weight": 10, "step": 1, "analysis": {"verdict": "Pass", "successes": 2}},
        "history": [{"revision": 2, "outcome": "Superseded"}],
        "replicas": 3, "selector": "app.kubernetes.io/instance=digits",
    }
    md = ModelDeployment.from_body(body)
    assert (md.name, md.namespace, md.uid, md.generation, md.resource_version) == ("digits", "ml", "u-1", 3, "42")
    assert md.labels == {"team": "risk"} and md.annotations == {"modelship.dev/promote": "true"}
    model = md.spec.model
    assert (model.scheme, model.pvc_claim, model.pvc_path, model.needs_download) == (
        "pvc", "models", "digits/1.0.0/model.pt", False)
    steps = md.spec.rollout.steps
    assert steps[0].set_weight == 10 and steps[0].pause is None
    assert steps[1].pause is not None and steps[1].pause.seconds == 90.0
    assert steps[2].pause is not None and steps[2].pause.seconds is None  # manual promote
    assert md.spec.rollout.analysis.interval_seconds == 30.0
    assert md.status.stable == spec.RevisionStatus(revision=3, hash="abc123def0", version="0.9.0",
                                                   replicas=2, ready_replicas=2)
    assert md.status.canary is not None and md.status.canary.analysis is not None
    assert md.status.canary.analysis.verdict == "Pass" and md.status.canary.weight == 10
    ready = md.status.condition("Ready")
    assert ready is not None and ready.status == "True" and ready.reason == "Available"
    assert md.status.condition("Degraded") is None
    assert md.status.history[0].outcome == "Superseded"
    assert md.raw_status == body["status"] and md.raw_status is not body["status"]


def test_from_body_copies_passthrough_objects() -> None:
    body = copy.deepcopy(MINIMAL)
    body["spec"]["scheduling"] = {"affinity": {"nodeAffinity": {"x": 1}}, "nodeSelector": {"pool": "gpu"}}
    md = ModelDeployment.from_body(body)
    body["spec"]["scheduling"]["affinity"]["nodeAffinity"]["x"] = 2
    assert md.spec.scheduling.affinity == {"nodeAffinity": {"x": 1}}
    assert md.spec.scheduling.node_selector == {"pool": "gpu"}


def test_status_is_read_leniently() -> None:
    body = {**MINIMAL, "status": {"conditions": ["junk", {"status": "True"}], "stable": "x", "replicas": "3"}}
    md = ModelDeployment.from_body(body)
    assert md.status.conditions == () and md.status.stable is None and md.status.replicas is None


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30.0), ("2m", 120.0), ("1h30m", 5400.0), ("500ms", 0.5), ("1.5h", 5400.0), ("1m30s", 90.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "1d", "-1s", "1 m", "s", "1m 30s", 30])
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(SpecError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("body, fragment", [
    ([], "must be a mapping"),
    ({**MINIMAL, "apiVersion": "apps/v1"}, "apiVersion must be modelship.dev/v1alpha1"),
    ({**MINIMAL, "kind": "Deployment"}, "kind must be ModelDeployment"),
    ({**MINIMAL, "metadata": {}}, "metadata.name is required"),
    ({k: v for k, v in MINIMAL.items() if k != "spec"}, "spec is required"),
    ({**MINIMAL, "spec": {"model": {"uri": "file:///m.pt", "version": "1"}, "replicas": True}}, "must be an integer"),
    ({**MINIMAL, "spec": {"model": {"uri": "file:///m.pt", "version": 1.0}}}, "must be a string"),
    ({**MINIMAL, "spec": {"model": {"uri": "file:///m.pt", "version": "1"}, "server": []}}, "spec.server must be an object"),
])
def test_from_body_errors(body: Any, fragment: str) -> None:
    with pytest.raises(SpecError, match=re.escape(fragment)):
        ModelDeployment.from_body(body)


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)


def test_dataclasses_are_frozen() -> None:
    md = ModelDeployment.from_body(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        md.spec.replicas = 3  # type: ignore[misc]


# --- property test: the typed model and the CRD reach the same verdict -------------------
# Each field is valid most of the time, so that a good share of bodies pass and the
# cross-field rules (not only the first structural error) get exercised.
def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 15).flatmap(lambda i: invalid if i == 15 else valid)


URIS = st.sampled_from(["file:///models/m.pt", "pvc://models/a/m.pt", "https://h.example.com/m.pt",
                        "http://h:80/m.pt", "s3://bucket/key.pt"])
BAD_URIS = st.sampled_from(["file://m.pt", "pvc://models", "pvc://Bad_Claim/m.pt", "https://h.example.com",
                            "s3://b/k", "ftp://h/m.pt", ""])
DURATIONS = st.sampled_from(["30s", "1m30s", "1.5h", "500ms", "2m"])
BAD_DURATIONS = st.sampled_from(["0s", "0.0m", "x", "30", ""])


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    def maybe(key: str, strategy: st.SearchStrategy[Any], into: dict[str, Any]) -> None:
        if draw(st.booleans()):
            into[key] = draw(strategy)

    version = mostly(st.sampled_from(["1.0.0", "v2", "a" * 63]), st.sampled_from(["", "1.0 beta", "-x", "a" * 64]))
    s: dict[str, Any] = {"model": {"uri": draw(mostly(URIS, BAD_URIS)), "version": draw(version)}}
    maybe("allowInsecureHttp", st.booleans(), s["model"])
    maybe("sha256", mostly(st.just("0" * 64), st.sampled_from(["0" * 63, "g" * 64])), s["model"])
    maybe("replicas", mostly(st.integers(0, 20), st.sampled_from([-1, 1001])), s)
    batching: dict[str, Any] = {}
    maybe("maxBatchSize", mostly(st.integers(1, 64), st.integers(0, 300)), batching)
    maybe("maxQueue", mostly(st.integers(64, 400), st.integers(0, 64)), batching)
    maybe("maxDelayMs", mostly(st.integers(0, 50), st.integers(-1, 40000)), batching)
    maybe("timeoutMs", mostly(st.integers(100, 40000), st.integers(0, 100)), batching)
    s["server"] = {"batching": batching}
    maybe("precision", mostly(st.just("fp32"), st.sampled_from(["fp16", "bf16", "int8"])), s["server"])
    gpu: dict[str, Any] = {}
    maybe("count", mostly(st.integers(0, 4), st.sampled_from([-1, 17])), gpu)
    maybe("resourceName", mostly(st.sampled_from(["nvidia.com/gpu", "nvidia.com/mig-1g.10gb"]),
                                 st.sampled_from(["", "kubernetes.io/x", "gpu"])), gpu)
    if gpu.get("count", 0) > 0 or draw(st.integers(0, 9)) == 0:
        maybe("type", mostly(st.just("NVIDIA-L4"), st.sampled_from(["", "bad type"])), gpu)
    s["gpu"] = gpu
    if gpu.get("count", 0) > 0 and draw(st.booleans()):
        s["server"]["precision"] = draw(st.sampled_from(["fp16", "bf16"]))
    if draw(st.booleans()):
        auto: dict[str, Any] = {"maxReplicas": draw(mostly(st.integers(4, 12), st.integers(0, 4)))}
        maybe("minReplicas", mostly(st.integers(1, 4), st.integers(0, 12)), auto)
        maybe("targetCPUUtilization", mostly(st.integers(1, 100), st.sampled_from([-1, 0, 101])), auto)
        maybe("metrics", st.lists(st.just({"type": "Pods"}), max_size=2), auto)
        s["autoscaling"] = auto
    rollout: dict[str, Any] = {}
    step = mostly(
        st.one_of(st.builds(lambda w: {"setWeight": w}, st.integers(0, 100)),
                  st.builds(lambda d: {"pause": {"duration": d}}, DURATIONS), st.just({"pause": {}})),
        st.one_of(st.just({}), st.just({"setWeight": 5, "pause": {}}), st.sampled_from([{"setWeight": -1}, {"setWeight": 101}]),
                  st.builds(lambda d: {"pause": {"duration": d}}, BAD_DURATIONS)),
    )
    maybe("steps", st.lists(step, max_size=4), rollout)
    maybe("traffic", mostly(st.sampled_from(["auto", "gateway", "replicas"]), st.just("mesh")), rollout)
    if draw(st.booleans()):
        gateway: dict[str, Any] = {}
        maybe("parentRefs", st.lists(st.just({"name": "gw"}), max_size=2), gateway)
        maybe("mirrorPercent", mostly(st.integers(0, 100), st.sampled_from([-1, 101])), gateway)
        rollout["gateway"] = gateway
    analysis: dict[str, Any] = {}
    maybe("interval", mostly(DURATIONS, BAD_DURATIONS), analysis)
    maybe("maxErrorRate", mostly(st.sampled_from([0, 0.01, 1]), st.sampled_from([1.5, -0.1])), analysis)
    maybe("maxLatencyP99Ms", mostly(st.sampled_from([0.5, 250]), st.sampled_from([0, -1])), analysis)
    maybe("failureLimit", mostly(st.integers(1, 100), st.sampled_from([0, 101])), analysis)
    rollout["analysis"] = analysis
    s["rollout"] = rollout
    name = draw(mostly(st.sampled_from(["digits", "d" * 52]), st.sampled_from(["1digits", "d" * 53, "Digits"])))
    return {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "ml"}, "spec": s}


@pytest.fixture(scope="module")
def cel_ready() -> None:
    """Build the CEL environment before hypothesis runs (celpy raises the recursion limit once)."""
    assert schema.validate(MINIMAL, cel=True) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_typed_model_and_crd_agree(cel_ready: None, body: dict[str, Any]) -> None:
    crd_errors = schema.validate(body, cel=True)
    try:
        ModelDeployment.from_body(body)
        spec_error = None
    except SpecError as exc:
        spec_error = str(exc)
    assert (crd_errors == []) == (spec_error is None), (crd_errors, spec_error)


def test_model_name_defaults_to_the_object_name() -> None:
    assert ModelDeployment.from_body(MINIMAL).model_name == "digits"
    named = copy.deepcopy(MINIMAL)
    named["spec"]["model"]["name"] = "mnist"
    assert ModelDeployment.from_body(named).model_name == "mnist"


def test_trailing_newline_is_rejected_like_re2_does() -> None:
    body = copy.deepcopy(MINIMAL)
    body["spec"]["model"]["version"] = "1.0.0\n"
    with pytest.raises(SpecError, match="label value"):
        ModelDeployment.from_body(body)
    with pytest.raises(SpecError):
        parse_duration("30s\n")
