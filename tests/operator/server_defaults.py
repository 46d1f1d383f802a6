"""What the real API server fills in or rewrites when it stores a built-in object.

Used by the doubles (kube_double.ObjectStore) so the operator's "no write when nothing changed"
is tested against objects as a real cluster returns them: `protocol: TCP` and `targetPort` on
Service ports, a `clusterIP`, Deployment `strategy` / `revisionHistoryLimit` /
`progressDeadlineSeconds`, pod-template and container defaults, and resource quantities in
canonical form ("1000m" -> "1", "0.5" -> "500m", "1024Mi" -> "1Gi"). Only the defaults of the
kinds the operator renders; values are those of Kubernetes 1.30+ (pkg/apis/*/v1/defaults.go).
"""
from __future__ import annotations

import itertools
from decimal import Decimal, InvalidOperation
from typing import Any

_BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
_DECIMAL = (("E", 10**18), ("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3), ("", 1))
_ips = itertools.count(10)


def _parse_quantity(text: str) -> tuple[Decimal, bool]:
    """(value, binary suffix family?) of a quantity string; raises InvalidOperation if not one."""
    for suffix, size in _BINARY:
        if text.endswith(suffix):
            return Decimal(text[:-2]) * size, True
    if text.endswith("m"):
        return Decimal(text[:-1]) / 1000, False
    for suffix, size in _DECIMAL:
        if suffix and text.endswith(suffix):
            return Decimal(text[:-1]) * size, False
    return Decimal(text), False


def canonical_quantity(value: Any) -> Any:
    """A resource quantity as the API server serialises it (the suffix family of the input)."""
    try:
        number, binary = _parse_quantity(str(value).strip())
    except InvalidOperation:
        return value  # not a quantity: the real server would reject it; leave it for the test to see
    if number == 0:
        return "0"
    if number == number.to_integral_value():
        for suffix, size in _BINARY if binary else _DECIMAL:
            if number % size == 0:
                return f"{int(number // size)}{suffix}"
        return str(int(number))
    milli = number * 1000
    if milli == milli.to_integral_value():
        return f"{int(milli)}m"
    return f"{int((number * 10**9).to_integral_value())}n"


def _resources(resources: Any) -> None:
    if not isinstance(resources, dict):
        return
    for part in ("requests", "limits"):
        values = resources.get(part)
        if isinstance(values, dict):
            for key, value in list(values.items()):
                values[key] = canonical_quantity(value)


def _probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                       ("failureThreshold", 3)):
        probe.setdefault(key, value)
    if isinstance(probe.get("httpGet"), dict):
        probe["httpGet"].setdefault("scheme", "HTTP")


def _container(container: dict) -> None:
    image = str(container.get("image", ""))
    tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else "digest"
    container.setdefault("imagePullPolicy", "Always" if tag in ("", "latest") else "IfNotPresent")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    _resources(container["resources"])
    for port in container.get("ports") or ():
        port.setdefault("protocol", "TCP")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        _probe(container.get(probe))
    for env in container.get("env") or ():
        ref = (env.get("valueFrom") or {}).get("fieldRef")
        if isinstance(ref, dict):
            ref.setdefault("apiVersion", "v1")


def pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]:
        _container(container)
    for volume in spec.get("volumes") or ():
        if isinstance(volume.get("emptyDir"), dict) and "sizeLimit" in volume["emptyDir"]:
            volume["emptyDir"]["sizeLimit"] = canonical_quantity(volume["emptyDir"]["sizeLimit"])
        for source in ("configMap", "secret"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 420)


def deployment(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {})
    pod_spec(template.setdefault("spec", {}))


def service(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] in ("ClusterIP", "NodePort", "LoadBalancer"):
        if not spec.get("clusterIP"):
            spec["clusterIP"] = f"10.96.{next(_ips) // 250 % 250}.{next(_ips) % 250 + 1}"
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or ():
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    if spec.get("publishNotReadyAddresses") is False:
        del spec["publishNotReadyAddresses"]  # a plain bool with omitempty: false is not stored


def hpa(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("minReplicas", 1)
    if not spec.get("metrics"):
        spec["metrics"] = [{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]


DEFAULTERS = {
    ("apps/v1", "Deployment"): deployment,
    ("v1", "Service"): service,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): hpa,
}


def apply_defaults(api_version: str, kind: str, obj: dict) -> dict:
    """Fill in the server-side defaults of a built-in kind, in place; returns obj."""
    defaulter = DEFAULTERS.get((api_version, kind))
    if defaulter is not None:
        defaulter(obj)
    return obj
