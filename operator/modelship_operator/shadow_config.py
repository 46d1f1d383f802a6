"""Push the shadow mirror config to the stable's pods, level-triggered. I/O at the edge.

A shadow step (planning/shadow.py) makes the stable's pods copy a share of their inference
requests to the canary. The server takes that config at runtime on its admin surface (the
container port named planning.children.METRICS_PORT_NAME, 8080 for a pod without one, the same
one analysis scrapes; see canary_metrics.admin_base):

* ``GET /shadow`` -> ``{"url": str|null, "percent": number, "revision": str|null, ...}``
* ``PUT /shadow`` ``{"url": "http://<ip>:<port>", "percent": 20, "revision": "<canary hash>"}``;
  ``{"percent": 0}`` turns it off.

Each reconcile that has a mirror to run, or revisions whose pods may still mirror, reads every
pod's ``GET /shadow`` and PUTs only where it differs: a restarted pod (its config is gone) gets it
at the next pass, a pod already right costs one GET. The mirror's address is the canary role
Service's ``spec.clusterIP`` and port (a Service name would need the pods' DNS search path; the
IP also changes when the Service is re-created, which the next pass notices). Pods are listed
through ``kube`` (the only module that talks to the API server); this module speaks plain HTTP
to the pods. Every pod is tried concurrently with a short timeout: one that cannot be reached
is reported and retried at the next pass, never blocks the reconcile.

The operator's `canary_metrics.AnalysisMemory` (process memory, by ModelDeployment uid) keeps
the revisions whose pods were told to mirror until every one of their pods is seen off, so a
failed "off" is retried even after the plan stopped naming the revision; and what the last "on"
pass achieved, so the analysis of a window in which no stable pod could be configured says so
(`shadow_note`).
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from .canary_metrics import AnalysisMemory, PodLister, admin_base
from .kube import KubeError
from .planning.children import INSTANCE_LABEL, REVISION_LABEL

log = logging.getLogger(__name__)

SHADOW_PATH = "/shadow"
PUSH_TIMEOUT_S = 3.0
MAX_NAMED = 3  # pods named in a message; the rest counted


@dataclass(frozen=True)
class MirrorConfig:
    """What a stable pod should mirror: off when percent is 0."""

    url: str | None = None
    percent: float = 0.0
    revision: str | None = None

    @property
    def on(self) -> bool:
        return self.percent > 0

    def body(self) -> dict[str, Any]:
        percent = int(self.percent) if float(self.percent).is_integer() else self.percent
        return {"url": self.url, "percent": percent, "revision": self.revision} if self.on else {"percent": 0}

    def held_by(self, answer: Any) -> bool:
        """Whether a pod's GET /shadow answer already is this config."""
        if not isinstance(answer, Mapping):
            return False
        try:
            percent = float(answer.get("percent") or 0)
        except (TypeError, ValueError):
            return False
        if not self.on:
            return percent == 0
        return (math.isclose(percent, self.percent) and answer.get("url") == self.url
                and answer.get("revision") == self.revision)


OFF = MirrorConfig()


@dataclass
class PushReport:
    """One pass over the pods of one revision."""

    revision: str
    config: MirrorConfig
    held: list[str] = field(default_factory=list)  # pods that hold the config now
    changed: list[str] = field(default_factory=list)  # pods PUT in this pass (also in held)
    errors: list[str] = field(default_factory=list)  # "pod: why", tried again at the next pass
    waiting: int = 0  # pods not ready (an "on" pass configures ready pods only)

    @property
    def complete(self) -> bool:
        """Nothing to retry (a pod not ready yet is configured when it is: its Deployment's status
        change brings the next reconcile)."""
        return not self.errors

    def summary(self) -> str:
        shown = "; ".join(self.errors[:MAX_NAMED])
        more = f" (and {len(self.errors) - MAX_NAMED} more)" if len(self.errors) > MAX_NAMED else ""
        return shown + more


def shadow_note(memory: AnalysisMemory, uid: str) -> str | None:
    """Why the current shadow window cannot count: no stable pod could be configured to mirror."""
    report = memory.last_on.get(uid)
    if not isinstance(report, PushReport) or report.held:
        return None
    why = report.summary() or (f"{report.waiting} stable pod(s) not ready" if report.waiting
                               else "no running stable pod")
    return f"no stable pod could be configured to mirror to the canary: {why}"


