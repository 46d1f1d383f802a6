"""Typed, frozen model of a ModelDeployment, parsed once from the object's body.

Mirrors crds/modeldeployments.modelship.dev.yaml: snake_case attributes for the CRD's
camelCase fields, the CRD's defaults applied here too (so an offline render of a file
equals the render of the defaulted object an API server stores), and every rule the CRD
enforces re-checked so bad input fails with a `SpecError` instead of a broken manifest.
tests/operator/test_spec.py keeps this module and the CRD in step.

Kubernetes objects passed through unchanged (resources, env, tolerations, affinity,
autoscaling metrics, Gateway parentRefs) stay plain dicts in their camelCase API form.
Pure: no I/O.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GROUP = "modelship.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

URI_SCHEMES = ("file", "pvc", "http", "https", "s3")
MODEL_FORMATS = ("auto", "torchscript", "torch-export")
PRECISIONS = ("fp32", "fp16", "bf16")
TRAFFIC_MODES = ("auto", "gateway", "replicas")
PHASES = ("Pending", "Progressing", "Paused", "Healthy", "Degraded", "Failed")
# Env names the operator sets on the server container; users may not override them.
RESERVED_ENV_PREFIX = "MODELSHIP_"


class SpecError(ValueError):
    """The ModelDeployment is invalid; the message says which field and why."""


# ---------------------------------------------------------------------------
# Patterns (the same as the CRD's patterns and CEL rules). Used with fullmatch: in Python
# `$` also matches before a trailing newline, in the API server's RE2 it does not.
# ---------------------------------------------------------------------------
_DURATION_RE = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MODEL_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
_PVC_URI_RE = re.compile(r"^pvc://[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/[^/]+(/[^/]+)*$")
_FILE_URI_RE = re.compile(r"^file:///[^/]+(/[^/]+)*$")
_HTTP_URI_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[^ ]+$")
_S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^ ]+$")
_RESOURCE_NAME_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
)
_QUANTITY_RE = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_HOSTNAME_RE = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_NAME_LENGTH = 52


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration string such as ``30s``, ``1h30m`` or ``500ms``."""
    if not isinstance(text, str) or not _DURATION_RE.fullmatch(text):
        raise SpecError(f"{text!r} is not a duration such as 30s, 2m or 1h30m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text))


# ---------------------------------------------------------------------------
# Spec dataclasses
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    uri: str
    version: str
    format: str = "auto"
    name: str | None = None  # None: the ModelDeployment's name

    @property
    def scheme(self) -> str:
        """``file``, ``pvc``, ``http``, ``https`` or ``s3``."""
        return self.uri.split("://", 1)[0]

    @property
    def pvc_claim(self) -> str | None:
        """The claim of a ``pvc://CLAIM/PATH`` URI, else None."""
        return self.uri[len("pvc://"):].split("/", 1)[0] if self.scheme == "pvc" else None

    @property
    def pvc_path(self) -> str | None:
        """The path inside the claim of a ``pvc://CLAIM/PATH`` URI (no leading slash), else None."""
        return self.uri[len("pvc://"):].split("/", 1)[1] if self.scheme == "pvc" else None

    @property
    def file_path(self) -> str | None:
        """The absolute path of a ``file://`` URI, else None."""
        return self.uri[len("file://"):] if self.scheme == "file" else None

    @property
    def needs_download(self) -> bool:
        """True when an init container must fetch the file (http, https, s3)."""
        return self.scheme in ("http", "https", "s3")


@dataclass(frozen=True)
class BatchingSpec:
    max_batch_size: int = 32
    max_delay_ms: int = 5
    max_queue: int = 2048  # rows, not requests (the server counts its queue in rows)
    timeout_ms: int = 30000


@dataclass(frozen=True)
class ServerSpec:
    image: str | None = None  # None: the operator's MODELSHIP_SERVER_IMAGE
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    max_batch_rows: int = 1024
    precision: str = "fp32"
    threads: int | None = None  # None: derived from the pod's CPU
    resources: dict[str, Any] = field(default_factory=dict)  # core ResourceRequirements
    env: tuple[dict[str, Any], ...] = ()  # core EnvVar


@dataclass(frozen=True)
class GpuSpec:
    count: int = 0
    resource_name: str = "nvidia.com/gpu"
    type: str | None = None


@dataclass(frozen=True)
class SchedulingSpec:
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] = field(default_factory=dict)
    priority_class_name: str | None = None


