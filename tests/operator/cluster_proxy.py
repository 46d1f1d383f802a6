"""Reach pods of a real cluster through the API server's pod proxy.

`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH` works on every cluster (kind, a local
control plane, a cloud one) without kube-proxy, cluster DNS or a route to pod IPs, so the
cluster end-to-end tests send their traffic and read the pods' `/metrics` this way. The
client authenticates as the kubeconfig does (modelship_operator.kube.Connection).
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from modelship_operator.kube import Connection
from modelship_operator.planning.children import METRICS_PATH, METRICS_PORT_NAME, SERVER_PORT


def proxy_path(namespace: str, pod: str, port: int, path: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/{path.lstrip('/')}"


def metrics_port(pod: Mapping[str, Any]) -> int:
    """The container port named like the operator's metrics port (admin), else the server port."""
    for container in (pod.get("spec") or {}).get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == METRICS_PORT_NAME and port.get("containerPort"):
                return int(port["containerPort"])
    return SERVER_PORT


def is_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def parse_counters(text: str) -> dict[str, float]:
    """`modelship_requests_total` by its code label (summed over the other labels)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("modelship_requests_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        code = next((part.split("=", 1)[1].strip('"') for part in labels[labels.index("{") + 1:-1].split(",")
                     if part.split("=", 1)[0] == "code"), "")
        out[code] = out.get(code, 0.0) + float(value)
    return out


class PodProxy:
    """An async client for the pod proxy of one API server (use `async with`)."""

    def __init__(self, connection: Connection, timeout: float = 20.0) -> None:
        headers = {"Authorization": f"Bearer {connection.bearer_token()}"} if connection.bearer_token() else {}
        self._client = httpx.AsyncClient(base_url=connection.server, verify=connection.ssl_context(),
                                         headers=headers, timeout=timeout,
                                         limits=httpx.Limits(max_connections=16))

    async def __aenter__(self) -> "PodProxy":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def get(self, namespace: str, pod: str, path: str, port: int = SERVER_PORT) -> httpx.Response:
        return await self._client.get(proxy_path(namespace, pod, port, path))

    async def post(self, namespace: str, pod: str, path: str, body: Any, port: int = SERVER_PORT) -> httpx.Response:
        return await self._client.post(proxy_path(namespace, pod, port, path), json=body)

    async def metrics(self, namespace: str, pod: Mapping[str, Any]) -> dict[str, float]:
        """The pod's request counters by status code, read from its own /metrics."""
        rsp = await self.get(namespace, pod["metadata"]["name"], METRICS_PATH, metrics_port(pod))
        rsp.raise_for_status()
        return parse_counters(rsp.text)

    async def drive(self, namespace: str, pods: Iterable[str], body_for: Any, n: int,
                    concurrency: int = 4) -> dict[str, dict[int, int]]:
        """n POST /predict to each pod (bounded concurrency); status codes counted per pod
        (0: no answer: the proxy or the pod did not respond)."""
        names = list(pods)
        codes: dict[str, dict[int, int]] = {p: {} for p in names}
        gate = asyncio.Semaphore(concurrency)

        async def one(pod: str, i: int) -> None:
            async with gate:
                try:
                    code = (await self.post(namespace, pod, "/predict", {"features": body_for(i)})).status_code
                except httpx.HTTPError:
                    code = 0
            codes[pod][code] = codes[pod].get(code, 0) + 1

        await asyncio.gather(*(one(p, i) for p in names for i in range(n)))
        return codes
