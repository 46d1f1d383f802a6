"""Collect one canary analysis: find the pods, scrape or query, take deltas, judge. I/O at the edge.

Two sources, one judgement (`analysis.judge`):

* **Scrape** (default): the pods of a revision are listed through `kube` by their
  `modelship.dev/revision` label; each is read at `http://<podIP>:<container port "admin">/metrics`
  (the server's private admin port, planning.children.METRICS_PORT_NAME; 8080 for a pod without one).
  Counters are cumulative, so a measurement is the delta between two scrapes of the same pod:
  `take_baseline` when the canary starts taking traffic, `measure_scrape` when the window ends
  (which also starts the next window). Baselines live in process memory (`AnalysisMemory`, keyed
  by the ModelDeployment's uid): after an operator restart the first window has no baseline, so
  it is only a baseline and reports inconclusive; the next window is measured.
* **PromQL** (`settings.prometheus_url` set): `analysis.promql_queries` over the window, evaluated
  at its end; no memory is needed, Prometheus keeps the history.

A pod that cannot be scraped is left out of the window (and named in the verdict's reasons);
when no canary pod could be read at all the verdict is inconclusive, never a failure: missing
metrics are no evidence that the canary is bad, and `failureLimit` counts failures only.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from . import analysis as a
from .metrics_source import ScrapeError, query_prometheus, scrape
from .planning.children import INSTANCE_LABEL, METRICS_PATH, METRICS_PORT_NAME, REVISION_LABEL, SERVER_PORT

log = logging.getLogger(__name__)

PORT_NAME = METRICS_PORT_NAME
DEFAULT_PORT = SERVER_PORT  # the server's port when a pod spec names none
SCRAPE_TIMEOUT_S = 5.0
MAX_REASONS = 3  # unreachable pods named in a verdict; the rest counted


class PodLister(Protocol):
    async def list(self, api_version: str, kind: str, namespace: str | None = None,
                   label_selector: Mapping[str, str] | str | None = None) -> list[dict[str, Any]]: ...


def metrics_url(pod: Mapping[str, Any]) -> str | None:
    """`http://<podIP>:<port>/metrics` of a running pod, None while it has no IP or is going away.

    The port is the container port named `METRICS_PORT_NAME` (what the Deployment template
    declares), so a changed port in the template is followed without a setting.
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if not ip or meta.get("deletionTimestamp") or status.get("phase") not in (None, "Running"):
        return None
    port = DEFAULT_PORT
    for container in (pod.get("spec") or {}).get("containers") or ():
        named = [p for p in container.get("ports") or () if p.get("name") == PORT_NAME and p.get("containerPort")]
        if named:
            port = int(named[0]["containerPort"])
            break
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{METRICS_PATH}"


async def pod_urls(kube: PodLister, namespace: str, name: str, revision: str) -> dict[str, str]:
    """{pod name: metrics URL} of one revision's pods that can be scraped now."""
    pods = await kube.list("v1", "Pod", namespace, {INSTANCE_LABEL: name, REVISION_LABEL: revision})
    urls = {}
    for pod in pods:
        url = metrics_url(pod)
        if url:
            urls[pod["metadata"]["name"]] = url
    return urls


@dataclass
class Baseline:
    """The scrapes that start the current analysis window of one ModelDeployment."""

    canary: str  # revision hash being analysed
    stable: str | None
    taken: datetime
    canary_pods: dict[str, a.Snapshot] = field(default_factory=dict)
    stable_pods: dict[str, a.Snapshot] = field(default_factory=dict)


@dataclass
class AnalysisMemory:
    """Per-object scrape baselines, in process memory only (one per ModelDeployment watched)."""

    baselines: dict[str, Baseline] = field(default_factory=dict)  # by ModelDeployment uid

    def has_baseline(self, uid: str, canary: str, stable: str | None) -> bool:
        b = self.baselines.get(uid)
        return b is not None and b.canary == canary and b.stable == stable

    def forget(self, uid: str) -> None:
        self.baselines.pop(uid, None)


async def _scrape_revision(kube: PodLister, namespace: str, name: str, revision: str,
                           timeout: float) -> tuple[dict[str, a.Snapshot], list[str]]:
    urls = await pod_urls(kube, namespace, name, revision)
    answers = await scrape(list(urls.values()), timeout=timeout)
    snapshots: dict[str, a.Snapshot] = {}
    errors: list[str] = []
    for pod, url in urls.items():
        answer = answers[url]
        if isinstance(answer, ScrapeError):
            errors.append(f"{pod}: {answer}")
        else:
            snapshots[pod] = answer
    if errors:
        log.warning("analysis of %s/%s: cannot scrape %s", namespace, name, "; ".join(errors),
                    extra={"object": {"namespace": namespace, "name": name}})
    return snapshots, errors


