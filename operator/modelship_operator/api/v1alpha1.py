"""The ModelDeployment API, modelship.dev/v1alpha1: the single declaration.

Every field's description, default, enum, bound, list/map type and CEL rule is written here
once. `crdgen` turns these classes into crds/modeldeployments.modelship.dev.yaml; pydantic
parses a body into them (`parse_spec`), enforcing the same bounds and rules; `validate`
checks a body with the API server's semantics from the generated CRD.

Attributes are snake_case, the API's fields camelCase (the alias). Objects the operator
passes on unchanged (resources, env, tolerations, affinity, autoscaling metrics, Gateway
parentRefs) stay plain dicts in their API form. The classes are frozen pydantic dataclasses:
`dataclasses.fields`/`replace` work on them, and they hold no I/O.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic.dataclasses import dataclass

from .markers import OA, Checked, PassThrough, Rule, Shaped, Since, WriteEmptyDefault, matches, re2_error

GROUP = "modelship.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("mdep",)
CATEGORIES = ("modelship",)
MAX_NAME_LENGTH = 52
# Env names the operator sets on the server container; users may not override them.
RESERVED_ENV_PREFIX = "MODELSHIP_"


class SpecError(ValueError):
    """The ModelDeployment is invalid; the message says which field and why."""


CONFIG = ConfigDict(extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True)
api = dataclass(frozen=True, config=CONFIG)


class _Object(Checked):
    pass


# --------------------------------------------------------------------------- shared types
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_ZERO_DURATION = r"^([0.]+(ms|s|m|h))+$"
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration string such as ``30s``, ``1h30m`` or ``500ms``."""
    if not isinstance(text, str) or not matches(text, DURATION_PATTERN):
        raise SpecError(f"{text!r} is not a duration such as 30s, 2m or 1h30m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text))


def _is_duration(text: str) -> bool:
    return matches(text, DURATION_PATTERN)


def _positive(text: str) -> bool:
    return not matches(text, _ZERO_DURATION)


def _duration_rule(what: str) -> Rule:
    return Rule(r"self.matches('^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$')",
                f"{what} must be a duration such as " + ("30s, 2m or 1h30m" if "pause" in what else "30s or 1m"),
                _is_duration)


def _positive_rule(what: str) -> Rule:
    return Rule("!self.matches('^([0.]+(ms|s|m|h))+$')", f"{what} must be greater than zero", _positive)


Int32 = Annotated[int, OA(format="int32")]
Int64 = Annotated[int, OA(format="int64")]
# A resource.Quantity: 500m, 2, 4Gi (an integer or a string, like core's int-or-string).
Quantity = Annotated[int | str, OA(pattern=QUANTITY_PATTERN, title="a quantity such as 500m, 2 or 4Gi",
                                   ext={"x-kubernetes-int-or-string": True})]
QuantityMap = dict[str, Quantity]
# A size in bytes: a positive integer or a quantity string without sign (64Mi, 2G, 1500000).
SIZE_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[kMGTPE])?$"
Size = Annotated[int | str, OA(minimum=1, pattern=SIZE_PATTERN, title="a size such as 64Mi, 2G or 1048576",
                               ext={"x-kubernetes-int-or-string": True})]
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
V02 = Since("0.2")  # fields added with issues 9-11 (download integrity, admin port, byte budgets)


def F(description: str, default: Any = dataclasses.MISSING, *, alias: str | None = None,
      factory: Any = None) -> Any:
    """A field with its description (and default: a value, or `factory` for objects)."""
    kwargs: dict[str, Any] = {"description": description}
    if alias:
        kwargs["alias"] = alias
    if factory is not None:
        return Field(default_factory=factory, **kwargs)
    if default is not dataclasses.MISSING:
        return Field(default, **kwargs)
    return Field(**kwargs)


# --------------------------------------------------------------------------- spec.model
URI_SCHEMES = ("file", "pvc", "http", "https", "s3")
_PVC_URI = r"^pvc://[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/[^/]+(/[^/]+)*$"
_FILE_URI = r"^file:///[^/]+(/[^/]+)*$"
_HTTP_URI = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[^ ]+$"
_S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^ ]+$"


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else ""


