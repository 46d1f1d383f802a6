"""Render the Helm chart with Helm's own engine (helm-python-sdk: Helm's Go SDK, no helm binary)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelship"
RELEASE = "modelship"
NAMESPACE = "modelship-system"

ALL_MONITORING = {
    "podMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "kubeStateMetrics": {"enabled": True},
    "prometheusAdapter": {"enabled": True},
}

# The value sets CI renders, lints and validates.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["ml", "ml-staging"]},
    "monitoring": {"monitoring": ALL_MONITORING, "prometheus": {"url": "http://prometheus-operated.monitoring:9090"}},
    "custom": {
        "operator": {
            "image": {"repository": "registry.example.com/modelship/operator", "digest": "sha256:" + "a" * 64},
            "logLevel": "debug",
            "logFormat": "text",
            "resyncSeconds": 30,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
            "imagePullSecrets": [{"name": "regcred"}],
        },
        "server": {"image": {"repository": "registry.example.com/modelship/server", "tag": "0.1.0-cuda"}},
        "gpuLabelKey": "cloud.google.com/gke-accelerator",
        "serviceAccount": {"name": "ms-op", "annotations": {"iam.gke.io/gcp-service-account": "x@y.iam"}},
        "watchNamespaces": ["team-a"],
        "monitoring": ALL_MONITORING | {"podMonitor": {"enabled": True, "namespaces": ["team-a"], "labels": {"release": "kps"}}},
    },
}


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt left out)."""
    import helm_python as helm

    chart = helm.Chart.load(CHART)
    out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return {path: text for path, text in out.items() if not path.endswith("NOTES.txt")}


def manifests(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for text in render(values).values():
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
