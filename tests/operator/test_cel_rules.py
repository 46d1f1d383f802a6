"""Invalid ModelDeployments are rejected offline by the CRD's own schema and CEL rules
(evaluated with cel-python at the node where each rule sits), and by the typed model."""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelship_operator.api import validate as schema
from modelship_operator.spec import ModelDeployment, SpecError

ROOT = Path(__file__).resolve().parents[2]

# A valid object touching every part of the spec (so every rule has a node to sit on).
BASE: dict[str, Any] = {
    "apiVersion": "modelship.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "fraud", "namespace": "ml"},
    "spec": {
        "model": {"uri": "s3://ml-models/fraud/1.5.0/model.pt2", "version": "1.5.0", "format": "torch-export"},
        "replicas": 4,
        "server": {
            "batching": {"maxBatchSize": 64, "maxDelayMs": 5, "maxQueue": 512, "timeoutMs": 10000},
            "precision": "fp16",
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": 4, "memory": "4Gi"}},
            "env": [{"name": "AWS_REGION", "value": "eu-west-1"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        },
        "gpu": {"count": 1, "resourceName": "nvidia.com/gpu", "type": "NVIDIA-L4"},
        "scheduling": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 8, "targetCPUUtilization": 70},
        "rollout": {
            "traffic": "gateway",
            "gateway": {"parentRefs": [{"name": "inference", "namespace": "gw"}],
                        "hostnames": ["fraud.example.com"], "mirrorPercent": 5},
            "steps": [{"setWeight": 10}, {"pause": {"duration": "2m"}}, {"setWeight": 50}, {"pause": {}}],
            "analysis": {"interval": "30s", "maxErrorRate": 0.01, "maxLatencyP99Ms": 250,
                         "minRequests": 50, "failureLimit": 2},
        },
        "historyLimit": 5,
    },
}

Mutation = Callable[[dict[str, Any]], None]


def setting(path: str, value: Any) -> Mutation:
    """A mutation setting a dotted path (list indexes as numbers) to a value."""
    def mutate(obj: dict[str, Any]) -> None:
        parts = path.split(".")
        node: Any = obj
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        last = parts[-1]
        if value is DELETE:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


DELETE = object()


def both(*mutations: Mutation) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        for m in mutations:
            m(obj)
    return mutate


# (id, mutation, fragment of the CRD's error, fragment of the SpecError)
INVALID: list[tuple[str, Mutation, str, str]] = [
    ("negative-replicas", setting("spec.replicas", -1),
     "spec.replicas: -1 is less than the minimum of 0", "spec.replicas must be at least 0"),
    ("autoscaling-min-above-max", setting("spec.autoscaling.minReplicas", 9),
     "spec.autoscaling: autoscaling.minReplicas must not exceed", "must not exceed autoscaling.maxReplicas"),
    ("autoscaling-without-target", setting("spec.autoscaling.targetCPUUtilization", 0),
     "spec.autoscaling: autoscaling needs a target", "autoscaling needs a target"),
    ("weight-above-100", setting("spec.rollout.steps.0.setWeight", 150),
     "spec.rollout.steps[0].setWeight: 150 is greater than the maximum of 100", "must be at most 100"),
    ("step-with-weight-and-pause", setting("spec.rollout.steps.0", {"setWeight": 10, "pause": {}}),
     "spec.rollout.steps[0]: each rollout step sets exactly one of setWeight, pause, setHeaderRoute or shadow", "exactly one of"),
    ("empty-step", setting("spec.rollout.steps.2", {}),
     "spec.rollout.steps[2]: each rollout step sets exactly one of setWeight, pause, setHeaderRoute or shadow", "exactly one of"),
    ("steps-without-traffic", setting("spec.rollout.steps", [{"setWeight": 0}, {"pause": {}}]),
     "spec.rollout: rollout.steps never gives the canary traffic", "never gives the canary traffic"),
    ("bad-pause-duration", setting("spec.rollout.steps.1.pause.duration", "two minutes"),
     "spec.rollout.steps[1].pause.duration: pause.duration must be a duration", "must be a duration"),
    ("bad-analysis-interval", setting("spec.rollout.analysis.interval", "30"),
     "spec.rollout.analysis.interval: analysis.interval must be a duration", "must be a duration"),
    ("zero-analysis-interval", setting("spec.rollout.analysis.interval", "0s"),
     "analysis.interval must be greater than zero", "greater than zero"),
    ("error-rate-above-one", setting("spec.rollout.analysis.maxErrorRate", 1.5),
     "spec.rollout.analysis.maxErrorRate: 1.5 is greater than the maximum of 1", "must be at most 1"),
    ("ftp-uri", setting("spec.model.uri", "ftp://models/x.pt"),
     "spec.model: model.uri must start with file://, pvc://", "must start with file://"),
    ("uri-without-scheme", setting("spec.model.uri", "/models/x.pt"),
     "model.uri must start with file://", "must start with file://"),
    ("pvc-without-path", setting("spec.model.uri", "pvc://models"),
     "a pvc:// model.uri must have the form pvc://CLAIM/PATH", "pvc://CLAIM/PATH"),
    ("pvc-bad-claim", setting("spec.model.uri", "pvc://Models_1/x.pt"),
     "a pvc:// model.uri must have the form pvc://CLAIM/PATH", "pvc://CLAIM/PATH"),
    ("file-relative-path", setting("spec.model.uri", "file://models/x.pt"),
     "a file:// model.uri must be an absolute path", "absolute path"),
    ("http-without-path", setting("spec.model.uri", "https://models.example.com"),
     "an http(s):// model.uri must name a host and a file path", "host and a file path"),
    ("s3-without-key", setting("spec.model.uri", "s3://ml-models"),
     "an s3:// model.uri must have the form s3://BUCKET/KEY", "s3://BUCKET/KEY"),
    ("empty-version", setting("spec.model.version", ""),
     "spec.model.version: ''", "must not be empty"),
    ("version-not-label-safe", setting("spec.model.version", "1.5.0 beta"),
     "model.version must be usable as a label value", "label value"),
    ("version-too-long", setting("spec.model.version", "1" * 64),
     "spec.model.version: '111", "at most 63 characters"),
    ("missing-version", setting("spec.model.version", DELETE),
     "'version' is a required property", "spec.model.version is required"),
    ("unknown-format", setting("spec.model.format", "onnx"),
     "spec.model.format: 'onnx' is not one of", "must be one of auto, torchscript, torch-export"),
    ("gpu-type-without-count", both(setting("spec.gpu.count", 0), setting("spec.server.precision", "fp32")),
     "spec.gpu: gpu.type selects GPU nodes and needs gpu.count > 0", "gpu.type selects GPU nodes"),
    ("gpu-count-without-resource-name", setting("spec.gpu.resourceName", ""),
     "spec.gpu: gpu.count > 0 needs gpu.resourceName", "needs gpu.resourceName"),
    ("gpu-kubernetes-io-resource", setting("spec.gpu.resourceName", "kubernetes.io/gpu"),
     "gpu.resourceName must be an extended resource", "must be an extended resource"),
    ("too-many-gpus", setting("spec.gpu.count", 17),
     "spec.gpu.count: 17 is greater than the maximum of 16", "must be at most 16"),
    ("fp16-without-gpu",
     both(setting("spec.gpu", {}), setting("spec.server.precision", "bf16")),
     "spec: server.precision fp16 and bf16 need a GPU", "need a GPU"),
    ("unknown-precision", setting("spec.server.precision", "int8"),
     "spec.server.precision: 'int8' is not one of", "must be one of fp32, fp16, bf16"),
    ("gateway-traffic-without-gateway", setting("spec.rollout.gateway", DELETE),
     "spec.rollout: rollout.traffic gateway needs rollout.gateway.parentRefs", "needs rollout.gateway.parentRefs"),
    ("gateway-without-parent", setting("spec.rollout.gateway.parentRefs", []),
     "spec.rollout.gateway.parentRefs: []", "parentRefs needs at least 1 entry"),
    ("gateway-parent-without-name", setting("spec.rollout.gateway.parentRefs", [{"namespace": "gw"}]),
     "'name' is a required property", "parentRefs[0].name is required"),
    ("mirror-with-replica-traffic", setting("spec.rollout.traffic", "replicas"),
     "rollout.gateway.mirrorPercent needs an HTTPRoute", "mirrorPercent needs an HTTPRoute"),
    ("queue-below-batch", setting("spec.server.batching.maxQueue", 16),
     "spec.server.batching: server.batching.maxQueue must be at least maxBatchSize", "maxQueue must be at least"),
    ("delay-not-below-timeout", setting("spec.server.batching.maxDelayMs", 10000),
     "server.batching.maxDelayMs must be less than timeoutMs", "maxDelayMs must be less than timeoutMs"),
    ("reserved-env-name", setting("spec.server.env.0.name", "MODELSHIP_MODEL_URI"),
     "spec.server.env: server.env names starting with MODELSHIP_ are reserved", "are reserved"),
    ("env-value-and-value-from",
     setting("spec.server.env.1", {"name": "T", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s"}}}),
     "spec.server.env[1]: an env entry sets value or valueFrom, not both", "not both"),
    ("duplicate-env", setting("spec.server.env.1", {"name": "AWS_REGION", "value": "us-east-1"}),
     "spec.server.env: duplicate entry with name", "sets 'AWS_REGION' twice"),
    ("bad-quantity", setting("spec.server.resources.limits.memory", "4 GB"),
     "spec.server.resources.limits.memory: '4 GB' does not match", "is not a quantity"),
    ("typo-field", setting("spec.server.batching.maxBatchsize", 8),
     "spec.server.batching: unknown field(s): 'maxBatchsize'", "unknown field 'maxBatchsize'"),
    ("name-starts-with-digit", setting("metadata.name", "1fraud"),
     "<root>: metadata.name must be a DNS-1035 label", "DNS-1035 label"),
    ("name-too-long", setting("metadata.name", "f" * 53),
     "metadata.name must be a DNS-1035 label of at most 52", "at most 52"),
    ("missing-model", setting("spec.model", DELETE),
     "'model' is a required property", "spec.model is required"),
    ("bad-hostname", setting("spec.rollout.gateway.hostnames", ["Fraud Example"]),
     "spec.rollout.gateway.hostnames[0]: 'Fraud Example' does not match", "is not a host name"),
    ("history-limit-too-big", setting("spec.historyLimit", 1000),
     "spec.historyLimit: 1000 is greater than the maximum of 100", "must be at most 100"),
    ("drift-reference-on-pvc", setting("spec.monitoring", {"drift": {"reference": "pvc://models/ref.json"}}),
     "spec.monitoring.drift.reference: monitoring.drift.reference cannot be a pvc:// URI", "cannot be a pvc:// URI"),
    ("zero-drift-interval", setting("spec.monitoring", {"drift": {"interval": "0s"}}),
     "monitoring.drift.interval must be greater than zero", "must be greater than zero"),
    ("zero-feedback-ttl", setting("spec.monitoring", {"feedback": {"ttl": "0.0m"}}),
     "monitoring.feedback.ttl must be greater than zero", "must be greater than zero"),
    ("plain-http-not-allowed", setting("spec.model.uri", "http://minio.storage:9000/models/x.pt"),
     "spec.model: a plain http:// model.uri needs model.allowInsecureHttp: true", "needs model.allowInsecureHttp"),
    ("sha256-not-hex", setting("spec.model.sha256", "z" * 64),
     "spec.model.sha256: 'zzz", "is not 64 hex digits"),
    ("sha256-too-short", setting("spec.model.sha256", "ab" * 31),
     "spec.model.sha256: 'abab", "is not 64 hex digits"),
    ("max-bytes-negative", setting("spec.model.maxBytes", "-1Gi"),
     "spec.model.maxBytes: '-1Gi' does not match", "is not a size"),
    ("max-bytes-zero", setting("spec.model.maxBytes", 0),
     "spec.model.maxBytes: 0 is less than the minimum of 1", "must be at least 1"),
    ("admin-port-is-inference-port", setting("spec.server.adminPort", 8080),
     "spec.server: server.adminPort must differ from the inference port 8080", "must differ from the inference port"),
    ("admin-port-privileged", setting("spec.server.adminPort", 80),
     "spec.server.adminPort: 80 is less than the minimum of 1024", "must be at least 1024"),
    ("zero-passed-windows", setting("spec.rollout.analysis.minPassedWindows", 0),
     "spec.rollout.analysis.minPassedWindows: 0 is less than the minimum of 1", "must be at least 1"),
    ("zero-inconclusive-limit", setting("spec.rollout.analysis.inconclusiveLimit", 0),
     "spec.rollout.analysis.inconclusiveLimit: 0 is less than the minimum of 1", "must be at least 1"),
    ("unknown-inconclusive-policy", setting("spec.rollout.analysis.onInconclusive", "Promote"),
     "spec.rollout.analysis.onInconclusive: 'Promote' is not one of", "must be one of Pause, Abort"),
    ("zero-ready-timeout", setting("spec.rollout.readyTimeout", "0s"),
     "rollout.readyTimeout must be greater than zero", "must be greater than zero"),
    ("bad-ready-timeout", setting("spec.rollout.readyTimeout", "5 minutes"),
     "spec.rollout.readyTimeout: '5 minutes' does not match", "does not match"),
    ("negative-canary-restarts", setting("spec.rollout.maxCanaryRestarts", -1),
     "spec.rollout.maxCanaryRestarts: -1 is less than the minimum of 0", "must be at least 0"),
    ("feedback-budget-not-a-size", setting("spec.monitoring", {"feedback": {"maxBytes": "lots"}}),
     "spec.monitoring.feedback.maxBytes: 'lots' does not match", "is not a size"),
    ("audit-raw-inputs", setting("spec.monitoring", {"audit": {"enabled": True, "inputs": "raw"}}),
     "spec.monitoring.audit.inputs: 'raw' is not one of", "must be one of none, digest, summary"),
    # issue 13: header routes, shadow steps, serving-signal autoscaling
    ("header-route-with-replica-traffic",
     both(setting("spec.rollout.traffic", "replicas"), setting("spec.rollout.gateway.mirrorPercent", DELETE),
          setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [
              {"headerName": "X-Group", "headerValue": {"exact": "beta"}}]}})),
     "spec.rollout: setHeaderRoute steps need an HTTPRoute", "setHeaderRoute steps need an HTTPRoute"),
    ("header-route-two-values",
     setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [
         {"headerName": "X-Group", "headerValue": {"exact": "beta", "prefix": "b"}}]}}),
     "headerValue: a header route value sets exactly one of exact, prefix or regex", "exactly one of exact"),
    ("header-route-header-and-cookie",
     setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [
         {"headerName": "X-Group", "headerValue": {"exact": "b"}, "cookieName": "ab",
          "cookieValue": {"exact": "b"}}]}}),
     "a header route match names exactly one of headerName or cookieName", "exactly one of headerName"),
    ("header-route-name-without-value",
     setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [{"cookieName": "ab"}]}}),
     "cookieName needs cookieValue", "cookieName needs cookieValue"),
    ("header-route-bad-header-name",
     setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [
         {"headerName": "X Group", "headerValue": {"exact": "b"}}]}}),
     "headerName: 'X Group' does not match", "does not match"),
    ("header-route-same-header-twice",  # the Gateway API would ignore the second: fails open
     setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [
         {"headerName": "X-Group", "headerValue": {"exact": "b"}},
         {"headerName": "x-group", "headerValue": {"prefix": "be"}}]}}),
     "a header route names each header once (names are case-insensitive)", "names each header once"),
    ("header-route-two-cookies",
     setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [
         {"cookieName": "ab", "cookieValue": {"exact": "b"}}, {"cookieName": "cd", "cookieValue": {"exact": "d"}}]}}),
     "a header route has at most one cookie condition", "at most one cookie condition"),
    ("header-route-cookie-and-cookie-header",
     setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [
         {"cookieName": "ab", "cookieValue": {"exact": "b"}}, {"headerName": "COOKIE", "headerValue": {"regex": ".+"}}]}}),
     "a header route has at most one cookie condition", "at most one cookie condition"),
    ("header-route-regex-not-re2",  # Python would take the lookahead; RE2 (the API server, Envoy) does not
     setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [
         {"headerName": "X-Group", "headerValue": {"regex": "b(?=eta)"}}]}}),
     "regex must be a valid RE2 regular expression", "valid RE2"),
    ("header-route-regex-unbalanced",
     setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [
         {"cookieName": "ab", "cookieValue": {"regex": "(b|c"}}]}}),
     "regex must be a valid RE2 regular expression", "valid RE2"),
    ("header-routes-more-than-an-httproute-holds",
     setting("spec.rollout.steps", [{"setWeight": 10}] + [
         {"setHeaderRoute": {"name": f"r{i}", "match": [{"headerName": "X-Group", "headerValue": {"exact": str(i)}}]}}
         for i in range(16)]),
     "at most 15 setHeaderRoute steps with matches", "at most 15 setHeaderRoute steps"),
    ("header-route-prefix-too-long",
     setting("spec.rollout.steps.1", {"setHeaderRoute": {"name": "beta", "match": [
         {"headerName": "X-Group", "headerValue": {"prefix": "b" * 1025}}]}}),
     "spec.rollout.steps[1].setHeaderRoute.match[0].headerValue.prefix: 'bbbb", "at most 1024 characters"),
    ("shadow-zero-percent", setting("spec.rollout.steps.1", {"shadow": {"percent": 0, "duration": "1m"}}),
     "spec.rollout.steps[1].shadow.percent: 0 is less than the minimum of 1", "must be at least 1"),
    ("shadow-zero-duration", setting("spec.rollout.steps.1", {"shadow": {"percent": 10, "duration": "0m"}}),
     "shadow.duration must be greater than zero", "must be greater than zero"),
    ("shadow-bad-duration", setting("spec.rollout.steps.1", {"shadow": {"percent": 10, "duration": "ten"}}),
     "shadow.duration must be a duration", "must be a duration"),
    ("shadow-limits-without-shadow", setting("spec.rollout.analysis.maxDisagreement", 0.05),
     "analysis.maxDisagreement and maxMeanAbsDiff are measured during shadow steps", "add a shadow step"),
    ("disagreement-above-one", both(setting("spec.rollout.analysis.maxDisagreement", 2),
                                    setting("spec.rollout.steps.1", {"shadow": {"percent": 10, "duration": "1m"}})),
     "spec.rollout.analysis.maxDisagreement: 2 is greater than the maximum of 1", "must be at most 1"),
    ("inflight-without-target", setting("spec.autoscaling.metric", "inflight"),
     "autoscaling.metric inflight, queue or rps needs autoscaling.target", "needs autoscaling.target"),
    ("unknown-autoscaling-metric", setting("spec.autoscaling.metric", "gpu"),
     "spec.autoscaling.metric: 'gpu' is not one of", "must be one of cpu, inflight, queue, rps"),
    ("zero-autoscaling-target", both(setting("spec.autoscaling.metric", "rps"), setting("spec.autoscaling.target", 0)),
     "spec.autoscaling.target: 0 is less than or equal to the minimum of 0", "must be above 0"),
]

