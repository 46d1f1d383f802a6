"""The pod template of one revision: image, model source, env, resources, GPUs, scheduling. Pure.

Everything here is derived from the pod-shaping part of the spec (`revisions.SHAPING_KEYS`)
plus the operator's settings. A revision's identity covers only the user's intent in that part
(`revisions.intent`): what is derived here (the default image, env, probes) may change with an
operator upgrade, which rolls each Deployment in place (maxUnavailable 0), never a new revision.
"""
from __future__ import annotations

import math
import posixpath
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Mapping

from ..settings import Settings
from ..spec import ModelDeployment, MonitoringSpec, parse_duration
from .children import SERVER_PORT, feedback_peers
from .values import jsonable

MODEL_MOUNT = "/mnt/models"  # PVC mount or download target inside the pod

# Probe budget: a model may take up to 15 minutes to download, load and warm up.
STARTUP_PERIOD_S = 10
STARTUP_FAILURES = 90
PRE_STOP_SLEEP_S = 5  # lets endpoint controllers drop the pod before SIGTERM arrives
GPU_TAINT_KEY = "nvidia.com/gpu"
# spec.model.maxBytes unset: the largest download the init container accepts (and what sizes
# the download volume). Large enough for any single-GPU TorchScript model, small enough that a
# wrong URL cannot fill a node's disk.
DEFAULT_MODEL_MAX_BYTES = 16 << 30
# The download volume holds the model plus its signature.json / reference_profile.json and
# the filesystem's own overhead: maxBytes + 10 % + 64 MiB, in whole MiB.
VOLUME_SLACK_RATIO, VOLUME_SLACK_BYTES = 0.10, 64 << 20
_SIZE_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
               "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([KMGTPE]i|[kMGTPE])?$")


@dataclass(frozen=True)
class ModelSource:
    """Where the server finds the model inside the pod."""

    kind: str  # image | pvc | download
    uri: str  # as written in the spec
    server_uri: str  # MODELSHIP_MODEL_URI as the server sees it
    claim: str | None = None  # pvc: the claim, mounted read-only at mount_path
    mount_path: str = MODEL_MOUNT  # pvc and download: where the model volume is mounted
    fetch_command: tuple[str, ...] = ()  # download: the init container's command
    volume_size_limit: str = ""  # download: the emptyDir's sizeLimit (from the expected size)


@dataclass(frozen=True)
class RevisionPlan:
    """One revision: one Deployment named `<name>-<hash>`."""

    name: str
    hash: str
    number: int
    role: str  # stable | canary
    replicas: int
    version: str
    uri: str
    image: str
    env: tuple[Mapping, ...]  # the complete container env, server settings first
    user_env: tuple[Mapping, ...]  # the user's own variables (credentials for the init container)
    resources: Mapping  # container requests/limits, GPUs included
    node_selector: Mapping
    tolerations: tuple[Mapping, ...]
    affinity: Mapping
    priority_class_name: str
    model: ModelSource
    termination_grace_seconds: int
    progress_deadline_seconds: int
    startup_period_seconds: int = STARTUP_PERIOD_S
    startup_failure_threshold: int = STARTUP_FAILURES
    pre_stop_sleep_seconds: int = PRE_STOP_SLEEP_S
    feedback: bool = False  # the server keeps predictions for feedback (and asks its peers)
    admin_port: int = 9090  # spec.server.adminPort: /metrics, /feedback, /drift (container port "admin")
    # The init container's own settings (download integrity: sha256, byte limit, plain http),
    # before the user's variables.
    fetch_env: tuple[Mapping, ...] = ()


def server_image(md: ModelDeployment, settings: Settings) -> str:
    return md.spec.server.image or settings.server_image


def feedback_enabled(md: ModelDeployment) -> bool:
    # spec.monitoring unset: the server's defaults, in which feedback is on.
    return md.spec.monitoring is None or md.spec.monitoring.feedback.enabled


# The init container runs the server image's own torch-free downloader (the model plus an
# optional signature.json and reference_profile.json next to it), so the server then loads a
# plain local file.
_FETCH_MODULE = "modelship_server.fetch"


def model_source(uri: str, max_bytes: int = DEFAULT_MODEL_MAX_BYTES) -> ModelSource:
    if uri.startswith("pvc://"):
        claim, _, path = uri[len("pvc://"):].partition("/")
        return ModelSource("pvc", uri, f"file://{posixpath.join(MODEL_MOUNT, path)}", claim=claim)
    if uri.startswith(("http://", "https://", "s3://")):
        target = posixpath.join(MODEL_MOUNT, download_name(uri))
        command = ("python", "-m", _FETCH_MODULE, uri, MODEL_MOUNT)
        return ModelSource("download", uri, f"file://{target}", fetch_command=command,
                           volume_size_limit=volume_size_limit(max_bytes))
    return ModelSource("image", uri, uri)