@dataclass(frozen=True)
class AutoscalingSpec:
    max_replicas: int
    min_replicas: int = 1
    target_cpu_utilization: int = 70  # 0: no CPU target
    metrics: tuple[dict[str, Any], ...] = ()  # autoscaling/v2 MetricSpec


@dataclass(frozen=True)
class PauseSpec:
    duration: str | None = None  # None: wait for a manual promote

    @property
    def seconds(self) -> float | None:
        return None if self.duration is None else parse_duration(self.duration)


@dataclass(frozen=True)
class RolloutStep:
    set_weight: int | None = None
    pause: PauseSpec | None = None


@dataclass(frozen=True)
class AnalysisSpec:
    interval: str = "30s"
    max_error_rate: float = 0.01
    max_latency_p99_ms: float | None = None  # None: latency is not checked
    min_requests: int = 50
    failure_limit: int = 2

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval)


@dataclass(frozen=True)
class GatewaySpec:
    parent_refs: tuple[dict[str, Any], ...]  # Gateway API ParentReference; at least one
    hostnames: tuple[str, ...] = ()
    mirror_percent: int | None = None


@dataclass(frozen=True)
class RolloutSpec:
    steps: tuple[RolloutStep, ...] = ()
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    traffic: str = "auto"
    gateway: GatewaySpec | None = None


AUDIT_INPUTS = ("none", "digest", "summary")


@dataclass(frozen=True)
class DriftSpec:
    enabled: bool = True
    reference: str | None = None  # None: reference_profile.json next to the model
    window: int = 1000
    interval: str = "30s"
    threshold: float = 0.2


@dataclass(frozen=True)
class FeedbackSpec:
    enabled: bool = True
    ttl: str = "1h"
    max_entries: int = 100000


@dataclass(frozen=True)
class AuditSpec:
    enabled: bool = False
    sample_rate: float = 1.0
    inputs: str = "none"
    mask_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class MonitoringSpec:
    drift: DriftSpec = field(default_factory=DriftSpec)
    feedback: FeedbackSpec = field(default_factory=FeedbackSpec)
    audit: AuditSpec = field(default_factory=AuditSpec)


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model: ModelSpec
    replicas: int = 1
    server: ServerSpec = field(default_factory=ServerSpec)
    gpu: GpuSpec = field(default_factory=GpuSpec)
    scheduling: SchedulingSpec = field(default_factory=SchedulingSpec)
    autoscaling: AutoscalingSpec | None = None  # None: no HorizontalPodAutoscaler
    rollout: RolloutSpec = field(default_factory=RolloutSpec)
    history_limit: int = 10
    monitoring: MonitoringSpec | None = None  # None: the server's own defaults


# ---------------------------------------------------------------------------
# Status dataclasses (read leniently: status is written by the operator itself)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


@dataclass(frozen=True)
class RevisionStatus:
    revision: int | None = None
    hash: str | None = None
    version: str | None = None
    uri: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    spec: dict[str, Any] | None = None  # the pod-shaping spec the revision was made from
    image: str | None = None


@dataclass(frozen=True)
class AnalysisStatus:
    last_time: str | None = None
    requests: int | None = None
    error_rate: float | None = None
    latency_p99_ms: float | None = None
    verdict: str | None = None  # Pass | Fail | Inconclusive
    failures: int = 0
    successes: int = 0
    message: str | None = None