# Valid edge cases: each sits right at a boundary one of the rules draws.
VALID: list[tuple[str, Mutation]] = [
    ("weights-at-bounds", setting("spec.rollout.steps", [{"setWeight": 0}, {"setWeight": 100}])),
    ("no-steps", setting("spec.rollout.steps", [])),
    ("shadow-then-promote", both(setting("spec.rollout.steps", [{"shadow": {"percent": 100, "duration": "5m"}}]),
                                 setting("spec.rollout.analysis.maxDisagreement", 0),
                                 setting("spec.rollout.analysis.maxMeanAbsDiff", 0.5))),
    ("header-route-then-remove", setting("spec.rollout.steps", [
        {"setHeaderRoute": {"name": "beta", "match": [{"headerName": "X-Group", "headerValue": {"regex": "^b.*"}},
                                                      {"cookieName": "ab", "cookieValue": {"prefix": "b"}}]}},
        {"setWeight": 10}, {"setHeaderRoute": {"name": "beta"}}, {"setWeight": 50}])),
    ("header-routes-fifteen-and-removals", setting("spec.rollout.steps", [{"setWeight": 10}] + [
        {"setHeaderRoute": {"name": f"r{i}", "match": [{"headerName": "X-Group", "headerValue": {"exact": str(i)}},
                                                       {"headerName": "X-Other", "headerValue": {"exact": ""}},
                                                       {"cookieName": "ab", "cookieValue": {"regex": "b|c"}}]}}
        for i in range(15)] + [{"setHeaderRoute": {"name": f"r{i}"}} for i in range(15)])),
    ("queue-autoscaling-without-cpu", setting("spec.autoscaling", {
        "minReplicas": 1, "maxReplicas": 4, "metric": "queue", "target": 32, "targetCPUUtilization": 0})),
    ("queue-equals-batch", setting("spec.server.batching.maxQueue", 64)),
    ("delay-just-below-timeout", setting("spec.server.batching.maxDelayMs", 9999)),
    ("min-equals-max", setting("spec.autoscaling.minReplicas", 8)),
    ("metrics-without-cpu", both(setting("spec.autoscaling.targetCPUUtilization", 0),
                                 setting("spec.autoscaling.metrics", [{"type": "Pods", "pods": {}}]))),
    ("zero-replicas", setting("spec.replicas", 0)),
    ("mig-resource", setting("spec.gpu.resourceName", "nvidia.com/mig-1g.10gb")),
    ("pvc-deep-path", setting("spec.model.uri", "pvc://models/fraud/1.5.0/model.pt")),
    ("file-uri", setting("spec.model.uri", "file:///models/digits/model.pt")),
    ("http-with-port", both(setting("spec.model.uri", "http://minio.storage:9000/models/x.pt"),
                            setting("spec.model.allowInsecureHttp", True))),
    ("model-integrity", both(setting("spec.model.sha256", "ab" * 32), setting("spec.model.maxBytes", "2Gi"))),
    ("model-max-bytes-int", setting("spec.model.maxBytes", 1048576)),
    ("analysis-windows", both(setting("spec.rollout.analysis.minPassedWindows", 3),
                              setting("spec.rollout.analysis.inconclusiveLimit", 1),
                              setting("spec.rollout.analysis.onInconclusive", "Abort"))),
    ("canary-health", both(setting("spec.rollout.readyTimeout", "90s"), setting("spec.rollout.maxCanaryRestarts", 0))),
    ("admin-port", setting("spec.server.adminPort", 9091)),
    ("store-budgets", setting("spec.monitoring", {"feedback": {"maxBytes": "1Gi"}, "audit": {"maxBytes": 65536}})),
    ("compound-durations", both(setting("spec.rollout.steps.1.pause.duration", "1h30m"),
                                setting("spec.rollout.analysis.interval", "1.5m"))),
    ("mirror-with-auto-traffic", setting("spec.rollout.traffic", "auto")),
    ("name-52", setting("metadata.name", "f" * 52)),
    ("version-63", setting("spec.model.version", "v" * 63)),
    ("wildcard-hostname", setting("spec.rollout.gateway.hostnames", ["*.example.com"])),
    ("cpu-only-fp32", both(setting("spec.gpu", {}), setting("spec.server.precision", "fp32"))),
    ("minimal", setting("spec", {"model": {"uri": "file:///m/model.pt", "version": "1"}})),
    ("monitoring-full", setting("spec.monitoring", {
        "drift": {"enabled": True, "reference": "https://models.example.com/ref.json", "window": 500,
                  "interval": "1m", "threshold": 0.25},
        "feedback": {"enabled": False, "ttl": "2h", "maxEntries": 1},
        "audit": {"enabled": True, "sampleRate": 0.0, "inputs": "digest", "maskFields": ["client"]}})),
    ("monitoring-empty", setting("spec.monitoring", {})),
]