def size_bytes(value: int | str) -> int:
    """Bytes in a size as the API takes it: an integer, or a quantity such as 64Mi, 2G or 1.5Gi
    (the CRD's pattern has already checked the form)."""
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value).strip())
    if match is None:
        raise ValueError(f"{value!r} is not a size such as 64Mi, 2G or 1048576")
    return math.ceil(float(match.group(1)) * _SIZE_UNITS[match.group(2) or ""])


def volume_size_limit(max_bytes: int) -> str:
    """The download volume's sizeLimit: room for the largest download plus slack, in Mi."""
    limit = max_bytes * (1 + VOLUME_SLACK_RATIO) + VOLUME_SLACK_BYTES
    return f"{math.ceil(limit / (1 << 20))}Mi"


def model_max_bytes(md: ModelDeployment) -> int:
    max_bytes = md.spec.model.max_bytes
    return DEFAULT_MODEL_MAX_BYTES if max_bytes is None else size_bytes(max_bytes)


def download_env(md: ModelDeployment) -> dict[str, str]:
    """The download-integrity settings the init container's fetch and the server read alike:
    the expected sha256 (the server also checks a pvc:// or file:// model against it), the byte
    limit of a download, and plain http:// only when the spec allows it."""
    model = md.spec.model
    env: dict[str, str] = {}
    if model.sha256:
        env["MODELSHIP_MODEL_SHA256"] = model.sha256.lower()
    if model.needs_download:
        env["MODELSHIP_MODEL_MAX_BYTES"] = str(model_max_bytes(md))
    if model.allow_insecure_http:
        env["MODELSHIP_ALLOW_INSECURE_HTTP"] = "true"
    return env


def download_name(uri: str) -> str:
    """The file name the server's downloader gives a remote model (its URL path's last part)."""
    return posixpath.basename(urllib.parse.urlparse(uri).path) or "model.pt"


def _cpu_cores(quantity: Any) -> int | None:
    """Whole cores of a CPU quantity ("2", "1500m", 0.5) rounded down, at least 1."""
    if quantity is None:
        return None
    text = str(quantity).strip()
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None
    return max(1, math.floor(cores)) if cores > 0 else None


def _resources(md: ModelDeployment) -> dict[str, dict[str, Any]]:
    raw = jsonable(md.spec.server.resources) or {}
    out: dict[str, dict[str, Any]] = {}
    for part in ("requests", "limits"):
        values = {k: str(v) for k, v in sorted((raw.get(part) or {}).items()) if v is not None}
        if values:
            out[part] = values
    gpu = md.spec.gpu
    if gpu.count > 0:
        # Extended resources cannot be overcommitted: requests must equal limits.
        for part in ("requests", "limits"):
            out.setdefault(part, {})[gpu.resource_name] = str(gpu.count)
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def _threads(md: ModelDeployment, resources: Mapping) -> int | None:
    if md.spec.server.threads:
        return int(md.spec.server.threads)
    limits = resources.get("limits", {})
    requests = resources.get("requests", {})
    return _cpu_cores(limits.get("cpu", requests.get("cpu")))


def _env(md: ModelDeployment, settings: Settings, source: ModelSource, resources: Mapping) -> tuple[Mapping, ...]:
    spec = md.spec
    batching = spec.server.batching
    server: dict[str, str] = {
        "MODELSHIP_MODEL_URI": source.server_uri,
        "MODELSHIP_MODEL_NAME": spec.model.name or md.name,
        "MODELSHIP_MODEL_VERSION": spec.model.version,
        "MODELSHIP_MODEL_FORMAT": spec.model.format,
        "MODELSHIP_MAX_BATCH_SIZE": str(batching.max_batch_size),
        "MODELSHIP_MAX_DELAY_MS": str(batching.max_delay_ms),
        "MODELSHIP_MAX_QUEUE": str(batching.max_queue),
        "MODELSHIP_TIMEOUT_MS": str(batching.timeout_ms),
        "MODELSHIP_MAX_BATCH_ROWS": str(spec.server.max_batch_rows),
        "MODELSHIP_PRECISION": spec.server.precision,
        "MODELSHIP_DEVICE": "cuda" if spec.gpu.count > 0 else "cpu",
        "MODELSHIP_PORT": str(SERVER_PORT),
        "MODELSHIP_ADMIN_PORT": str(spec.server.admin_port),
    }
    server.update(download_env(md))
    threads = _threads(md, resources)
    if threads:
        server["MODELSHIP_TORCH_THREADS"] = str(threads)
    if spec.monitoring is not None:
        server.update(monitoring_env(spec.monitoring))
    if feedback_enabled(md):
        # Not part of the revision hash (it is derived, not spec): adding it rolls pods once.
        server["MODELSHIP_FEEDBACK_PEERS"] = feedback_peers(md.name, md.namespace, settings, spec.server.admin_port)
    # The CRD forbids user variables named MODELSHIP_* and duplicates, so appending is safe
    # for server-side apply (which rejects duplicate names in env).
    env = [{"name": k, "value": v} for k, v in server.items()]
    env.extend(jsonable(spec.server.env) or ())
    return tuple(env)