async def _scrape_both(kube: PodLister, namespace: str, name: str, canary: str, stable: str | None,
                       timeout: float) -> tuple[dict[str, a.Snapshot], list[str], dict[str, a.Snapshot]]:
    canary_pods, canary_errors = await _scrape_revision(kube, namespace, name, canary, timeout)
    stable_pods: dict[str, a.Snapshot] = {}
    if stable is not None and stable != canary:
        stable_pods, _ = await _scrape_revision(kube, namespace, name, stable, timeout)
    return canary_pods, canary_errors, stable_pods


async def take_baseline(kube: PodLister, memory: AnalysisMemory, *, uid: str, namespace: str, name: str,
                        canary: str, stable: str | None, now: datetime,
                        timeout: float = SCRAPE_TIMEOUT_S) -> None:
    """Scrape the start of a window (the canary just took traffic, or the operator restarted)."""
    canary_pods, _, stable_pods = await _scrape_both(kube, namespace, name, canary, stable, timeout)
    memory.baselines[uid] = Baseline(canary, stable, now, canary_pods, stable_pods)


def _unreachable_note(errors: list[str]) -> tuple[str, ...]:
    if not errors:
        return ()
    shown = "; ".join(errors[:MAX_REASONS])
    more = f" (and {len(errors) - MAX_REASONS} more)" if len(errors) > MAX_REASONS else ""
    return (f"{len(errors)} canary pod(s) not scraped: {shown}{more}",)


def _inconclusive(*reasons: str) -> a.Verdict:
    return a.Verdict(a.INCONCLUSIVE, tuple(reasons), a.Measurement(0.0, 0.0, None))


async def measure_scrape(kube: PodLister, memory: AnalysisMemory, limits: a.Limits, *, uid: str,
                         namespace: str, name: str, canary: str, stable: str | None, now: datetime,
                         timeout: float = SCRAPE_TIMEOUT_S) -> a.Verdict:
    """Close the window: scrape again, judge the deltas since the baseline, start the next window.

    Without a baseline for this canary (the operator restarted meanwhile) this scrape only
    becomes the baseline and the window is inconclusive.
    """
    baseline = memory.baselines.get(uid)
    if baseline is not None and (baseline.canary != canary or baseline.stable != stable):
        baseline = None
    canary_pods, canary_errors, stable_pods = await _scrape_both(kube, namespace, name, canary, stable, timeout)
    memory.baselines[uid] = Baseline(canary, stable, now, canary_pods, stable_pods)
    notes = _unreachable_note(canary_errors)
    if baseline is None:
        return _inconclusive("no baseline for this window (the operator restarted): "
                             "this interval only took one; the next one is measured", *notes)
    if not canary_pods:
        return _inconclusive("no canary pod could be scraped" if canary_errors
                             else "no running canary pod to scrape", *notes)
    measured = a.measure_pods(baseline.canary_pods, canary_pods)
    compared = a.measure_pods(baseline.stable_pods, stable_pods) if stable_pods else None
    verdict = a.judge(measured, limits, compared)
    return replace(verdict, reasons=verdict.reasons + notes) if notes else verdict


async def measure_prometheus(prometheus_url: str, limits: a.Limits, *, namespace: str, name: str,
                             canary: str, stable: str | None, window_s: float, now: datetime,
                             timeout: float = 10.0) -> a.Verdict:
    """The PromQL path: the same judgement over the window ending `now`, read from Prometheus.

    An unreachable Prometheus or an odd answer is inconclusive (and logged), not a failure.
    """
    at = now.timestamp()
    try:
        answer = await query_prometheus(
            prometheus_url, a.promql_queries(namespace, name, canary, window_s), time=at, timeout=timeout)
        measured = a.measurement_from_prometheus(answer)
        compared = None
        if stable is not None and stable != canary:
            answer = await query_prometheus(
                prometheus_url, a.promql_queries(namespace, name, stable, window_s), time=at, timeout=timeout)
            compared = a.measurement_from_prometheus(answer)
    except (ScrapeError, a.AnalysisError) as exc:
        log.warning("analysis of %s/%s: %s", namespace, name, exc,
                    extra={"object": {"namespace": namespace, "name": name}})
        return _inconclusive(f"metrics unavailable: {exc}")
    return a.judge(measured, limits, compared)
