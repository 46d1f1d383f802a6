"""Names, labels, selectors and the owner reference shared by every child of a ModelDeployment. Pure."""
from __future__ import annotations

from typing import Mapping

from ..settings import Settings
from ..spec import API_VERSION, KIND, ModelDeployment

MANAGED_BY = "modelship-operator"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
REVISION_LABEL = "modelship.dev/revision"
APPLIED_HASH = "modelship.dev/applied-hash"  # on every child: reconcile skips unchanged applies
ROLE_LABEL = "modelship.dev/role"
SERVER_PORT = 8080
# The container port Prometheus and the operator's analysis read /metrics from (by name): the
# Deployment template declares it, the ServiceMonitor and canary_metrics use it.
METRICS_PORT_NAME = "http"
METRICS_PATH = "/metrics"


def common_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelship",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "modelship", "app.kubernetes.io/instance": name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def service_url(name: str, namespace: str, settings: Settings) -> str:
    host = f"{name}.{namespace}.svc"
    if settings.cluster_domain:
        host += f".{settings.cluster_domain}"
    return f"http://{host}:{SERVER_PORT}"


def peers_service(name: str) -> str:
    return f"{name}-peers"


def feedback_peers(name: str, namespace: str, settings: Settings) -> str:
    """MODELSHIP_FEEDBACK_PEERS: one DNS name whose A records are the ready pods of every
    revision, so feedback for a canary's prediction is joined wherever the Service sent it."""
    host = f"{peers_service(name)}.{namespace}.svc"
    if settings.cluster_domain:
        host += f".{settings.cluster_domain}"
    return f"{host}:{SERVER_PORT}"


def owner_reference(md: ModelDeployment) -> Mapping:
    # Offline (a file without metadata.uid) there is no owner to reference yet.
    if not md.uid:
        return {}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": md.name,
        "uid": md.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