def _number(value: float) -> str:
    """3.0 -> "3", 0.25 -> "0.25": env values as a person would write them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def monitoring_env(mon: MonitoringSpec) -> dict[str, str]:
    """spec.monitoring as the server's MODELSHIP_DRIFT_* / _FEEDBACK_* / _AUDIT_* settings."""
    drift, feedback, audit = mon.drift, mon.feedback, mon.audit
    reference = drift.reference or ""
    if reference.startswith("file://"):
        reference = reference[len("file://"):]
    env = {
        "MODELSHIP_DRIFT_REFERENCE": reference if drift.enabled else "off",
        "MODELSHIP_DRIFT_WINDOW": str(drift.window),
        "MODELSHIP_DRIFT_INTERVAL_S": _number(parse_duration(drift.interval)),
        "MODELSHIP_DRIFT_THRESHOLD": _number(drift.threshold),
        "MODELSHIP_FEEDBACK_TTL_S": _number(parse_duration(feedback.ttl)),
        # The server turns feedback off with 0 pending entries.
        "MODELSHIP_FEEDBACK_MAX_ENTRIES": str(feedback.max_entries if feedback.enabled else 0),
        "MODELSHIP_FEEDBACK_MAX_BYTES": str(size_bytes(feedback.max_bytes)),
        "MODELSHIP_AUDIT_LOG": "stdout" if audit.enabled else "off",
        "MODELSHIP_AUDIT_SAMPLE_RATE": _number(audit.sample_rate),
        "MODELSHIP_AUDIT_INPUTS": audit.inputs,
        "MODELSHIP_AUDIT_MASK": ",".join(audit.mask_fields),
        "MODELSHIP_AUDIT_MAX_BYTES": str(size_bytes(audit.max_bytes)),
    }
    return env


def _tolerations(md: ModelDeployment) -> tuple[Mapping, ...]:
    tolerations = [
        {k: v for k, v in t.items() if v is not None} for t in jsonable(md.spec.scheduling.tolerations) or ()
    ]
    if md.spec.gpu.count > 0 and not any(t.get("key") == GPU_TAINT_KEY for t in tolerations):
        tolerations.append({"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    return tuple(tolerations)


def _node_selector(md: ModelDeployment, settings: Settings) -> dict[str, str]:
    selector = dict(jsonable(md.spec.scheduling.node_selector) or {})
    if md.spec.gpu.type and md.spec.gpu.count > 0:
        selector[settings.gpu_label_key] = md.spec.gpu.type
    return dict(sorted(selector.items()))


def revision_plan(
    md: ModelDeployment, settings: Settings, hash_: str, number: int, role: str, replicas: int
) -> RevisionPlan:
    image = server_image(md, settings)
    source = model_source(md.spec.model.uri, model_max_bytes(md))
    resources = _resources(md)
    timeout_s = math.ceil(md.spec.server.batching.timeout_ms / 1000)
    return RevisionPlan(
        name=f"{md.name}-{hash_}",
        hash=hash_,
        number=number,
        role=role,
        replicas=replicas,
        version=md.spec.model.version,
        uri=md.spec.model.uri,
        image=image,
        env=_env(md, settings, source, resources),
        user_env=tuple(jsonable(md.spec.server.env) or ()),
        resources=resources,
        node_selector=_node_selector(md, settings),
        tolerations=_tolerations(md),
        affinity=jsonable(md.spec.scheduling.affinity) or {},
        priority_class_name=md.spec.scheduling.priority_class_name or "",
        model=source,
        # preStop pause + the longest a queued request may still take + margin to exit.
        termination_grace_seconds=PRE_STOP_SLEEP_S + timeout_s + 10,
        # Longer than the startup probe's budget, so slow loads are not reported as stuck.
        progress_deadline_seconds=STARTUP_PERIOD_S * STARTUP_FAILURES + 300,
        feedback=feedback_enabled(md),
        admin_port=int(md.spec.server.admin_port),
        fetch_env=tuple({"name": k, "value": v} for k, v in download_env(md).items()),
    )