@dataclass(frozen=True)
class CanaryStatus:
    revision: int | None = None
    hash: str | None = None
    version: str | None = None
    uri: str | None = None
    weight: int = 0  # effective: the share of traffic the canary's ready pods carry
    requested_weight: int = 0  # what the current step asks for
    step: int = 0  # 0-based index into rollout.steps; len(steps) = all done
    step_started_at: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    aborted: bool = False
    abort_reason: str | None = None
    analysis: AnalysisStatus | None = None


@dataclass(frozen=True)
class HistoryEntry:
    revision: int | None = None
    hash: str | None = None
    version: str | None = None
    uri: str | None = None
    time: str | None = None
    outcome: str | None = None  # Superseded | RolledBack | Replaced | Cancelled | Aborted
    spec: dict[str, Any] | None = None  # the pod-shaping spec (what rollback restores)
    image: str | None = None


@dataclass(frozen=True)
class Status:
    observed_generation: int | None = None
    phase: str | None = None
    conditions: tuple[Condition, ...] = ()
    stable: RevisionStatus | None = None
    canary: CanaryStatus | None = None
    history: tuple[HistoryEntry, ...] = ()
    replicas: int | None = None
    ready_replicas: int | None = None
    selector: str | None = None
    url: str | None = None
    traffic_mode: str | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


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
        if not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
            raise SpecError(
                f"metadata.name {name!r} must be a DNS-1035 label of at most {MAX_NAME_LENGTH} "
                "characters (lower-case letters, digits and '-', starting with a letter)"
            )
        if "spec" not in body:
            raise SpecError("spec is required")
        raw_status = body.get("status") or {}
        return cls(
            name=name,
            namespace=str(meta.get("namespace") or default_namespace),
            uid=meta.get("uid"),
            generation=meta.get("generation"),
            resource_version=meta.get("resourceVersion"),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            spec=parse_spec(body["spec"]),
            status=parse_status(raw_status) if isinstance(raw_status, Mapping) else Status(),
            raw_status=copy.deepcopy(dict(raw_status)) if isinstance(raw_status, Mapping) else {},
            raw_spec=copy.deepcopy(dict(body["spec"])) if isinstance(body["spec"], Mapping) else {},
        )