def mutated(mutation: Mutation) -> dict[str, Any]:
    obj = copy.deepcopy(BASE)
    mutation(obj)
    return obj


def test_base_is_valid() -> None:
    assert schema.validate(BASE, cel=True) == []
    ModelDeployment.from_body(BASE)


@pytest.mark.parametrize("case, mutation, crd_fragment, spec_fragment", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_is_rejected_by_crd_and_spec(case: str, mutation: Mutation, crd_fragment: str,
                                             spec_fragment: str) -> None:
    obj = mutated(mutation)
    errors = schema.validate(obj, cel=True)
    assert any(crd_fragment in e for e in errors), errors
    with pytest.raises(SpecError) as info:
        ModelDeployment.from_body(obj)
    assert spec_fragment in str(info.value)


@pytest.mark.parametrize("case, mutation", VALID, ids=[c[0] for c in VALID])
def test_valid_edge_cases_pass(case: str, mutation: Mutation) -> None:
    obj = mutated(mutation)
    assert schema.validate(obj, cel=True) == []
    ModelDeployment.from_body(obj)


def test_ten_kinds_of_mistake_come_from_cel_rules_alone() -> None:
    """The cross-field mistakes pass the structural schema and are caught by CEL alone."""
    root = schema.openapi_schema()
    caught = []
    for case, mutation, fragment, _ in INVALID:
        obj = schema.apply_defaults(mutated(mutation), root)
        if schema.schema_errors(obj, root) or schema.list_map_errors(obj, root):
            continue  # a structural mistake
        assert any(fragment in e for e in _cel_only(mutated(mutation))), case
        caught.append(case)
    assert len(caught) >= 10, caught


def _cel_only(obj: dict[str, Any]) -> list[str]:
    return schema.cel_errors(schema.apply_defaults(obj, schema.openapi_schema()), schema.openapi_schema())


def _all_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        rules.extend(node.get("x-kubernetes-validations") or ())
        for sub in (node.get("properties") or {}).values():
            walk(sub)
        if isinstance(node.get("items"), dict):
            walk(node["items"])

    walk(schema.openapi_schema())
    return rules


def test_every_cel_rule_is_exercised() -> None:
    """No dead rules: each rule of the CRD is the one that fails for some invalid case."""
    hit: set[str] = set()
    for _, mutation, _, _ in INVALID:
        for error in _cel_only(mutated(mutation)):
            # a rule whose evaluation errors rejects the object too (as on the API server: `regex`)
            hit.add(error.split(": ", 1)[1].split(" (rule could not be evaluated", 1)[0])
    unexercised = [r["message"] for r in _all_rules() if r["message"] not in hit]
    assert unexercised == []


def test_rules_see_the_node_they_sit_on() -> None:
    """Evaluate single rules directly with `self` bound to the node value."""
    rules = {r["message"]: r["rule"] for r in _all_rules()}
    step_rule = rules["each rollout step sets exactly one of setWeight, pause, setHeaderRoute or shadow"]
    assert schema.eval_rule(step_rule, {"setWeight": 10}) is True
    assert schema.eval_rule(step_rule, {"pause": {"duration": "1m"}}) is True
    assert schema.eval_rule(step_rule, {"setWeight": 10, "pause": {}}) is False
    assert schema.eval_rule(step_rule, {}) is False
    batching = schema.openapi_schema()["properties"]["spec"]["properties"]["server"]["properties"]["batching"]
    defaults = schema.apply_defaults({}, batching)
    for rule in batching["x-kubernetes-validations"]:
        assert schema.eval_rule(rule["rule"], defaults) is True
    assert schema.eval_rule(batching["x-kubernetes-validations"][0]["rule"], {**defaults, "maxQueue": 1}) is False


def test_defaults_are_applied_before_rules() -> None:
    """Rules read defaulted fields (as the API server does): an autoscaling block with only
    maxReplicas: 1 passes because minReplicas defaults to 1; maxReplicas 0 fails the schema."""
    obj = mutated(setting("spec.autoscaling", {"maxReplicas": 1}))
    assert schema.validate(obj, cel=True) == []
    obj = mutated(setting("spec.autoscaling", {"maxReplicas": 0}))
    assert any("less than the minimum of 1" in e for e in schema.validate(obj, cel=True))


def test_without_cel_the_typed_model_checks_cross_field_rules() -> None:
    obj = mutated(setting("spec.autoscaling.minReplicas", 9))
    errors = schema.validate(obj, cel=False)
    assert errors and "must not exceed" in errors[0]


def test_api_identity_is_checked() -> None:
    assert any("apiVersion" in e for e in schema.validate({**BASE, "apiVersion": "modelship.dev/v1"}))
    assert any("kind" in e for e in schema.validate({**BASE, "kind": "Deployment"}))
    assert schema.validate([1, 2]) == ["<root>: a ModelDeployment must be a mapping"]


def test_an_example_file_round_trip() -> None:
    """validate() takes what yaml.safe_load gives for a real manifest."""
    obj = yaml.safe_load((ROOT / "examples" / "canary-gateway.yaml").read_text())
    obj["spec"]["rollout"]["steps"].append({"setWeight": 20, "pause": {"duration": "1m"}})
    errors = schema.validate(obj, cel=True)
    assert errors == ["spec.rollout.steps[6]: each rollout step sets exactly one of setWeight, pause, setHeaderRoute or shadow"]


def test_without_jsonschema_the_typed_model_gives_the_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_jsonschema(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "jsonschema":
            raise ImportError("no jsonschema here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jsonschema)
    assert schema.validate(BASE) == []
    errors = schema.validate(mutated(setting("spec.server.batching.maxBatchsize", 8)))
    assert errors == ["spec.server.batching: unknown field 'maxBatchsize'"]


@pytest.mark.parametrize("path, value", [
    ("spec.model.version", "1.5.0\n"),  # a CEL matches() rule
    ("spec.gpu.type", "NVIDIA-L4\n"),  # an OpenAPI pattern
    ("spec.rollout.steps.1.pause.duration", "2m\n"),
])
def test_trailing_newline_fails_like_re2(path: str, value: str) -> None:
    """Python's `$` matches before a trailing newline, the API server's RE2 does not."""
    assert schema.validate(mutated(setting(path, value)), cel=True) != []
    assert schema.re2_anchored("^a$") == "^a\\Z" and schema.re2_anchored("a\\$") == "a\\$"
