"""Operator settings, read once from the environment at start-up and passed down."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

# A qualified Kubernetes label key: optional DNS-subdomain prefix, then a name of <= 63 chars.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LOG_FORMATS = ("json", "text")


@dataclass(frozen=True)
class Settings:
    server_image: str = "ghcr.io/modelship/server:0.1.0"
    gpu_label_key: str = "nvidia.com/gpu.product"
    namespaces: tuple[str, ...] = ()  # empty = all namespaces
    log_format: str = "json"  # json | text
    resync_seconds: float = 60.0
    prometheus_url: str | None = None
    # How often Prometheus scrapes the model pods (the ServiceMonitor's interval); PromQL analysis
    # windows reach back at least four of these (analysis.query_window).
    prometheus_scrape_interval: float = 30.0
    field_manager: str = "modelship-operator"
    cluster_domain: str = "cluster.local"  # "" = short service URLs (<name>.<ns>.svc)
    # Leader election: only the holder of the Lease <lease_name> acts (runtime/leader.py).
    leader_election: bool = True
    lease_name: str = "modelship-operator"
    lease_namespace: str | None = None  # None: the operator's own namespace
    lease_seconds: float = 15.0  # how long a silent holder keeps the Lease

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        """Build settings from MODELSHIP_* variables; unset or blank means the default.

        Raises ValueError naming the variable when a value is invalid.
        """
        d = cls()

        def get(key: str) -> str | None:
            value = env.get(f"MODELSHIP_{key}")
            return value.strip() if value is not None and value.strip() else None

        server_image = get("SERVER_IMAGE") or d.server_image
        if any(c.isspace() for c in server_image):
            raise ValueError(f"MODELSHIP_SERVER_IMAGE must be an image reference, got {server_image!r}")

        gpu_label_key = get("GPU_LABEL_KEY") or d.gpu_label_key
        if not _LABEL_KEY.match(gpu_label_key):
            raise ValueError(
                f"MODELSHIP_GPU_LABEL_KEY must be a Kubernetes label key "
                f"(e.g. nvidia.com/gpu.product), got {gpu_label_key!r}"
            )

        namespaces = d.namespaces
        raw_ns = get("NAMESPACES")
        if raw_ns:
            names = [n.strip() for n in raw_ns.split(",") if n.strip()]
            bad = [n for n in names if not _NAMESPACE.match(n)]
            if bad:
                raise ValueError(f"MODELSHIP_NAMESPACES has invalid namespace names: {', '.join(bad)}")
            namespaces = tuple(dict.fromkeys(names))  # de-duplicated, order kept

        log_format = (get("LOG_FORMAT") or d.log_format).lower()
        if log_format not in LOG_FORMATS:
            raise ValueError(f"MODELSHIP_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")

        resync_seconds = d.resync_seconds
        raw_resync = get("RESYNC_SECONDS")
        if raw_resync:
            try:
                resync_seconds = float(raw_resync)
            except ValueError:
                raise ValueError(f"MODELSHIP_RESYNC_SECONDS must be a number of seconds, got {raw_resync!r}") from None
            if not math.isfinite(resync_seconds) or resync_seconds <= 0:
                raise ValueError(f"MODELSHIP_RESYNC_SECONDS must be a positive number, got {raw_resync!r}")

        prometheus_url = get("PROMETHEUS_URL")
        if prometheus_url is not None:
            if not re.match(r"^https?://[^\s/]+", prometheus_url):
                raise ValueError(f"MODELSHIP_PROMETHEUS_URL must be an http(s):// URL, got {prometheus_url!r}")
            prometheus_url = prometheus_url.rstrip("/")

        scrape_interval = d.prometheus_scrape_interval
        raw_scrape = get("PROMETHEUS_SCRAPE_INTERVAL")
        if raw_scrape:
            m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)?", raw_scrape)
            scrape_interval = float(m.group(1)) * {"ms": 0.001, "m": 60.0}.get(m.group(2) or "s", 1.0) if m else 0.0
            if scrape_interval < 1:
                raise ValueError(f"MODELSHIP_PROMETHEUS_SCRAPE_INTERVAL must be a duration of at least 1s "
                                 f"such as 30s or 1m, got {raw_scrape!r}")

        field_manager = get("FIELD_MANAGER") or d.field_manager
        if len(field_manager) > 128 or any(c.isspace() for c in field_manager):
            raise ValueError(f"MODELSHIP_FIELD_MANAGER must be a short name without spaces, got {field_manager!r}")

        cluster_domain = d.cluster_domain
        if "MODELSHIP_CLUSTER_DOMAIN" in env:
            # Set but blank deliberately selects short URLs; unset keeps the default.
            cluster_domain = env["MODELSHIP_CLUSTER_DOMAIN"].strip().strip(".").lower()
            if cluster_domain and not _DOMAIN.match(cluster_domain):
                raise ValueError(f"MODELSHIP_CLUSTER_DOMAIN must be a DNS domain, got {env['MODELSHIP_CLUSTER_DOMAIN']!r}")

        leader_election = d.leader_election
        raw_election = get("LEADER_ELECTION")
        if raw_election is not None:
            if raw_election.lower() not in ("true", "false"):
                raise ValueError(f"MODELSHIP_LEADER_ELECTION must be true or false, got {raw_election!r}")
            leader_election = raw_election.lower() == "true"

        lease_name = get("LEASE_NAME") or d.lease_name
        if not _NAMESPACE.match(lease_name):  # a DNS label, like a namespace name
            raise ValueError(f"MODELSHIP_LEASE_NAME must be a DNS label, got {lease_name!r}")
        lease_namespace = get("LEASE_NAMESPACE")
        if lease_namespace is not None and not _NAMESPACE.match(lease_namespace):
            raise ValueError(f"MODELSHIP_LEASE_NAMESPACE must be a namespace name, got {lease_namespace!r}")

        lease_seconds = d.lease_seconds
        raw_lease = get("LEASE_SECONDS")
        if raw_lease:
            try:
                lease_seconds = float(raw_lease)
            except ValueError:
                raise ValueError(f"MODELSHIP_LEASE_SECONDS must be a number of seconds, got {raw_lease!r}") from None
            if not math.isfinite(lease_seconds) or lease_seconds < 1:
                raise ValueError(f"MODELSHIP_LEASE_SECONDS must be at least 1, got {raw_lease!r}")

        return cls(
            server_image=server_image,
            gpu_label_key=gpu_label_key,
            namespaces=namespaces,
            log_format=log_format,
            resync_seconds=resync_seconds,
            prometheus_url=prometheus_url,
            prometheus_scrape_interval=scrape_interval,
            field_manager=field_manager,
            cluster_domain=cluster_domain,
            leader_election=leader_election,
            lease_name=lease_name,
            lease_namespace=lease_namespace,
            lease_seconds=lease_seconds,
        )
