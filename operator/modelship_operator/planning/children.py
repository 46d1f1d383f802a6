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
SERVER_PORT = 8080  # inference: the only port the Services `<name>`, role Services and HTTPRoute expose
# The server's private admin surface (/metrics, /feedback, /drift): a container port of this
# name on spec.server.adminPort. Prometheus (ServiceMonitor through the headless peers Service,
# the chart's PodMonitor), the operator's analysis scrape (canary_metrics) and feedback peers
# use it; clients never reach it through a Service or route.
ADMIN_PORT_NAME = "admin"
METRICS_PORT_NAME = ADMIN_PORT_NAME
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


def feedback_peers(name: str, namespace: str, settings: Settings, admin_port: int) -> str:
    """MODELSHIP_FEEDBACK_PEERS: one DNS name whose A records are the ready pods of every
    revision, so feedback for a canary's prediction is joined wherever the Service sent it;
    on the admin port, where the servers answer /feedback."""
    host = f"{peers_service(name)}.{namespace}.svc"
    if settings.cluster_domain:
        host += f".{settings.cluster_domain}"
    return f"{host}:{admin_port}"


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