# ---------------------------------------------------------------------------
# Parsing the spec
# ---------------------------------------------------------------------------
class _Obj:
    """Reads one object of the spec: typed getters that name the field path on error
    and a final check that no unknown field was given (kubectl's strict validation)."""

    def __init__(self, data: Any, path: str, *, optional: bool = True) -> None:
        if data is None and optional:
            data = {}
        if not isinstance(data, Mapping):
            raise SpecError(f"{path} must be an object")
        self.data, self.path, self._seen = data, path, set()  # type: ignore[var-annotated]

    def _get(self, key: str) -> Any:
        self._seen.add(key)
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def int(self, key: str, default: int | None, lo: int | None = None, hi: int | None = None,
            *, required: bool = False) -> int | None:
        v = self._get(key)
        if v is None:
            if required:
                raise SpecError(f"{self.path}.{key} is required")
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise SpecError(f"{self.path}.{key} must be an integer, not {v!r}")
        if lo is not None and v < lo:
            raise SpecError(f"{self.path}.{key} must be at least {lo}, not {v}")
        if hi is not None and v > hi:
            raise SpecError(f"{self.path}.{key} must be at most {hi}, not {v}")
        return v

    def num(self, key: str, default: float | None, lo: float, hi: float | None = None,
            *, exclusive_lo: bool = False) -> float | None:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"{self.path}.{key} must be a number, not {v!r}")
        if v < lo or (exclusive_lo and v == lo):
            raise SpecError(f"{self.path}.{key} must be {'above' if exclusive_lo else 'at least'} {lo}, not {v}")
        if hi is not None and v > hi:
            raise SpecError(f"{self.path}.{key} must be at most {hi}, not {v}")
        return float(v)

    def str(self, key: str, default: str | None, *, required: bool = False, enum: Sequence[str] = (),
            max_len: int | None = None, min_len: int = 0, pattern: re.Pattern[str] | None = None,
            what: str = "") -> str | None:
        v = self._get(key)
        if v is None:
            if required:
                raise SpecError(f"{self.path}.{key} is required")
            return default
        if not isinstance(v, str):
            raise SpecError(f"{self.path}.{key} must be a string, not {v!r}")
        if enum and v not in enum:
            raise SpecError(f"{self.path}.{key} must be one of {', '.join(enum)}, not {v!r}")
        if len(v) < min_len:
            raise SpecError(f"{self.path}.{key} must not be empty")
        if max_len is not None and len(v) > max_len:
            raise SpecError(f"{self.path}.{key} must be at most {max_len} characters")
        if pattern is not None and not pattern.fullmatch(v):
            raise SpecError(f"{self.path}.{key} {v!r} is invalid" + (f": {what}" if what else ""))
        return v

    def obj(self, key: str) -> _Obj | None:
        v = self._get(key)
        return None if v is None else _Obj(v, f"{self.path}.{key}", optional=False)

    def list(self, key: str, max_items: int) -> list[Any]:
        v = self._get(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise SpecError(f"{self.path}.{key} must be a list")
        if len(v) > max_items:
            raise SpecError(f"{self.path}.{key} has {len(v)} entries; at most {max_items} are allowed")
        return v

    def passthrough(self, key: str) -> dict[str, Any]:
        v = self._get(key)
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise SpecError(f"{self.path}.{key} must be an object")
        return copy.deepcopy(dict(v))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise SpecError(f"{self.path} has unknown field(s): {', '.join(map(repr, unknown))}")


def parse_spec(raw: Any) -> ModelDeploymentSpec:
    """Parse and default ``.spec``; raises SpecError for what the CRD would reject."""
    s = _Obj(raw, "spec", optional=False)
    model_obj = s.obj("model")
    if model_obj is None:
        raise SpecError("spec.model is required")
    model = _parse_model(model_obj)
    replicas = s.int("replicas", 1, 0, 1000)
    server = _parse_server(s.obj("server") or _Obj({}, "spec.server"))
    gpu = _parse_gpu(s.obj("gpu") or _Obj({}, "spec.gpu"))
    scheduling = _parse_scheduling(s.obj("scheduling") or _Obj({}, "spec.scheduling"))
    auto_obj = s.obj("autoscaling")
    autoscaling = _parse_autoscaling(auto_obj) if auto_obj is not None else None
    rollout = _parse_rollout(s.obj("rollout") or _Obj({}, "spec.rollout"))
    history_limit = s.int("historyLimit", 10, 0, 100)
    mon_obj = s.obj("monitoring")
    monitoring = _parse_monitoring(mon_obj) if mon_obj is not None else None
    s.done()
    if server.precision != "fp32" and gpu.count == 0:
        raise SpecError(
            f"server.precision {server.precision} needs a GPU: set gpu.count > 0 or use precision fp32"
        )
    return ModelDeploymentSpec(
        model=model, replicas=replicas, server=server, gpu=gpu, scheduling=scheduling,  # type: ignore[arg-type]
        autoscaling=autoscaling, rollout=rollout, history_limit=history_limit,  # type: ignore[arg-type]
        monitoring=monitoring,
    )


def _parse_model(o: _Obj) -> ModelSpec:
    uri = o.str("uri", None, required=True, min_len=1, max_len=2048)
    assert uri is not None
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in URI_SCHEMES:
        raise SpecError("model.uri must start with file://, pvc://, http://, https:// or s3://")
    checks = {
        "pvc": (_PVC_URI_RE, "a pvc:// model.uri must have the form pvc://CLAIM/PATH: "
                             "a PersistentVolumeClaim name and a relative path inside it"),
        "file": (_FILE_URI_RE, "a file:// model.uri must be an absolute path inside the server image, "
                               "e.g. file:///models/digits/model.pt"),
        "http": (_HTTP_URI_RE, "an http(s):// model.uri must name a host and a file path, "
                               "e.g. https://models.example.com/digits/model.pt"),
        "s3": (_S3_URI_RE, "an s3:// model.uri must have the form s3://BUCKET/KEY"),
    }
    regex, message = checks["http" if scheme == "https" else scheme]
    if not regex.fullmatch(uri):
        raise SpecError(f"{message} (got {uri!r})")
    version = o.str("version", None, required=True, min_len=1, max_len=63, pattern=_LABEL_VALUE_RE,
                    what="model.version must be usable as a label value: letters, digits, '-', '_' "
                         "and '.', starting and ending with a letter or digit")
    fmt = o.str("format", "auto", enum=MODEL_FORMATS)
    name = o.str("name", None, max_len=63, pattern=_MODEL_NAME_RE,
                 what="lower-case letters, digits, '-', '_' and '.'")
    o.done()
    return ModelSpec(uri=uri, version=version, format=fmt, name=name)  # type: ignore[arg-type]


def _parse_quantities(o: _Obj, key: str) -> dict[str, Any]:
    values = o.passthrough(key)
    for rname, q in values.items():
        if isinstance(q, bool) or not isinstance(q, (int, str)) or not _QUANTITY_RE.fullmatch(str(q)):
            raise SpecError(f"{o.path}.{key}.{rname} {q!r} is not a quantity such as 500m, 2 or 4Gi")
    return values


def _parse_server(o: _Obj) -> ServerSpec:
    image = o.str("image", None, max_len=512)
    b = o.obj("batching") or _Obj({}, f"{o.path}.batching")
    batching = BatchingSpec(
        max_batch_size=b.int("maxBatchSize", 32, 1, 4096),  # type: ignore[arg-type]
        max_delay_ms=b.int("maxDelayMs", 5, 0, 10000),  # type: ignore[arg-type]
        max_queue=b.int("maxQueue", 2048, 1, 1000000),  # type: ignore[arg-type]
        timeout_ms=b.int("timeoutMs", 30000, 1, 600000),  # type: ignore[arg-type]
    )
    b.done()
    if batching.max_queue < batching.max_batch_size:
        raise SpecError("server.batching.maxQueue must be at least maxBatchSize, or a full batch could never form")
    if batching.max_delay_ms >= batching.timeout_ms:
        raise SpecError("server.batching.maxDelayMs must be less than timeoutMs, "
                        "or requests would time out while waiting for a batch")
    max_batch_rows = o.int("maxBatchRows", 1024, 1, 1000000)
    precision = o.str("precision", "fp32", enum=PRECISIONS)
    threads = o.int("threads", None, 1, 256)
    r = o.obj("resources") or _Obj({}, f"{o.path}.resources")
    resources = {k: _parse_quantities(r, k) for k in ("requests", "limits") if r.has(k)}
    r.done()
    env = _parse_env(o.list("env", 64), f"{o.path}.env")
    o.done()
    return ServerSpec(image=image, batching=batching, max_batch_rows=max_batch_rows,  # type: ignore[arg-type]
                      precision=precision, threads=threads, resources=resources, env=env)  # type: ignore[arg-type]


def _parse_env(items: list[Any], path: str) -> tuple[dict[str, Any], ...]:
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        e = _Obj(item, f"{path}[{i}]", optional=False)
        name = e.str("name", None, required=True, min_len=1, max_len=256, pattern=_ENV_NAME_RE,
                     what="not a valid environment variable name")
        assert name is not None
        if name.startswith(RESERVED_ENV_PREFIX):
            raise SpecError(f"server.env names starting with {RESERVED_ENV_PREFIX} are reserved: "
                            f"the operator sets them from the spec (got {name!r})")
        if name in seen:
            raise SpecError(f"{path} sets {name!r} twice")
        seen.add(name)
        entry: dict[str, Any] = {"name": name}
        value = e.str("value", None, max_len=32768)
        value_from = e.passthrough("valueFrom") if e.has("valueFrom") else None
        e.done()
        if value is not None and value_from is not None:
            raise SpecError("an env entry sets value or valueFrom, not both")
        if value is not None:
            entry["value"] = value
        if value_from is not None:
            entry["valueFrom"] = value_from
        out.append(entry)
    return tuple(out)


def _parse_gpu(o: _Obj) -> GpuSpec:
    count = o.int("count", 0, 0, 16)
    resource_name = o.str("resourceName", "nvidia.com/gpu", max_len=253, pattern=_RESOURCE_NAME_RE,
                          what="an extended resource name such as nvidia.com/gpu")
    gpu_type = o.str("type", None, min_len=1, max_len=63, pattern=_LABEL_VALUE_RE,
                     what="must be usable as a label value")
    o.done()
    assert count is not None and resource_name is not None
    if count > 0 and not resource_name:
        raise SpecError("gpu.count > 0 needs gpu.resourceName (e.g. nvidia.com/gpu or a MIG resource "
                        "such as nvidia.com/mig-1g.10gb)")
    if gpu_type is not None and count == 0:
        raise SpecError("gpu.type selects GPU nodes and needs gpu.count > 0")
    if resource_name.startswith(("kubernetes.io/", "requests.")):
        raise SpecError("gpu.resourceName must be an extended resource such as nvidia.com/gpu, "
                        "not a kubernetes.io/ resource")
    return GpuSpec(count=count, resource_name=resource_name, type=gpu_type)


_TOLERATION_FIELDS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def _parse_scheduling(o: _Obj) -> SchedulingSpec:
    node_selector = o.passthrough("nodeSelector")
    for k, v in node_selector.items():
        if not isinstance(v, str):
            raise SpecError(f"scheduling.nodeSelector[{k!r}] must be a string, not {v!r}")
    tolerations = []
    for i, t in enumerate(o.list("tolerations", 32)):
        path = f"{o.path}.tolerations[{i}]"
        if not isinstance(t, Mapping):
            raise SpecError(f"{path} must be an object")
        unknown = set(t) - _TOLERATION_FIELDS
        if unknown:
            raise SpecError(f"{path} has unknown field(s): {', '.join(sorted(map(repr, unknown)))}")
        tt = _Obj(t, path)
        tt.str("operator", None, enum=("Exists", "Equal"))
        tt.str("effect", None, enum=("NoSchedule", "PreferNoSchedule", "NoExecute"))
        tt.str("key", None)
        tt.str("value", None)
        tt.int("tolerationSeconds", None)
        tolerations.append(copy.deepcopy(dict(t)))
    affinity = o.passthrough("affinity")
    priority = o.str("priorityClassName", None, max_len=253)
    o.done()
    return SchedulingSpec(node_selector=node_selector, tolerations=tuple(tolerations),
                          affinity=affinity, priority_class_name=priority)


def _parse_autoscaling(o: _Obj) -> AutoscalingSpec:
    min_r = o.int("minReplicas", 1, 1, 1000)
    max_r = o.int("maxReplicas", None, 1, 1000, required=True)
    cpu = o.int("targetCPUUtilization", 70, 0, 100)
    metrics = []
    for i, m in enumerate(o.list("metrics", 16)):
        if not isinstance(m, Mapping):
            raise SpecError(f"{o.path}.metrics[{i}] must be an object (an autoscaling/v2 MetricSpec)")
        metrics.append(copy.deepcopy(dict(m)))
    o.done()
    assert min_r is not None and max_r is not None
    if min_r > max_r:
        raise SpecError(f"autoscaling.minReplicas ({min_r}) must not exceed autoscaling.maxReplicas ({max_r})")
    if cpu == 0 and not metrics:
        raise SpecError("autoscaling needs a target: targetCPUUtilization > 0 or at least one entry in metrics")
    return AutoscalingSpec(min_replicas=min_r, max_replicas=max_r, target_cpu_utilization=cpu,  # type: ignore[arg-type]
                           metrics=tuple(metrics))


_PARENT_REF_FIELDS = {"group", "kind", "namespace", "name", "sectionName", "port"}


def _parse_rollout(o: _Obj) -> RolloutSpec:
    steps = []
    for i, raw in enumerate(o.list("steps", 32)):
        st = _Obj(raw, f"{o.path}.steps[{i}]", optional=False)
        weight = st.int("setWeight", None, 0, 100)
        pause_obj = st.obj("pause")
        st.done()
        pause = None
        if pause_obj is not None:
            duration = pause_obj.str("duration", None, max_len=32)
            pause_obj.done()
            if duration is not None and not _DURATION_RE.fullmatch(duration):
                raise SpecError(f"{o.path}.steps[{i}].pause.duration must be a duration such as 30s, 2m or "
                                f"1h30m (got {duration!r})")
            pause = PauseSpec(duration=duration)
        if (weight is None) == (pause is None):
            raise SpecError(f"each rollout step sets exactly one of setWeight or pause (step {i})")
        steps.append(RolloutStep(set_weight=weight, pause=pause))
    if steps and not any(s.set_weight for s in steps):
        raise SpecError("rollout.steps never gives the canary traffic: add a setWeight step above 0")

    a = o.obj("analysis") or _Obj({}, f"{o.path}.analysis")
    interval = a.str("interval", "30s", max_len=32)
    assert interval is not None
    if not _DURATION_RE.fullmatch(interval):
        raise SpecError(f"analysis.interval must be a duration such as 30s or 1m (got {interval!r})")
    if parse_duration(interval) <= 0:
        raise SpecError("analysis.interval must be greater than zero")
    analysis = AnalysisSpec(
        interval=interval,
        max_error_rate=a.num("maxErrorRate", 0.01, 0.0, 1.0),  # type: ignore[arg-type]
        max_latency_p99_ms=a.num("maxLatencyP99Ms", None, 0.0, exclusive_lo=True),
        min_requests=a.int("minRequests", 50, 0),  # type: ignore[arg-type]
        failure_limit=a.int("failureLimit", 2, 1, 100),  # type: ignore[arg-type]
    )
    a.done()
    traffic = o.str("traffic", "auto", enum=TRAFFIC_MODES)
    g = o.obj("gateway")
    gateway = None
    if g is not None:
        refs = []
        for i, ref in enumerate(g.list("parentRefs", 16)):
            r = _Obj(ref, f"{g.path}.parentRefs[{i}]", optional=False)
            r.str("name", None, required=True, min_len=1, max_len=253)
            for key, limit in (("group", 253), ("kind", 63), ("namespace", 63), ("sectionName", 253)):
                r.str(key, None, max_len=limit)
            r.int("port", None, 1, 65535)
            r.done()
            refs.append(copy.deepcopy(dict(ref)))
        hostnames = []
        for i, h in enumerate(g.list("hostnames", 16)):
            if not isinstance(h, str) or len(h) > 253 or not _HOSTNAME_RE.fullmatch(h):
                raise SpecError(f"{g.path}.hostnames[{i}] {h!r} is not a host name")
            hostnames.append(h)
        mirror = g.int("mirrorPercent", None, 0, 100)
        g.done()
        if not refs:
            raise SpecError("rollout.gateway.parentRefs must name at least one Gateway "
                            "(the Gateway the HTTPRoute attaches to)")
        gateway = GatewaySpec(parent_refs=tuple(refs), hostnames=tuple(hostnames), mirror_percent=mirror)
    o.done()
    if traffic == "gateway" and gateway is None:
        raise SpecError("rollout.traffic gateway needs rollout.gateway.parentRefs "
                        "(the Gateway the HTTPRoute attaches to)")
    if gateway is not None and gateway.mirror_percent is not None and traffic == "replicas":
        raise SpecError("rollout.gateway.mirrorPercent needs an HTTPRoute: use traffic gateway or auto, not replicas")
    return RolloutSpec(steps=tuple(steps), analysis=analysis, traffic=traffic, gateway=gateway)  # type: ignore[arg-type]


_FIELD_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _bool(o: _Obj, key: str, default: bool) -> bool:
    v = o._get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise SpecError(f"{o.path}.{key} must be true or false, not {v!r}")
    return v


def _duration(o: _Obj, key: str, default: str) -> str:
    v = o.str(key, default, max_len=32)
    assert v is not None
    if not _DURATION_RE.fullmatch(v) or parse_duration(v) <= 0:
        raise SpecError(f"{o.path}.{key} must be a positive duration such as 30s, 5m or 1h (got {v!r})")
    return v


def _parse_monitoring(o: _Obj) -> MonitoringSpec:
    d = o.obj("drift") or _Obj({}, f"{o.path}.drift")
    reference = d.str("reference", None, min_len=1, max_len=2048)
    if reference is not None and reference.startswith("pvc://"):
        raise SpecError("monitoring.drift.reference is a path next to the model, an absolute path, "
                        "or an http(s):// or s3:// URI; a pvc:// URI is not mounted")
    drift = DriftSpec(
        enabled=_bool(d, "enabled", True), reference=reference,
        window=d.int("window", 1000, 1, 1000000),  # type: ignore[arg-type]
        interval=_duration(d, "interval", "30s"),
        threshold=d.num("threshold", 0.2, 0.0, exclusive_lo=True),  # type: ignore[arg-type]
    )
    d.done()
    f = o.obj("feedback") or _Obj({}, f"{o.path}.feedback")
    feedback = FeedbackSpec(
        enabled=_bool(f, "enabled", True), ttl=_duration(f, "ttl", "1h"),
        max_entries=f.int("maxEntries", 100000, 1, 10000000),  # type: ignore[arg-type]
    )
    f.done()
    a = o.obj("audit") or _Obj({}, f"{o.path}.audit")
    enabled = _bool(a, "enabled", False)
    sample_rate = a.num("sampleRate", 1.0, 0.0, 1.0)
    inputs = a.str("inputs", "none", enum=AUDIT_INPUTS)
    mask = []
    for i, name in enumerate(a.list("maskFields", 64)):
        if not isinstance(name, str) or not _FIELD_NAME_RE.fullmatch(name) or len(name) > 253:
            raise SpecError(f"{a.path}.maskFields[{i}] {name!r} must be a field name "
                            "(letters, digits, '_', '-', '.')")
        mask.append(name)
    a.done()
    o.done()
    audit = AuditSpec(enabled=enabled, sample_rate=sample_rate, inputs=inputs,  # type: ignore[arg-type]
                      mask_fields=tuple(mask))
    return MonitoringSpec(drift=drift, feedback=feedback, audit=audit)


# ---------------------------------------------------------------------------
# Parsing the status (lenient: never fails a reconcile over our own output)
# ---------------------------------------------------------------------------
def _opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _opt_num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _revision(d: Any) -> RevisionStatus | None:
    if not isinstance(d, Mapping):
        return None
    return RevisionStatus(
        revision=_opt_int(d.get("revision")), hash=_opt_str(d.get("hash")),
        version=_opt_str(d.get("version")), uri=_opt_str(d.get("uri")),
        replicas=_opt_int(d.get("replicas")) or 0, ready_replicas=_opt_int(d.get("readyReplicas")) or 0,
        spec=_opt_dict(d.get("spec")), image=_opt_str(d.get("image")),
    )


def _opt_dict(v: Any) -> dict[str, Any] | None:
    return copy.deepcopy(dict(v)) if isinstance(v, Mapping) else None


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
    return Status(
        observed_generation=_opt_int(raw.get("observedGeneration")),
        phase=_opt_str(raw.get("phase")),
        conditions=conditions,
        stable=_revision(raw.get("stable")),
        canary=_canary(raw.get("canary")),
        history=history,
        replicas=_opt_int(raw.get("replicas")),
        ready_replicas=_opt_int(raw.get("readyReplicas")),
        selector=_opt_str(raw.get("selector")),
        url=_opt_str(raw.get("url")),
        traffic_mode=_opt_str(raw.get("trafficMode")),
    )