@api
class ModelSpec(_Object):
    """The model to serve."""

    __rules__ = (
        Rule("self.uri.startsWith('file://') || self.uri.startsWith('pvc://') || self.uri.startsWith('http://') "
             "|| self.uri.startsWith('https://') || self.uri.startsWith('s3://')",
             "model.uri must start with file://, pvc://, http://, https:// or s3://",
             lambda m: m.uri.startswith(("file://", "pvc://", "http://", "https://", "s3://"))),
        Rule(f"!self.uri.startsWith('pvc://') || self.uri.matches('{_PVC_URI}')",
             "a pvc:// model.uri must have the form pvc://CLAIM/PATH: a PersistentVolumeClaim name and a "
             "relative path inside it",
             lambda m: not m.uri.startswith("pvc://") or matches(m.uri, _PVC_URI)),
        Rule(f"!self.uri.startsWith('file://') || self.uri.matches('{_FILE_URI}')",
             "a file:// model.uri must be an absolute path inside the server image, e.g. file:///models/digits/model.pt",
             lambda m: not m.uri.startswith("file://") or matches(m.uri, _FILE_URI)),
        Rule(f"!(self.uri.startsWith('http://') || self.uri.startsWith('https://')) || self.uri.matches('{_HTTP_URI}')",
             "an http(s):// model.uri must name a host and a file path, e.g. https://models.example.com/digits/model.pt",
             lambda m: not m.uri.startswith(("http://", "https://")) or matches(m.uri, _HTTP_URI)),
        Rule(f"!self.uri.startsWith('s3://') || self.uri.matches('{_S3_URI}')",
             "an s3:// model.uri must have the form s3://BUCKET/KEY",
             lambda m: not m.uri.startswith("s3://") or matches(m.uri, _S3_URI)),
        Rule(f"self.version.matches('{LABEL_VALUE_PATTERN}')",
             "model.version must be usable as a label value: letters, digits, '-', '_' and '.', starting and "
             "ending with a letter or digit",
             lambda m: matches(m.version, LABEL_VALUE_PATTERN)),
        Rule("!self.uri.startsWith('http://') || (has(self.allowInsecureHttp) && self.allowInsecureHttp)",
             "a plain http:// model.uri needs model.allowInsecureHttp: true (the download is neither encrypted "
             "nor authenticated; prefer https:// or set model.sha256)",
             lambda m: not m.uri.startswith("http://") or m.allow_insecure_http),
    )

    uri: Annotated[str, OA(minLength=1, maxLength=2048)] = F(
        "Where the model file lives: file:///PATH (inside the server image), pvc://CLAIM/PATH (mounted "
        "read-only), http(s)://HOST/PATH or s3://BUCKET/KEY (downloaded by an init container before the "
        "server starts).")
    version: Annotated[str, OA(minLength=1, maxLength=63)] = F(
        "Version label of the model, shown in status, metrics and the x-model-version response header. "
        "Must be a valid label value.")
    format: Literal["auto", "torchscript", "torch-export"] = F(
        "Serialization of the model file: torchscript (torch.jit.save), torch-export (torch.export.save) "
        "or auto (detect from the file).", "auto")
    name: Annotated[str, OA(maxLength=63, pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")] | None = F(
        "Model name used by the inference protocol (/v2/models/{name}). Defaults to the ModelDeployment's name.",
        None)
    sha256: Annotated[Annotated[str, OA(pattern=SHA256_PATTERN, title="64 hex digits (a sha256 digest)")] | None,
                      V02] = F(
        "Expected sha256 of the model file (64 hex digits). The init container verifies a download against "
        "it and the server refuses a file that does not match. Unset: not checked.", None)
    max_bytes: Annotated[Size | None, V02] = F(
        "Largest model file the init container downloads (bytes or a quantity such as 2Gi); a larger download "
        "fails. Also sizes the download volume. Unset: the operator's default limit.", None)
    allow_insecure_http: Annotated[bool, V02] = F(
        "Allow a plain http:// model.uri (no encryption, no authentication of the server). Off by default: "
        "use https://, or set this together with sha256.", False)

    @property
    def scheme(self) -> str:
        """``file``, ``pvc``, ``http``, ``https`` or ``s3``."""
        return _scheme(self.uri)

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


# --------------------------------------------------------------------------- spec.server
@api
class BatchingSpec(_Object):
    """Dynamic batching: a batch runs when it reaches maxBatchSize rows or its oldest request has
    waited maxDelayMs."""

    __rules__ = (
        Rule("self.maxQueue >= self.maxBatchSize",
             "server.batching.maxQueue must be at least maxBatchSize, or a full batch could never form",
             lambda b: b.max_queue >= b.max_batch_size),
        Rule("self.maxDelayMs < self.timeoutMs",
             "server.batching.maxDelayMs must be less than timeoutMs, or requests would time out while "
             "waiting for a batch",
             lambda b: b.max_delay_ms < b.timeout_ms),
    )

    max_batch_size: Annotated[Int32, OA(minimum=1, maximum=4096)] = F(
        "Largest number of rows run in one forward pass.", 32)
    max_delay_ms: Annotated[Int32, OA(minimum=0, maximum=10000)] = F(
        "Longest time in milliseconds the oldest queued request waits for batch-mates.", 5)
    max_queue: Annotated[Int32, OA(minimum=1, maximum=1000000)] = F(
        "Queued ROWS (not requests) beyond which new requests are shed with 503 and Retry-After. The server "
        "counts its queue in rows, so size it for the peak of concurrent clients times rows per request "
        "(64 clients sending 32 rows each need 2048).", 2048)
    timeout_ms: Annotated[Int32, OA(minimum=1, maximum=600000)] = F(
        "Time in milliseconds after which a request gets 504.", 30000)


@api
class ResourceRequirements(_Object):
    """CPU and memory requests and limits of the server container (core ResourceRequirements).
    GPUs are set with spec.gpu."""

    requests: QuantityMap | None = F("Minimum compute resources, e.g. cpu 1, memory 2Gi.", None)
    limits: QuantityMap | None = F("Maximum compute resources, e.g. cpu 2, memory 4Gi.", None)


@api
class EnvVar(_Object):
    """One environment variable."""

    __rules__ = (
        Rule("!(has(self.value) && has(self.valueFrom))", "an env entry sets value or valueFrom, not both",
             lambda e: e.value is None or e.value_from is None),
    )

    name: Annotated[str, OA(minLength=1, maxLength=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")] = F(
        "Variable name.")
    value: Annotated[str, OA(maxLength=32768)] | None = F("Literal value.", None)
    value_from: Annotated[dict[str, Any], PassThrough] | None = F(
        "Source of the value (core EnvVarSource), e.g. a secretKeyRef.", None)


def _no_reserved_env(env: tuple[dict[str, Any], ...]) -> bool:
    return all(not e["name"].startswith(RESERVED_ENV_PREFIX) for e in env)


INFERENCE_PORT = 8080  # the server's inference port (fixed; planning.pods.SERVER_PORT)


@api
class ServerSpec(_Object):
    """Settings of the bundled inference server."""

    __rules__ = (
        Rule(f"self.adminPort != {INFERENCE_PORT}",
             f"server.adminPort must differ from the inference port {INFERENCE_PORT}",
             lambda s: s.admin_port != INFERENCE_PORT),
    )

    image: Annotated[str, OA(maxLength=512)] | None = F(
        "Server image. Defaults to the operator's MODELSHIP_SERVER_IMAGE setting.", None)
    batching: BatchingSpec = F(BatchingSpec.__doc__ or "", factory=BatchingSpec)
    max_batch_rows: Annotated[Int32, OA(minimum=1, maximum=1000000)] = F(
        "Most rows a single /predict/batch or infer request may carry (400 beyond).", 1024)
    precision: Literal["fp32", "fp16", "bf16"] = F(
        "Floating-point precision of the forward pass. fp16 and bf16 need a GPU.", "fp32")
    threads: Annotated[Int32, OA(minimum=1, maximum=256)] | None = F(
        "torch intra-op threads per pod. Defaults to the pod's CPU limit (or request), at least 1.", None)
    resources: Annotated[dict[str, Any], Shaped(ResourceRequirements)] = F(
        ResourceRequirements.__doc__ or "", factory=dict)
    env: Annotated[
        tuple[Annotated[dict[str, Any], Shaped(EnvVar)], ...],
        OA(maxItems=64, ext={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
        Rule("self.all(e, !e.name.startsWith('MODELSHIP_'))",
             "server.env names starting with MODELSHIP_ are reserved: the operator sets them from the spec",
             _no_reserved_env),
    ] = F("Extra environment variables of the server container (core EnvVar).", ())
    admin_port: Annotated[Int32, OA(minimum=1024, maximum=65535), V02] = F(
        "Port of the server's admin surface (/metrics, /feedback, /drift and everything else that is not "
        "inference). Services and the HTTPRoute expose only the inference port; Prometheus and the "
        "operator's analysis use this one.", 9090)

    @model_validator(mode="after")
    def _env_names_unique(self) -> ServerSpec:
        # x-kubernetes-list-type map: the API server rejects two entries with one name.
        names = [e["name"] for e in self.env]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"server.env sets {name!r} twice")
        return self


# --------------------------------------------------------------------------- spec.gpu
_RESOURCE_NAME = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"


@api
class GpuSpec(_Object):
    """GPUs per server pod. count 0 serves on CPU."""

    __rules__ = (
        Rule("self.count == 0 || size(self.resourceName) > 0",
             "gpu.count > 0 needs gpu.resourceName (e.g. nvidia.com/gpu or a MIG resource such as "
             "nvidia.com/mig-1g.10gb)",
             lambda g: g.count == 0 or len(g.resource_name) > 0),
        Rule("!has(self.type) || self.count > 0", "gpu.type selects GPU nodes and needs gpu.count > 0",
             lambda g: g.type is None or g.count > 0),
        Rule("!self.resourceName.startsWith('kubernetes.io/') && !self.resourceName.startsWith('requests.')",
             "gpu.resourceName must be an extended resource such as nvidia.com/gpu, not a kubernetes.io/ resource",
             lambda g: not g.resource_name.startswith(("kubernetes.io/", "requests."))),
    )

    count: Annotated[Int32, OA(minimum=0, maximum=16)] = F("GPUs (or MIG slices) requested and limited per pod.", 0)
    resource_name: Annotated[str, OA(maxLength=253, pattern=_RESOURCE_NAME)] = F(
        "Extended resource name of the device: nvidia.com/gpu, a MIG profile such as nvidia.com/mig-1g.10gb, "
        "or another vendor's resource (amd.com/gpu).", "nvidia.com/gpu")
    type: Annotated[str, OA(minLength=1, maxLength=63, pattern=LABEL_VALUE_PATTERN)] | None = F(
        "GPU model to schedule on (e.g. NVIDIA-A100-SXM4-80GB), matched against the node label named by the "
        "operator's MODELSHIP_GPU_LABEL_KEY setting.", None)


# --------------------------------------------------------------------------- spec.scheduling
@api
class Toleration(_Object):
    """One toleration."""

    key: str | None = F("Taint key; empty with operator Exists matches all taints.", None)
    operator: Literal["Exists", "Equal"] | None = F("Exists or Equal (default Equal).", None)
    value: str | None = F("Taint value for operator Equal.", None)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = F(
        "Taint effect to match; empty matches all effects.", None)
    toleration_seconds: Int64 | None = F("For NoExecute, how long the pod stays bound after the taint appears.", None)


@api
class SchedulingSpec(_Object):
    """Where server pods may run, passed through to the pod spec."""

    node_selector: dict[str, str] = F("Node labels the pods require (merged with the gpu.type selector).",
                                      factory=dict)
    tolerations: Annotated[tuple[Annotated[dict[str, Any], Shaped(Toleration)], ...], OA(maxItems=32)] = F(
        "Tolerations of the pods (core Toleration). GPU pods also tolerate the resource's taint.", ())
    affinity: Annotated[dict[str, Any], PassThrough] = F(
        "Pod affinity rules (core Affinity), passed through unchanged.", factory=dict)
    priority_class_name: Annotated[str, OA(maxLength=253)] | None = F("PriorityClass of the pods.", None)


# --------------------------------------------------------------------------- spec.autoscaling
@api
class AutoscalingSpec(_Object):
    """Horizontal autoscaling of spec.replicas through the /scale subresource. Absent: no
    HorizontalPodAutoscaler, spec.replicas is used as written."""

    __rules__ = (
        Rule("self.minReplicas <= self.maxReplicas",
             "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
             lambda a: a.min_replicas <= a.max_replicas),
        Rule("self.metric != 'cpu' || self.targetCPUUtilization > 0 || (has(self.metrics) && size(self.metrics) > 0)",
             "autoscaling needs a target: targetCPUUtilization > 0 or at least one entry in metrics",
             lambda a: a.metric != "cpu" or a.target_cpu_utilization > 0 or len(a.metrics) > 0),
        Rule("self.metric == 'cpu' || has(self.target)",
             "autoscaling.metric inflight, queue or rps needs autoscaling.target (the value per pod to aim for)",
             lambda a: a.metric == "cpu" or a.target is not None),
    )

    max_replicas: Annotated[Int32, OA(minimum=1, maximum=1000)] = F("Most pods the autoscaler may run.")
    min_replicas: Annotated[Int32, OA(minimum=1, maximum=1000)] = F("Fewest pods the autoscaler keeps.", 1)
    target_cpu_utilization: Annotated[Int32, OA(minimum=0, maximum=100)] = F(
        "Average CPU utilization (percent of requests) to aim for; 0 disables the CPU target.", 70,
        alias="targetCPUUtilization")
    metrics: Annotated[
        tuple[Annotated[dict[str, Any], PassThrough, OA(description="One autoscaling/v2 MetricSpec.")], ...],
        OA(maxItems=16),
    ] = F("Additional autoscaling/v2 MetricSpec entries, passed through to the HorizontalPodAutoscaler.", ())
    metric: Literal["cpu", "inflight", "queue", "rps"] = F(
        "The serving signal to scale on: cpu (targetCPUUtilization), inflight (requests in flight per pod), "
        "queue (rows waiting in the batcher per pod) or rps (requests per second per pod). A non-cpu metric "
        "renders a KEDA ScaledObject (Prometheus trigger) when KEDA's CRD is served and the operator knows a "
        "Prometheus address, else a HorizontalPodAutoscaler with a Pods metric served by prometheus-adapter "
        "(the chart ships its rules).", "cpu")
    target: Annotated[float, OA(minimum=0, exclusiveMinimum=True)] | None = F(
        "Average value per pod of autoscaling.metric to aim for, e.g. 4 requests in flight or 50 requests per "
        "second. Needed for every metric except cpu.", None)


# --------------------------------------------------------------------------- spec.rollout
@api
class PauseSpec(_Object):
    """Wait before the next step. Without a duration, wait for a manual promote."""

    duration: Annotated[str, OA(maxLength=32), _duration_rule("pause.duration")] | None = F(
        "How long to wait, e.g. 30s, 2m, 1h30m.", None)

    @property
    def seconds(self) -> float | None:
        return None if self.duration is None else parse_duration(self.duration)


_HEADER_NAME = r"^[-A-Za-z0-9!#$%&'*+.^_`|~]+$"  # an RFC 7230 token, as Gateway API's HTTPHeaderName
_COOKIE_NAME = _HEADER_NAME


@api
class StringMatch(_Object):
    """How a header or cookie value matches; exactly one of exact, prefix or regex."""

    __rules__ = (
        Rule("(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) + (has(self.regex) ? 1 : 0) == 1",
             "a header route value sets exactly one of exact, prefix or regex",
             lambda m: sum(v is not None for v in (m.exact, m.prefix, m.regex)) == 1),
        # An invalid pattern would reach the gateway, which may then refuse the whole HTTPRoute.
        # (`||` would forgive an error on one side; both sides fail on a pattern RE2 cannot compile.)
        Rule("!has(self.regex) || ''.matches(self.regex) || !''.matches(self.regex)",
             "regex must be a valid RE2 regular expression",
             lambda m: m.regex is None or re2_error(m.regex) is None),
    )

    # 1024: escaped into a RegularExpression match (prefixes, cookies) it still fits the Gateway API's 4096.
    exact: Annotated[str, OA(maxLength=1024)] | None = F("The value equals this string.", None)
    prefix: Annotated[str, OA(minLength=1, maxLength=1024)] | None = F("The value starts with this string.", None)
    regex: Annotated[str, OA(minLength=1, maxLength=1024)] | None = F(
        "The whole value matches this regular expression (RE2 syntax; rendered as the Gateway's RegularExpression "
        "header match, anchored at both ends).", None)


@api
class HeaderRouteMatch(_Object):
    """One condition of a header route: a request header or a cookie; all conditions of a route must hold."""

    __rules__ = (
        Rule("has(self.headerName) != has(self.cookieName)",
             "a header route match names exactly one of headerName or cookieName",
             lambda m: (m.header_name is None) != (m.cookie_name is None)),
        Rule("has(self.headerName) == has(self.headerValue) && has(self.cookieName) == has(self.cookieValue)",
             "headerName needs headerValue and cookieName needs cookieValue",
             lambda m: (m.header_name is None) == (m.header_value is None)
             and (m.cookie_name is None) == (m.cookie_value is None)),
    )

    header_name: Annotated[str, OA(minLength=1, maxLength=256, pattern=_HEADER_NAME)] | None = F(
        "Request header to match, e.g. X-User-Group (case-insensitive, as HTTP).", None)
    header_value: StringMatch | None = F("How the header's value matches.", None)
    cookie_name: Annotated[str, OA(minLength=1, maxLength=256, pattern=_COOKIE_NAME)] | None = F(
        "Cookie to match, e.g. ab-group (matched inside the Cookie header).", None)
    cookie_value: StringMatch | None = F("How the cookie's value matches.", None)


def _cookie_like(m: HeaderRouteMatch) -> bool:
    return m.cookie_name is not None or (m.header_name or "").lower() == "cookie"


@api
class HeaderRouteStep(_Object):
    """Send requests that match to the canary, whatever the weight (gateway traffic only). With matches it
    adds (or replaces) the named route; without, it removes it. Routes last until removed or the rollout ends."""

    # The Gateway API considers only the first of several matches on one header name (case-insensitive):
    # a second condition on it would be ignored, sending more requests to the canary than asked.
    __rules__ = (
        Rule("!has(self.match) || self.match.all(x, has(x.headerName) ? self.match.exists_one(y, has(y.headerName) ? "
             "y.headerName.lowerAscii() == x.headerName.lowerAscii() : false) : true)",
             "a header route names each header once (names are case-insensitive)",
             lambda r: len({m.header_name.lower() for m in r.match if m.header_name is not None})
             == sum(m.header_name is not None for m in r.match)),
        Rule("!has(self.match) || !self.match.exists(m, has(m.cookieName)) || self.match.exists_one(m, has(m.cookieName) || "
             "(has(m.headerName) ? m.headerName.lowerAscii() == 'cookie' : false))",
             "a header route has at most one cookie condition and then no Cookie header condition (cookies are "
             "matched inside the one Cookie header)",
             lambda r: not any(m.cookie_name is not None for m in r.match) or sum(map(_cookie_like, r.match)) == 1),
    )

    name: Annotated[str, OA(minLength=1, maxLength=63, pattern=NAME_PATTERN)] = F(
        "Name of the route (later steps refer to it to replace or remove it).")
    match: Annotated[tuple[HeaderRouteMatch, ...], OA(maxItems=8)] = F(
        "Conditions that must all hold (headers and cookies); empty removes the route.", ())


@api
class ShadowStep(_Object):
    """Run the canary as a shadow: it takes no user traffic; stable pods copy a sample of their inference
    requests to it after answering, compare the answers and export the difference as metrics."""

    percent: Annotated[Int32, OA(minimum=1, maximum=100)] = F(
        "Percentage of the stable's inference requests copied to the canary.")
    duration: Annotated[str, OA(maxLength=32), _duration_rule("shadow.duration"),
                        _positive_rule("shadow.duration")] = F(
        "How long the step shadows (its analysis windows must also pass), e.g. 10m.")

    @property
    def seconds(self) -> float:
        return parse_duration(self.duration)


def _one_action(s: RolloutStep) -> bool:
    return sum(v is not None for v in (s.set_weight, s.pause, s.set_header_route, s.shadow)) == 1


@api
class RolloutStep(_Object):
    """One step; sets exactly one of setWeight, pause, setHeaderRoute or shadow."""

    __rules__ = (
        Rule("(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0) + (has(self.setHeaderRoute) ? 1 : 0)"
             " + (has(self.shadow) ? 1 : 0) == 1",
             "each rollout step sets exactly one of setWeight, pause, setHeaderRoute or shadow",
             _one_action),
    )

    set_weight: Annotated[Int32, OA(minimum=0, maximum=100)] | None = F(
        "Percentage of traffic sent to the canary from this step on.", None)
    pause: PauseSpec | None = F(PauseSpec.__doc__ or "", None)
    set_header_route: HeaderRouteStep | None = F(HeaderRouteStep.__doc__ or "", None)
    shadow: ShadowStep | None = F(ShadowStep.__doc__ or "", None)


@api
class AnalysisSpec(_Object):
    """Checks of the canary's metrics at every interval; failureLimit failed checks abort the rollout."""

    interval: Annotated[str, OA(maxLength=32), _duration_rule("analysis.interval"),
                        _positive_rule("analysis.interval")] = F("Time between checks, e.g. 30s or 1m.", "30s")
    max_error_rate: Annotated[float, OA(minimum=0, maximum=1)] = F(
        "Highest fraction of canary requests that may fail (5xx) in a check.", 0.01)
    max_latency_p99_ms: Annotated[float, OA(minimum=0, exclusiveMinimum=True)] | None = F(
        "Highest p99 end-to-end latency in milliseconds. Unset means latency is not checked.", None)
    min_requests: Annotated[Int32, OA(minimum=0)] = F(
        "Requests a check needs before it counts; fewer leaves the verdict inconclusive.", 50)
    failure_limit: Annotated[Int32, OA(minimum=1, maximum=100)] = F("Failed checks that abort the rollout.", 2)
    min_passed_windows: Annotated[Int32, OA(minimum=1, maximum=100)] = F(
        "Passing analysis windows a step that gives the canary traffic needs at its weight before the rollout "
        "advances; a timed pause ends when its time is up and its windows passed.", 1)
    inconclusive_limit: Annotated[Int32, OA(minimum=1, maximum=100)] = F(
        "Consecutive inconclusive windows (too few requests, metrics unavailable) after which the rollout "
        "stops waiting and acts as onInconclusive says. Inconclusive windows hold the step.", 3)
    on_inconclusive: Literal["Pause", "Abort"] = F(
        "What inconclusiveLimit consecutive inconclusive windows do: Pause (phase Paused, a condition and an "
        "Event say why; promote or fix the traffic) or Abort.", "Pause")
    max_disagreement: Annotated[float, OA(minimum=0, maximum=1)] | None = F(
        "During shadow steps: highest fraction of compared rows whose predicted class (argmax) differs between "
        "the canary and the stable. Unset means not checked.", None)
    max_mean_abs_diff: Annotated[float, OA(minimum=0)] | None = F(
        "During shadow steps: highest mean absolute difference between the canary's and the stable's outputs "
        "over the compared rows. Unset means not checked.", None)

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval)


_HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


@api
class ParentReference(_Object):
    """One parent Gateway."""

    name: Annotated[str, OA(minLength=1, maxLength=253)] = F("Name of the parent.")
    group: Annotated[str, OA(maxLength=253)] | None = F(
        "API group of the parent (default gateway.networking.k8s.io).", None)
    kind: Annotated[str, OA(maxLength=63)] | None = F("Kind of the parent (default Gateway).", None)
    namespace: Annotated[str, OA(maxLength=63)] | None = F(
        "Namespace of the parent (default the ModelDeployment's).", None)
    section_name: Annotated[str, OA(maxLength=253)] | None = F("Listener of the parent to attach to.", None)
    port: Annotated[Int32, OA(minimum=1, maximum=65535)] | None = F("Port of the parent to attach to.", None)


@api
class GatewaySpec(_Object):
    """Gateway API HTTPRoute settings for traffic gateway (or auto)."""

    parent_refs: Annotated[tuple[Annotated[dict[str, Any], Shaped(ParentReference)], ...],
                           OA(minItems=1, maxItems=16)] = F(
        "Gateways the HTTPRoute attaches to (Gateway API ParentReference).")
    hostnames: Annotated[
        tuple[Annotated[str, OA(maxLength=253, pattern=_HOSTNAME, title="a host name", description="One host name.")], ...],
        OA(maxItems=16),
    ] = F("Host names the HTTPRoute matches (may start with a '*.' wildcard).", ())
    mirror_percent: Annotated[Int32, OA(minimum=0, maximum=100)] | None = F(
        "Percentage of stable traffic also mirrored to the canary (responses discarded).", None)


def _steps_give_traffic(r: RolloutSpec) -> bool:
    return len(r.steps) == 0 or any((s.set_weight is not None and s.set_weight > 0) or s.shadow is not None
                                    for s in r.steps)


def _header_routes_need_gateway(r: RolloutSpec) -> bool:
    return not any(s.set_header_route is not None for s in r.steps) or (
        r.traffic != "replicas" and r.gateway is not None)


def _header_routes_fit(r: RolloutSpec) -> bool:
    return sum(s.set_header_route is not None and len(s.set_header_route.match) > 0 for s in r.steps) <= 15


def _shadow_limits_need_shadow(r: RolloutSpec) -> bool:
    unset = r.analysis.max_disagreement is None and r.analysis.max_mean_abs_diff is None
    return unset or any(s.shadow is not None for s in r.steps)


@api
class RolloutSpec(_Object):
    """How a new revision (a change to model, server, gpu or scheduling) replaces the stable one."""

    __rules__ = (
        Rule("self.traffic != 'gateway' || has(self.gateway)",
             "rollout.traffic gateway needs rollout.gateway.parentRefs (the Gateway the HTTPRoute attaches to)",
             lambda r: r.traffic != "gateway" or r.gateway is not None),
        Rule("!has(self.gateway) || !has(self.gateway.mirrorPercent) || self.traffic != 'replicas'",
             "rollout.gateway.mirrorPercent needs an HTTPRoute: use traffic gateway or auto, not replicas",
             lambda r: r.gateway is None or r.gateway.mirror_percent is None or r.traffic != "replicas"),
        Rule("size(self.steps) == 0 || self.steps.exists(s, (has(s.setWeight) && s.setWeight > 0) || has(s.shadow))",
             "rollout.steps never gives the canary traffic: add a setWeight step above 0 or a shadow step",
             _steps_give_traffic),
        Rule("!self.steps.exists(s, has(s.setHeaderRoute)) || (self.traffic != 'replicas' && has(self.gateway))",
             "setHeaderRoute steps need an HTTPRoute: set rollout.gateway and traffic gateway or auto, not replicas",
             _header_routes_need_gateway),
        Rule("self.steps.filter(s, has(s.setHeaderRoute) && has(s.setHeaderRoute.match) && "
             "size(s.setHeaderRoute.match) > 0).size() <= 15",
             "at most 15 setHeaderRoute steps with matches: an HTTPRoute holds 16 rules and one is the weighted split",
             _header_routes_fit),
        Rule("(!has(self.analysis.maxDisagreement) && !has(self.analysis.maxMeanAbsDiff)) || "
             "self.steps.exists(s, has(s.shadow))",
             "analysis.maxDisagreement and maxMeanAbsDiff are measured during shadow steps: add a shadow step",
             _shadow_limits_need_shadow),
    )

    steps: Annotated[tuple[RolloutStep, ...], OA(maxItems=32), WriteEmptyDefault] = F(
        "Canary steps, in order. Empty: a new revision takes all traffic as soon as it is ready. After the "
        "last step the canary is promoted.", ())
    analysis: AnalysisSpec = F(AnalysisSpec.__doc__ or "", factory=AnalysisSpec)
    traffic: Literal["auto", "gateway", "replicas"] = F(
        "How the canary weight is realised: replicas (split spec.replicas between revisions behind one "
        "Service), gateway (a Gateway API HTTPRoute with weighted backends) or auto (gateway when "
        "rollout.gateway is set and the HTTPRoute CRD exists, else replicas).", "auto")
    gateway: GatewaySpec | None = F(GatewaySpec.__doc__ or "", None)
    ready_timeout: Annotated[str, OA(maxLength=32, pattern=DURATION_PATTERN), _positive_rule("rollout.readyTimeout")] = F(
        "How long the canary's pods may take to become Ready; a canary not Ready by then is aborted, e.g. 5m.",
        "5m")
    max_canary_restarts: Annotated[Int32, OA(minimum=0, maximum=1000)] = F(
        "Container restarts of canary pods (crash loops, OOM kills) after which the rollout is aborted.", 3)

    @property
    def ready_timeout_seconds(self) -> float:
        return parse_duration(self.ready_timeout)


# --------------------------------------------------------------------------- spec.monitoring
@api
class DriftSpec(_Object):
    """Input drift (PSI per feature) of the newest requests against the training data's profile."""

    enabled: bool = F("Compute drift (needs a reference profile; without one the server logs it and skips drift).",
                      True)
    reference: Annotated[
        str, OA(minLength=1, maxLength=2048),
        Rule("!self.startsWith('pvc://')",
             "monitoring.drift.reference cannot be a pvc:// URI: use a path next to the model (the model's claim "
             "is mounted) or an http(s):// or s3:// URI",
             lambda ref: not ref.startswith("pvc://")),
    ] | None = F(
        "The reference profile: a path relative to the model's directory, an absolute path in the pod, or an "
        "http(s):// or s3:// URI. Default: reference_profile.json next to the model.", None)
    window: Annotated[Int32, OA(minimum=1, maximum=1000000)] = F("Newest input rows kept and scored.", 1000)
    interval: Annotated[str, OA(maxLength=32, pattern=DURATION_PATTERN),
                        _positive_rule("monitoring.drift.interval")] = F(
        "Time between drift computations, e.g. 30s or 5m.", "30s")
    threshold: Annotated[float, OA(minimum=0, exclusiveMinimum=True)] = F(
        "PSI at or above which a feature counts as drifted (0.1-0.25 moderate, above 0.25 major).", 0.2)


@api
class FeedbackSpec(_Object):
    """Ground-truth feedback matched to predictions by x-request-id, for online accuracy / MAE."""

    enabled: bool = F("Keep predictions for feedback (POST /v2/models/{name}/feedback, /feedback).", True)
    ttl: Annotated[str, OA(maxLength=32, pattern=DURATION_PATTERN), _positive_rule("monitoring.feedback.ttl")] = F(
        "How long a prediction waits for its ground truth, e.g. 1h.", "1h")
    max_entries: Annotated[Int32, OA(minimum=1, maximum=10000000)] = F(
        "Pending predictions kept per pod (about 160 bytes each for one row).", 100000)
    max_bytes: Annotated[Size, V02] = F(
        "Memory budget of the pending predictions per pod (bytes or a quantity such as 32Mi); the oldest are "
        "evicted beyond it.", "32Mi")


_FIELD_NAME = r"^[A-Za-z0-9_.-]+$"


@api
class AuditSpec(_Object):
    """One JSON line per request on the server's stdout."""

    enabled: bool = F("Write the audit log (a log-volume and privacy decision; off by default).", False)
    sample_rate: Annotated[float, OA(minimum=0, maximum=1)] = F(
        "Share of successful requests logged; errors are always logged.", 1.0)
    inputs: Literal["none", "digest", "summary"] = F(
        "What to log about inputs: none, digest (sha256 of the body) or summary (dtype, shape, min, max, mean "
        "per input; min/max reveal values of tiny inputs).", "none")
    mask_fields: Annotated[
        tuple[Annotated[str, OA(maxLength=253, pattern=_FIELD_NAME, description="One field name.")], ...],
        OA(maxItems=64), WriteEmptyDefault,
    ] = F("Field names (at any depth, e.g. client or an input name) whose values are logged as \"***\".", ())
    max_bytes: Annotated[Size, V02] = F(
        "Memory budget of the audit records waiting to be written, per pod (bytes or a quantity such as 8Mi); "
        "beyond it records are dropped and counted.", "8Mi")


@api
class MonitoringSpec(_Object):
    """Model monitoring in the server: input drift against a reference profile, online accuracy from
    ground-truth feedback, and an audit log of requests. Unset: the server's defaults (drift on when a
    reference profile is found next to the model, feedback on, audit off). Changing it makes a new
    revision."""

    drift: DriftSpec = F(DriftSpec.__doc__ or "", factory=DriftSpec)
    feedback: FeedbackSpec = F(FeedbackSpec.__doc__ or "", factory=FeedbackSpec)
    audit: AuditSpec = F(AuditSpec.__doc__ or "", factory=AuditSpec)


# --------------------------------------------------------------------------- spec
@api
class ModelDeploymentSpec(_Object):
    """Desired state. The operator never writes it; GitOps tools own it."""

    __rules__ = (
        Rule("self.server.precision == 'fp32' || self.gpu.count > 0",
             "server.precision fp16 and bf16 need a GPU: set gpu.count > 0 or use precision fp32",
             lambda s: s.server.precision == "fp32" or s.gpu.count > 0),
    )

    model: ModelSpec = F(ModelSpec.__doc__ or "")
    replicas: Annotated[Int32, OA(minimum=0, maximum=1000)] = F(
        "Total server pods over all revisions (stable and canary). The autoscaler, when configured, writes it "
        "through the /scale subresource.", 1)
    server: ServerSpec = F(ServerSpec.__doc__ or "", factory=ServerSpec)
    gpu: GpuSpec = F(GpuSpec.__doc__ or "", factory=GpuSpec)
    scheduling: SchedulingSpec = F(SchedulingSpec.__doc__ or "", factory=SchedulingSpec)
    autoscaling: AutoscalingSpec | None = F(AutoscalingSpec.__doc__ or "", None)
    rollout: RolloutSpec = F(RolloutSpec.__doc__ or "", factory=RolloutSpec)
    history_limit: Annotated[Int32, OA(minimum=0, maximum=100)] = F("Past revisions kept in status.history.", 10)
    monitoring: MonitoringSpec | None = F(MonitoringSpec.__doc__ or "", None)


# --------------------------------------------------------------------------- status
# Written only by the operator and read leniently (`parse_status`): the CRD carries no
# defaults here, the attribute defaults are what an absent value reads as.
PHASES = ("Pending", "Progressing", "Paused", "Healthy", "Degraded", "Failed")
TRAFFIC_MODES = ("auto", "gateway", "replicas")

status = dataclass(frozen=True, config=ConfigDict(alias_generator=to_camel, populate_by_name=True))


@status
class Condition:
    """One condition (metav1.Condition)."""

    type: Annotated[str, OA(maxLength=316)] = F("Condition type, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = F("True, False or Unknown.")
    reason: Annotated[str, OA(maxLength=1024)] = F("Machine-readable CamelCase reason for the last transition.", "")
    message: Annotated[str, OA(maxLength=32768)] = F("Human-readable details.", "")
    last_transition_time: Annotated[str, OA(format="date-time")] | None = F("When the status last changed.", None)
    observed_generation: Annotated[Int64, OA(minimum=0)] | None = F(
        "metadata.generation the condition was set for.", None)


CONDITION_REQUIRED = ("type", "status", "lastTransitionTime", "reason", "message")

_REVISION_DOC = "Revision number, counting up from 1."
_HASH_DOC = "Hash of the revision's pod template; names its Deployment."


@status
class RevisionStatus:
    """The revision serving (most) traffic."""

    revision: Int64 | None = F(_REVISION_DOC, None)
    hash: str | None = F(_HASH_DOC, None)
    version: str | None = F("spec.model.version of the revision.", None)
    uri: str | None = F("spec.model.uri of the revision.", None)
    replicas: Int32 = F("Pods of the revision.", 0)
    ready_replicas: Int32 = F("Ready pods of the revision.", 0)
    spec: Annotated[dict[str, Any], PassThrough] | None = F(
        "The pod-shaping part of the spec (model, server, gpu, scheduling, monitoring) this revision was made "
        "from: the operator renders the stable from it while spec describes a canary.", None)
    image: str | None = F("The server image the revision runs.", None)


@status
class AnalysisStatus:
    """The latest analysis of the canary."""

    last_time: Annotated[str, OA(format="date-time")] | None = F(
        "End of the latest counted analysis window (the start of the next one); set when the canary first "
        "takes traffic.", None)
    requests: Int64 | None = F("Requests the latest check saw.", None)
    error_rate: float | None = F("Error rate the latest check measured.", None)
    latency_p99_ms: float | None = F("p99 latency in milliseconds the latest check measured.", None)
    verdict: str | None = F("Outcome of the latest check (Pass, Fail or Inconclusive).", None)
    failures: Int32 = F("Failed checks so far in this rollout.", 0)
    successes: Int32 = F("Passed checks so far in this rollout.", 0)
    message: str | None = F("Human-readable explanation of the verdict.", None)
    step_passed: Int32 = F("Passing windows measured during the current step (it needs minPassedWindows).", 0)
    step_failed: Int32 = F("Failed windows measured during the current step.", 0)
    step_inconclusive: Int32 = F("Inconclusive windows measured during the current step.", 0)
    inconclusive_streak: Int32 = F("Inconclusive windows in a row (the rollout pauses at inconclusiveLimit).", 0)
    restarts_at_start: Int32 | None = F("Canary container restarts counted when the current window started.", None)
    compared: Int64 | None = F("Rows the stable compared with the canary in the latest shadow check.", None)
    disagreement: float | None = F("Fraction of compared rows whose predicted class differed (latest shadow "
                                   "check).", None)
    mean_abs_diff: float | None = F("Mean absolute difference of the outputs (latest shadow check).", None)


@status
class CanaryStatus:
    """The revision being rolled out, while a rollout is in progress."""

    revision: Int64 | None = F(_REVISION_DOC, None)
    hash: str | None = F(_HASH_DOC, None)
    version: str | None = F("spec.model.version of the revision.", None)
    uri: str | None = F("spec.model.uri of the revision.", None)
    weight: Int32 = F("Percentage of traffic the canary's ready pods receive now (0 before they are ready and "
                      "after an abort).", 0)
    requested_weight: Int32 = F("Percentage the current step asks for (100 once every step is done).", 0)
    step: Int32 = F("Index of the current rollout step (0-based); equal to the number of steps once every step "
                    "is done and the canary is being promoted.", 0)
    step_started_at: Annotated[str, OA(format="date-time")] | None = F(
        "When the current step began (for pause durations).", None)
    replicas: Int32 = F("Pods of the revision.", 0)
    ready_replicas: Int32 = F("Ready pods of the revision.", 0)
    aborted: bool = F("True once the rollout was aborted (analysis failure or manual abort).", False)
    abort_reason: str | None = F("Why the rollout was aborted.", None)
    analysis: AnalysisStatus | None = F(AnalysisStatus.__doc__ or "", None)
    hold_reason: str | None = F("Why the current step does not advance yet (pods not ready, windows still "
                                "needed, a pause, a manual gate).", None)
    held_reason: str | None = F("Why the rollout paused itself (inconclusiveLimit inconclusive windows in a row); "
                                "a manual promote resumes it.", None)
    restarts: Int32 = F("Container restarts of canary pods since the canary started (maxCanaryRestarts).", 0)
    pod_restarts: dict[str, Int32] | None = F("restartCount of each live canary pod at the last look.", None)
    unready_since: Annotated[str, OA(format="date-time")] | None = F(
        "Since when fewer canary pods are Ready than the step needs (readyTimeout counts from here).", None)
    shadow_since: Annotated[str, OA(format="date-time")] | None = F(
        "When the canary pods became ready to shadow at the current shadow step: its duration counts from here "
        "(not from stepStartedAt, which includes the pods' start).", None)
    actions: tuple[Annotated[str, OA(maxLength=1024, description="One action: annotation=value.")], ...] = F(
        "Manual actions (annotation=value) acted on whose annotation is still present: not acted on again.", ())
    header_routes: tuple[Annotated[str, OA(maxLength=63, description="One route name.")], ...] = F(
        "Names of the header routes (setHeaderRoute) that send matching requests to the canary now.", ())
    shadow_percent: Int32 | None = F("Percentage of the stable's requests copied to the canary now (shadow "
                                     "step); unset outside shadow steps.", None)
    seq: Int64 = F("Counts changes of the rollout state; the same state is recorded on the canary Deployment "
                   "(annotation modelship.dev/rollout) and the newer of the two is used.", 0)


@status
class HistoryEntry:
    """One past revision."""

    revision: Int64 | None = F("Revision number.", None)
    hash: str | None = F("Hash of the revision's pod template.", None)
    version: str | None = F("spec.model.version of the revision.", None)
    uri: str | None = F("spec.model.uri of the revision.", None)
    time: Annotated[str, OA(format="date-time")] | None = F("When the revision left service.", None)
    outcome: str | None = F(
        "Why it left service: Superseded (a canary was promoted over it), RolledBack (a promoted older revision "
        "replaced it), Replaced (a newer canary replaced it mid-rollout), Cancelled (the spec returned to the "
        "stable revision) or Aborted.", None)
    spec: Annotated[dict[str, Any], PassThrough] | None = F(
        "The pod-shaping part of the spec of the revision (what rollback restores).", None)
    image: str | None = F("The server image the revision ran.", None)


@status
class Status:
    """Observed state, written only by the operator."""

    observed_generation: Int64 | None = F("metadata.generation this status reflects.", None)
    phase: Literal["Pending", "Progressing", "Paused", "Healthy", "Degraded", "Failed"] | None = F(
        "Summary of the deployment's state.", None)
    conditions: Annotated[
        tuple[Condition, ...],
        OA(ext={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
    ] = F("Ready, Available, Progressing and Degraded conditions (Kubernetes API conventions).", ())
    stable: RevisionStatus | None = F(RevisionStatus.__doc__ or "", None)
    canary: CanaryStatus | None = F(CanaryStatus.__doc__ or "", None)
    history: tuple[HistoryEntry, ...] = F("Past revisions, oldest first, at most spec.historyLimit.", ())
    replicas: Int32 | None = F(
        "Pods counted against spec.replicas (read by the /scale subresource): all revisions in replicas traffic "
        "mode; the stable revision only in gateway mode, where the canary's pods are extra.", None)
    ready_replicas: Int32 | None = F("Ready pods over all revisions.", None)
    selector: str | None = F(
        "Label selector of all server pods, in string form (read by the /scale subresource).", None)
    url: str | None = F("In-cluster URL of the inference endpoint.", None)
    traffic_mode: Literal["gateway", "replicas"] | None = F(
        "How traffic is split now (the effective rollout.traffic).", None)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


# --------------------------------------------------------------------------- the resource
ROOT_DESCRIPTION = ("ModelDeployment serves one PyTorch model with the bundled inference server and rolls new "
                    "model versions out as metric-checked canaries.")
NAME_RULE = Rule(
    f"self.metadata.name.matches('{NAME_PATTERN}') && size(self.metadata.name) <= {MAX_NAME_LENGTH}",
    "metadata.name must be a DNS-1035 label of at most 52 characters (lower-case letters, digits and '-', "
    "starting with a letter): it names the Services and Deployments the operator creates",
    lambda name: isinstance(name, str) and matches(name, NAME_PATTERN) and len(name) <= MAX_NAME_LENGTH,
)

PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "Version", "type": "string", "description": "Model version of the stable revision.",
     "jsonPath": ".status.stable.version"},
    {"name": "Canary", "type": "string",
     "description": "Model version of the canary revision, if a rollout is in progress.",
     "jsonPath": ".status.canary.version"},
    {"name": "Weight", "type": "integer", "description": "Percentage of traffic the canary currently receives.",
     "jsonPath": ".status.canary.weight"},
    {"name": "Phase", "type": "string", "description": "Summary of the deployment's state.",
     "jsonPath": ".status.phase"},
    {"name": "Ready", "type": "integer", "description": "Ready server pods over all revisions.",
     "jsonPath": ".status.readyReplicas"},
    {"name": "Replicas", "type": "integer", "description": "Desired server pods over all revisions.",
     "jsonPath": ".spec.replicas", "priority": 1},
    {"name": "URL", "type": "string", "description": "In-cluster address of the inference endpoint.",
     "jsonPath": ".status.url", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)
SUBRESOURCES: dict[str, Any] = {
    "status": {},
    "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
              "labelSelectorPath": ".status.selector"},
}


# --------------------------------------------------------------------------- parsing
_SPEC = TypeAdapter(ModelDeploymentSpec)

_MESSAGES = {
    "int_type": "must be an integer", "int_from_float": "must be an integer", "float_type": "must be a number",
    "string_type": "must be a string", "bool_type": "must be true or false", "dict_type": "must be an object",
    "dataclass_type": "must be an object", "dataclass_exact_type": "must be an object",
    "tuple_type": "must be a list", "list_type": "must be a list", "missing": "is required",
    "extra_forbidden": "unknown field", "unexpected_keyword_argument": "unknown field",
}


def _path(loc: tuple[Any, ...]) -> str:
    text = "spec"
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("int", "str", "float", "bool") or "[" in str(part) or "(" in str(part):
            continue  # pydantic's tags of union members and validator functions
        else:
            text += f".{part}"
    return text


def _describe(error: Any) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "rule":
        return f"{_path(loc)}: {error['msg']}"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{_path(loc[:-1])}: unknown field {loc[-1]!r}"
    if kind in ("literal_error", "enum"):
        options = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        message = f"must be one of {', '.join(options)}, not {error.get('input')!r}"
    elif kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        return f"{_path(loc)}: {message}"
    else:
        message = _MESSAGES.get(kind, error["msg"])
        if kind.endswith("_type") and "input" in error:
            message += f", not {error['input']!r}"
    return f"{_path(loc)} {message}"


def _drop_nulls(value: Any) -> Any:
    # The API server prunes null values of non-nullable fields before defaulting; no field of
    # this API is nullable, so null reads as absent.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def parse_spec(raw: Any) -> ModelDeploymentSpec:
    """Parse and default ``.spec``; raises SpecError for what the CRD would reject."""
    if not isinstance(raw, dict):
        raise SpecError("spec must be an object")
    try:
        # JSON mode: API bodies are JSON, and strict JSON validation takes arrays for tuples.
        return _SPEC.validate_json(json.dumps(_drop_nulls(raw)), strict=True)
    except ValidationError as exc:
        raise SpecError("; ".join(_describe(e) for e in exc.errors(include_url=False))) from None
    except (TypeError, ValueError) as exc:  # not JSON-serialisable
        raise SpecError(f"spec is not a JSON object: {exc}") from None
