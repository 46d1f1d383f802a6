"""A ModelDeployment as the operator reads it: metadata, the typed spec, the status.

The API itself (every field, default, bound and rule) is declared once in
`modelship_operator.api.v1alpha1`; this module is the operator-facing view of an object
read from the API server (or a file) and re-exports the API's names the planning code uses.
Pure: no I/O.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    NAME_RULE,
    PHASES,
    PLURAL,
    RESERVED_ENV_PREFIX,
    TRAFFIC_MODES,
    URI_SCHEMES,
    VERSION,
    AnalysisSpec,
    AnalysisStatus,
    AuditSpec,
    AutoscalingSpec,
    BatchingSpec,
    CanaryStatus,
    Condition,
    DriftSpec,
    FeedbackSpec,
    GatewaySpec,
    GpuSpec,
    HistoryEntry,
    ModelDeploymentSpec,
    ModelSpec,
    MonitoringSpec,
    PauseSpec,
    RevisionStatus,
    RolloutSpec,
    RolloutStep,
    SchedulingSpec,
    ServerSpec,
    SpecError,
    Status,
    parse_duration,
    parse_spec,
)

MODEL_FORMATS = ("auto", "torchscript", "torch-export")
PRECISIONS = ("fp32", "fp16", "bf16")
AUDIT_INPUTS = ("none", "digest", "summary")

__all__ = [
    "API_VERSION", "AUDIT_INPUTS", "GROUP", "KIND", "MAX_NAME_LENGTH", "MODEL_FORMATS", "PHASES", "PLURAL",
    "PRECISIONS", "RESERVED_ENV_PREFIX", "TRAFFIC_MODES", "URI_SCHEMES", "VERSION", "AnalysisSpec",
    "AnalysisStatus", "AuditSpec", "AutoscalingSpec", "BatchingSpec", "CanaryStatus", "Condition", "DriftSpec",
    "FeedbackSpec", "GatewaySpec", "GpuSpec", "HistoryEntry", "ModelDeployment", "ModelDeploymentSpec",
    "ModelSpec", "MonitoringSpec", "PauseSpec", "RevisionStatus", "RolloutSpec", "RolloutStep",
    "SchedulingSpec", "ServerSpec", "SpecError", "Status", "parse_duration", "parse_spec", "parse_status",
]


@dataclass(frozen=True)
class ModelDeployment:
    name: str
    namespace: str
    spec: ModelDeploymentSpec
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    status: Status = field(default_factory=Status)
    raw_status: dict[str, Any] = field(default_factory=dict)  # the status exactly as read
    # The spec exactly as read (pod-shaping parts are kept in status); not part of equality:
    # the parsed spec is what the object means.
    raw_spec: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def model_name(self) -> str:
        """The model's protocol name (/v2/models/{name}): spec.model.name, else the object's name."""
        return self.spec.model.name or self.name

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, default_namespace: str = "default") -> ModelDeployment:
        """Parse a ModelDeployment object (as kopf or the API server gives it, or a file)."""
        if not isinstance(body, Mapping):
            raise SpecError("a ModelDeployment must be a mapping")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version is not None and api_version != API_VERSION:
            raise SpecError(f"apiVersion must be {API_VERSION}, not {api_version!r}")
        if kind is not None and kind != KIND:
            raise SpecError(f"kind must be {KIND}, not {kind!r}")
        meta = body.get("metadata") or {}
        if not isinstance(meta, Mapping):
            raise SpecError("metadata must be a mapping")
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise SpecError("metadata.name is required")
        if not NAME_RULE.check(name):
            raise SpecError(f"metadata.name {name!r}: {NAME_RULE.message}")
        if "spec" not in body:
            raise SpecError("spec is required")
        raw_spec = body["spec"]
        raw_status = body.get("status") or {}
        return cls(
            name=name,
            namespace=str(meta.get("namespace") or default_namespace),
            uid=meta.get("uid"),
            generation=meta.get("generation"),
            resource_version=meta.get("resourceVersion"),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            spec=parse_spec(dict(raw_spec) if isinstance(raw_spec, Mapping) else raw_spec),
            status=parse_status(raw_status) if isinstance(raw_status, Mapping) else Status(),
            raw_status=copy.deepcopy(dict(raw_status)) if isinstance(raw_status, Mapping) else {},
            raw_spec=copy.deepcopy(dict(raw_spec)) if isinstance(raw_spec, Mapping) else {},
        )


# ---------------------------------------------------------------------------
# Parsing the status (lenient: never fails a reconcile over our own output)
# ---------------------------------------------------------------------------
def _opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _opt_num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _opt_dict(v: Any) -> dict[str, Any] | None:
    return copy.deepcopy(dict(v)) if isinstance(v, Mapping) else None


def _revision(d: Any) -> RevisionStatus | None:
    if not isinstance(d, Mapping):
        return None
    return RevisionStatus(
        revision=_opt_int(d.get("revision")), hash=_opt_str(d.get("hash")),
        version=_opt_str(d.get("version")), uri=_opt_str(d.get("uri")),
        replicas=_opt_int(d.get("replicas")) or 0, ready_replicas=_opt_int(d.get("readyReplicas")) or 0,
        spec=_opt_dict(d.get("spec")), image=_opt_str(d.get("image")),
    )


def _analysis(d: Any) -> AnalysisStatus | None:
    if not isinstance(d, Mapping):
        return None
    return AnalysisStatus(
        last_time=_opt_str(d.get("lastTime")), requests=_opt_int(d.get("requests")),
        error_rate=_opt_num(d.get("errorRate")), latency_p99_ms=_opt_num(d.get("latencyP99Ms")),
        verdict=_opt_str(d.get("verdict")), failures=_opt_int(d.get("failures")) or 0,
        successes=_opt_int(d.get("successes")) or 0, message=_opt_str(d.get("message")),
    )


def _canary(d: Any) -> CanaryStatus | None:
    if not isinstance(d, Mapping):
        return None
    return CanaryStatus(
        revision=_opt_int(d.get("revision")), hash=_opt_str(d.get("hash")),
        version=_opt_str(d.get("version")), uri=_opt_str(d.get("uri")),
        weight=_opt_int(d.get("weight")) or 0, requested_weight=_opt_int(d.get("requestedWeight")) or 0,
        step=_opt_int(d.get("step")) or 0,
        step_started_at=_opt_str(d.get("stepStartedAt")),
        replicas=_opt_int(d.get("replicas")) or 0, ready_replicas=_opt_int(d.get("readyReplicas")) or 0,
        aborted=d.get("aborted") is True, abort_reason=_opt_str(d.get("abortReason")),
        analysis=_analysis(d.get("analysis")),
    )


def parse_status(raw: Mapping[str, Any]) -> Status:
    """Typed view of ``.status``; missing or malformed parts read as absent."""
    conditions = tuple(
        Condition(
            type=c["type"], status=str(c.get("status", "Unknown")),
            reason=_opt_str(c.get("reason")) or "", message=_opt_str(c.get("message")) or "",
            last_transition_time=_opt_str(c.get("lastTransitionTime")),
            observed_generation=_opt_int(c.get("observedGeneration")),
        )
        for c in raw.get("conditions") or ()
        if isinstance(c, Mapping) and isinstance(c.get("type"), str)
        and c.get("status", "Unknown") in ("True", "False", "Unknown")
    )
    history = tuple(
        HistoryEntry(
            revision=_opt_int(h.get("revision")), hash=_opt_str(h.get("hash")),
            version=_opt_str(h.get("version")), uri=_opt_str(h.get("uri")),
            time=_opt_str(h.get("time")), outcome=_opt_str(h.get("outcome")),
            spec=_opt_dict(h.get("spec")), image=_opt_str(h.get("image")),
        )
        for h in raw.get("history") or ()
        if isinstance(h, Mapping)
    )
    phase = raw.get("phase")
    mode = raw.get("trafficMode")
    return Status(
        observed_generation=_opt_int(raw.get("observedGeneration")),
        phase=phase if phase in PHASES else None,
        conditions=conditions,
        stable=_revision(raw.get("stable")),
        canary=_canary(raw.get("canary")),
        history=history,
        replicas=_opt_int(raw.get("replicas")),
        ready_replicas=_opt_int(raw.get("readyReplicas")),
        selector=_opt_str(raw.get("selector")),
        url=_opt_str(raw.get("url")),
        traffic_mode=mode if mode in ("gateway", "replicas") else None,
    )