def mirror_url(service: Mapping[str, Any] | None, port_name: str = "http") -> str | None:
    """`http://<clusterIP>:<port>` of a Service, None while it has no cluster IP."""
    spec = (service or {}).get("spec") or {}
    ip = spec.get("clusterIP")
    if not ip or ip == "None":
        return None
    ports = spec.get("ports") or ()
    port = next((p.get("port") for p in ports if p.get("name") == port_name), None)
    port = port or next((p.get("port") for p in ports), None)
    if not port:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{int(port)}"


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def _one(client: httpx.AsyncClient, name: str, base: str, config: MirrorConfig) -> tuple[bool, str | None]:
    """(changed, error) for one pod: read its config, PUT the wanted one where it differs."""
    url = base + SHADOW_PATH
    try:
        got = await client.get(url)
        if got.status_code == 404:  # a server without shadow support mirrors nothing
            return False, None if not config.on else f"{name}: the server has no {SHADOW_PATH} (an older image?)"
        if got.status_code != 200:
            return False, f"{name}: GET {SHADOW_PATH}: HTTP {got.status_code}"
        if config.held_by(got.json()):
            return False, None
        put = await client.put(url, json=config.body())
        if put.status_code // 100 != 2:
            return False, f"{name}: PUT {SHADOW_PATH}: HTTP {put.status_code}: {put.text[:200]}"
        return True, None
    except (httpx.HTTPError, ValueError) as exc:
        return False, f"{name}: {type(exc).__name__}: {exc}".rstrip(": ")


async def push(pods: list[Mapping[str, Any]], revision: str, config: MirrorConfig, *,
               client: httpx.AsyncClient | None = None, timeout: float = PUSH_TIMEOUT_S) -> PushReport:
    """Bring every pod of `pods` to `config` (ready ones only when turning it on: a pod that is
    not ready serves nothing to mirror; any running one when turning it off)."""
    if client is None:
        async with httpx.AsyncClient(timeout=timeout) as own:
            return await push(pods, revision, config, client=own, timeout=timeout)
    report = PushReport(revision, config)
    targets: dict[str, str] = {}
    for pod in pods:
        name = str((pod.get("metadata") or {}).get("name"))
        base = admin_base(pod)
        if base is None:
            continue  # no IP or going away: it has no config to hold
        if config.on and not _ready(pod):
            report.waiting += 1
            continue
        targets[name] = base
    answers = await asyncio.gather(*(_one(client, name, base, config) for name, base in targets.items()))
    for name, (changed, error) in zip(targets, answers):
        if error is not None:
            report.errors.append(error)
        else:
            report.held.append(name)
            if changed:
                report.changed.append(name)
    return report


async def _revision_pods(kube: PodLister, namespace: str, name: str, revision: str) -> list[dict[str, Any]]:
    return await kube.list("v1", "Pod", namespace, {INSTANCE_LABEL: name, REVISION_LABEL: revision})


async def sync(kube: Any, memory: AnalysisMemory, *, uid: str, namespace: str, name: str,
               on: tuple[str, str, int, str] | None, off: tuple[str, ...],
               timeout: float = PUSH_TIMEOUT_S) -> list[PushReport]:
    """One level-triggered pass. `on`: (stable revision, canary role Service, percent, canary
    hash) to mirror now; `off`: revisions whose pods must not mirror. Returns the reports (an
    incomplete one is retried at the next pass); raises nothing but the caller's cancellation:
    API errors are reported like unreachable pods."""
    reports: list[PushReport] = []
    where = {"object": {"namespace": namespace, "name": name}}
    mirroring = memory.mirroring.setdefault(uid, set())
    offs = sorted((set(off) | mirroring) - ({on[0]} if on else set()))
    async with httpx.AsyncClient(timeout=timeout) as client:
        if on is not None:
            stable, service_name, percent, canary = on
            report = PushReport(stable, OFF)
            try:
                # Listed (not read by name): the operator may list, not get, Services, and only
                # a Service this ModelDeployment controls is trusted as the mirror's target.
                owned = await kube.owned("v1", "Service", namespace, uid, {INSTANCE_LABEL: name})
                url = mirror_url(next((o for o in owned if (o.get("metadata") or {}).get("name") == service_name),
                                      None))
                if url is None:
                    report.errors.append(f"Service {service_name} has no cluster IP yet")
                else:
                    mirroring.add(stable)  # from now on its pods may mirror until seen off
                    report = await push(await _revision_pods(kube, namespace, name, stable), stable,
                                        MirrorConfig(url, float(percent), canary), client=client)
            except KubeError as exc:  # retried at the next pass
                report.errors.append(f"{type(exc).__name__}: {exc}")
            memory.last_on[uid] = report
            reports.append(report)
        else:
            memory.last_on.pop(uid, None)
        for revision in offs:
            try:
                report = await push(await _revision_pods(kube, namespace, name, revision), revision, OFF,
                                    client=client)
            except KubeError as exc:
                report = PushReport(revision, OFF, errors=[f"{type(exc).__name__}: {exc}"])
            if report.complete:
                mirroring.discard(revision)
            reports.append(report)
    if not mirroring:
        memory.mirroring.pop(uid, None)
    for report in reports:
        if report.changed:
            log.info("shadow of %s/%s: %s pod(s) of revision %s set to %s", namespace, name, len(report.changed),
                     report.revision, f"{report.config.percent:g}% -> {report.config.url}" if report.config.on
                     else "off", extra=where)
        if report.errors:
            log.warning("shadow of %s/%s: revision %s: %s", namespace, name, report.revision, report.summary(),
                        extra=where)
    return reports
