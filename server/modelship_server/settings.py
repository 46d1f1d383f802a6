"""Server settings: one frozen object, built from the environment (and CLI flags)."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from .shadow import ShadowConfig, ShadowConfigError, make_config

PREFIX = "MODELSHIP_"
FORMATS = ("auto", "torchscript", "torch-export")
PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
AUDIT_LOGS = ("off", "stdout")
AUDIT_INPUTS = ("none", "digest", "summary", "raw")


class SettingsError(ValueError):
    """A setting has an invalid value."""


def default_torch_threads() -> int:
    """Leave one core to the event loop (JSON, HTTP); torch gets the rest, capped at 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores - 1, 8))


@dataclass(frozen=True)
class Settings:
    model_uri: str = ""
    model_name: str = ""  # default: the signature's name, else "model"
    model_version: str = ""  # default: the signature's "version", else "1"
    model_format: str = "auto"
    signature: str = ""  # path to a signature JSON; default: signature.json next to the model
    model_dir: str = "/tmp/modelship-model"  # download target for http(s):// and s3:// URIs
    max_batch_size: int = 32  # rows per forward pass
    max_delay_ms: float = 5.0  # the oldest queued request waits at most this long for batch-mates
    max_queue: int = 2048  # queued rows before shedding with 503 (64 clients x 32 rows fit)
    timeout_ms: float = 30000.0  # per request, queue + compute
    max_batch_rows: int = 1024  # most rows a single request may carry
    precision: str = "fp32"
    device: str = "auto"
    torch_threads: int = 0  # 0: default_torch_threads()
    host: str = "0.0.0.0"
    port: int = 8080
    log_level: str = "info"
    # A private port for /metrics, /feedback, /drift and the API docs (not inference); 0 = off:
    # everything on `port`. Health answers on both. (docs/operations.md, "Admin port")
    admin_port: int = 0
    # Most bytes of a request body; 0 = derived from max_batch_rows and the signature's row size.
    max_body_bytes: int = 0
    # -- model download (fetch.py; the init container reads the same variables) --
    model_sha256: str = ""  # expected sha256 (hex) of the model file; "" = not checked
    model_max_bytes: int = 0  # most bytes one download may write (all its files); 0 = no limit
    fetch_deadline_s: float = 3600.0  # the whole download, all files, within this; 0 = none
    allow_insecure_http: bool = False  # plain http:// model URIs (and redirects to them)
    # -- monitoring (docs/monitoring.md) --
    # "" = reference_profile.json next to the model (drift off when there is none); "off";
    # a path (relative: inside the model's directory) or an http(s):// or s3:// URI.
    drift_reference: str = ""
    drift_window: int = 1000  # newest input rows kept for scoring
    drift_interval_s: float = 30.0  # seconds between drift computations (off the request path)
    drift_threshold: float = 0.2  # a feature with PSI >= this is flagged
    drift_ks_threshold: float = 0.0  # also flag KS >= this; 0 = PSI only
    drift_min_rows: int = 200  # fewer rows in the window: inconclusive, no flags
    drift_max_bytes: int = 16 << 20  # memory budget of the drift window: rows kept <= this / (features x 4)
    feedback_ttl_s: float = 3600.0  # how long a prediction waits for its ground truth
    feedback_max_entries: int = 100000  # pending predictions kept; 0 = feedback off
    feedback_max_rows: int = 1000000  # pending prediction rows kept
    feedback_window: int = 1000  # matched rows behind the rolling accuracy / MAE
    feedback_max_bytes: int = 32 << 20  # memory budget of pending predictions + remembered ids
    # When set, POST /feedback needs "Authorization: Bearer <token>" (peers send it too).
    feedback_token: str = ""
    # Other pods to ask about an id this pod does not know: host:port list, or a DNS name
    # (host:port) whose A records are the pods, e.g. a headless Service. "" = none.
    feedback_peers: str = ""
    feedback_peer_timeout_ms: float = 500.0
    audit_log: str = "off"  # off | stdout
    audit_file: str = ""  # also (or only) append the audit lines to this file
    audit_sample_rate: float = 1.0  # share of successful requests logged (errors always are)
    audit_inputs: str = "none"  # none | digest | summary | raw
    audit_mask: str = ""  # comma-separated field names whose values are written as "***"
    audit_max_bytes: int = 8 << 20  # memory budget of audit lines waiting for the writer (then dropped)
    # -- shadow mirroring (shadow.py; README "Shadow comparison"): the startup default of what
    # PUT /shadow sets at runtime. Send shadow_percent of the successful inference requests to
    # shadow_url (http(s)://host[:port]) and compare; metrics are labelled shadow_revision.
    shadow_url: str = ""
    shadow_percent: float = 0.0
    shadow_revision: str = ""
    shadow_max_queue: int = 64  # mirrors waiting to be sent; then dropped and counted
    shadow_max_bytes: int = 16 << 20  # memory of queued and in-flight mirrors (body + kept outputs)
    shadow_timeout_ms: float = 5000.0  # per mirrored request
    shadow_concurrency: int = 4  # mirrors in flight at once

    def __post_init__(self) -> None:
        checks = [
            (self.model_format in FORMATS, f"model_format must be one of {FORMATS}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.device in DEVICES, f"device must be one of {DEVICES}"),
            (self.max_batch_size >= 1, "max_batch_size must be >= 1"),
            (self.max_delay_ms >= 0, "max_delay_ms must be >= 0"),
            (self.max_queue >= 1, "max_queue must be >= 1"),
            (self.timeout_ms > 0, "timeout_ms must be > 0"),
            (self.max_batch_rows >= 1, "max_batch_rows must be >= 1"),
            (self.torch_threads >= 0, "torch_threads must be >= 0"),
            (0 <= self.port <= 65535, "port must be in 0..65535"),
            (0 <= self.admin_port <= 65535, "admin_port must be in 0..65535 (0 = off)"),
            (not self.admin_port or self.admin_port != self.port, "admin_port must differ from port"),
            (self.max_body_bytes >= 0, "max_body_bytes must be >= 0 (0 = derived)"),
            (self.model_max_bytes >= 0, "model_max_bytes must be >= 0 (0 = no limit)"),
            (self.fetch_deadline_s >= 0, "fetch_deadline_s must be >= 0 (0 = none)"),
            (self.model_sha256 == "" or (len(self.model_sha256) == 64 and all(c in "0123456789abcdefABCDEF" for c in self.model_sha256)),
             "model_sha256 must be 64 hex digits"),
            (self.drift_window >= 1, "drift_window must be >= 1"),
            (self.drift_interval_s > 0, "drift_interval_s must be > 0"),
            (self.drift_threshold > 0, "drift_threshold must be > 0"),
            (0 <= self.drift_ks_threshold <= 1, "drift_ks_threshold must be in 0..1 (0 = off)"),
            (self.drift_min_rows >= 1, "drift_min_rows must be >= 1"),
            (self.feedback_ttl_s > 0, "feedback_ttl_s must be > 0"),
            (self.feedback_max_entries >= 0, "feedback_max_entries must be >= 0 (0 = feedback off)"),
            (self.feedback_max_rows >= 1, "feedback_max_rows must be >= 1"),
            (self.feedback_window >= 1, "feedback_window must be >= 1"),
            (self.feedback_max_bytes >= 1, "feedback_max_bytes must be >= 1"),
            (self.audit_max_bytes >= 1, "audit_max_bytes must be >= 1"),
            (self.drift_max_bytes >= 1, "drift_max_bytes must be >= 1"),
            (all(32 < ord(c) < 127 for c in self.feedback_token), "feedback_token must be printable ASCII without spaces"),
            (self.feedback_peer_timeout_ms > 0, "feedback_peer_timeout_ms must be > 0"),
            (self.audit_log in AUDIT_LOGS, f"audit_log must be one of {AUDIT_LOGS}"),
            (0 <= self.audit_sample_rate <= 1, "audit_sample_rate must be in 0..1"),
            (self.audit_inputs in AUDIT_INPUTS, f"audit_inputs must be one of {AUDIT_INPUTS}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        checks = [
            (self.shadow_max_queue >= 1, "shadow_max_queue must be >= 1"),
            (self.shadow_max_bytes >= 1, "shadow_max_bytes must be >= 1"),
            (self.shadow_timeout_ms > 0, "shadow_timeout_ms must be > 0"),
            (self.shadow_concurrency >= 1, "shadow_concurrency must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        try:  # each field alone; that a percent > 0 has a url: shadow_config
            make_config(self.shadow_url or None, self.shadow_percent, self.shadow_revision or None, require_url=False)
        except ShadowConfigError as e:
            raise SettingsError(f"shadow: {e}") from None
        for peer in self.feedback_peer_list:
            host, sep, port = peer.rpartition(":")
            if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
                raise SettingsError(f"feedback_peers: {peer!r} is not host:port")

    @property
    def threads(self) -> int:
        return self.torch_threads or default_torch_threads()

    @property
    def audit_enabled(self) -> bool:
        return self.audit_log != "off" or bool(self.audit_file)

    @property
    def audit_mask_fields(self) -> list[str]:
        return [f.strip() for f in self.audit_mask.split(",") if f.strip()]

    @property
    def shadow_config(self) -> ShadowConfig:
        """What to mirror at startup; SettingsError when a percent > 0 has no url."""
        try:
            return make_config(self.shadow_url or None, self.shadow_percent, self.shadow_revision or None)
        except ShadowConfigError as e:
            raise SettingsError(f"shadow: {e}") from None

    @property
    def feedback_peer_list(self) -> list[str]:
        return [p.strip() for p in self.feedback_peers.split(",") if p.strip()]

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name -> environment variable name."""
        return {f.name: PREFIX + f.name.upper() for f in fields(cls)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return cls().override(
            {name: env[var] for name, var in cls.env_names().items() if env.get(var, "") != ""}
        )

    def override(self, values: Mapping[str, Any]) -> Settings:
        """A copy with `values` (strings are converted to each field's type)."""
        types = {f.name: f.type for f in fields(self)}
        converted: dict[str, Any] = {}
        for name, value in values.items():
            if name not in types:
                raise SettingsError(f"unknown setting {name!r}")
            if value is None:
                continue
            converted[name] = _convert(name, types[name], value)
        return replace(self, **converted)


def _convert(name: str, typ: Any, value: Any) -> Any:
    typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if typ == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}: expected true or false, got {value!r}")
    try:
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: expected a number, got {value!r}") from None
    return str(value)
