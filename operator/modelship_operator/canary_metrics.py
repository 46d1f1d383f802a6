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

During a shadow step (`shadow=True`) the same scrapes of the STABLE pods also give the shadow
comparison: their `modelship_shadow_*` series labelled with the canary's hash, as deltas per pod
(`analysis.measure_shadow_pods`), judged with the canary's own numbers (`analysis.judge`).
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
    base = admin_base(pod)
    return None if base is None else base + METRICS_PATH


def admin_base(pod: Mapping[str, Any]) -> str | None:
    """`http://<podIP>:<admin port>` of a running pod (where /metrics and /shadow are), None while
    it has no IP or is going away."""
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
    return f"http://{host}:{port}"


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
    # Shadow steps (shadow_config.py), by uid: the revisions whose pods were told to mirror and
    # not yet seen off, and the latest pass that turned mirroring on (a shadow_config.PushReport).
    mirroring: dict[str, set[str]] = field(default_factory=dict)
    last_on: dict[str, Any] = field(default_factory=dict)

    def has_baseline(self, uid: str, canary: str, stable: str | None) -> bool:
        b = self.baselines.get(uid)
        return b is not None and b.canary == canary and b.stable == stable

    def forget(self, uid: str) -> None:
        """The ModelDeployment is gone."""
        self.baselines.pop(uid, None)
        self.mirroring.pop(uid, None)
        self.last_on.pop(uid, None)

    def end_window(self, uid: str) -> None:
        """No analysis runs for `uid` now (what shadow steps left to turn off stays)."""
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
                       timeout: float) -> tuple[dict[str, a.Snapshot], list[str], dict[str, a.Snapshot], list[str]]:
    canary_pods, canary_errors = await _scrape_revision(kube, namespace, name, canary, timeout)
    stable_pods: dict[str, a.Snapshot] = {}
    stable_errors: list[str] = []
    if stable is not None and stable != canary:
        stable_pods, stable_errors = await _scrape_revision(kube, namespace, name, stable, timeout)
    return canary_pods, canary_errors, stable_pods, stable_errors


async def take_baseline(kube: PodLister, memory: AnalysisMemory, *, uid: str, namespace: str, name: str,
                        canary: str, stable: str | None, now: datetime,
                        timeout: float = SCRAPE_TIMEOUT_S) -> None:
    """Scrape the start of a window (the canary just took traffic, or the operator restarted)."""
    canary_pods, _, stable_pods, _ = await _scrape_both(kube, namespace, name, canary, stable, timeout)
    memory.baselines[uid] = Baseline(canary, stable, now, canary_pods, stable_pods)


def _unreachable_note(errors: list[str], role: str = "canary") -> tuple[str, ...]:
    if not errors:
        return ()
    shown = "; ".join(errors[:MAX_REASONS])
    more = f" (and {len(errors) - MAX_REASONS} more)" if len(errors) > MAX_REASONS else ""
    return (f"{len(errors)} {role} pod(s) not scraped: {shown}{more}",)


def _with_shadow_note(verdict: a.Verdict, note: str | None) -> a.Verdict:
    """A shadow window in which no stable pod could be told to mirror: never a pass (the
    comparison, if any, was not asked for by this rollout), and the verdict says why."""
    if not note:
        return verdict
    result = a.FAIL if verdict.result == a.FAIL else a.INCONCLUSIVE
    return replace(verdict, result=result, reasons=(note, *verdict.reasons))


def _inconclusive(*reasons: str) -> a.Verdict:
    return a.Verdict(a.INCONCLUSIVE, tuple(reasons), a.Measurement(0.0, 0.0, None))


async def measure_scrape(kube: PodLister, memory: AnalysisMemory, limits: a.Limits, *, uid: str,
                         namespace: str, name: str, canary: str, stable: str | None, now: datetime,
                         timeout: float = SCRAPE_TIMEOUT_S, shadow: bool = False,
                         shadow_note: str | None = None) -> a.Verdict:
    """Close the window: scrape again, judge the deltas since the baseline, start the next window.

    Without a baseline for this canary (the operator restarted meanwhile) this scrape only
    becomes the baseline and the window is inconclusive. `shadow`: the window is a shadow
    step's (judge the stable pods' comparison too); `shadow_note`: why no stable pod mirrors.
    """
    baseline = memory.baselines.get(uid)
    if baseline is not None and (baseline.canary != canary or baseline.stable != stable):
        baseline = None
    canary_pods, canary_errors, stable_pods, stable_errors = await _scrape_both(
        kube, namespace, name, canary, stable, timeout)
    memory.baselines[uid] = Baseline(canary, stable, now, canary_pods, stable_pods)
    notes = _unreachable_note(canary_errors) + (_unreachable_note(stable_errors, "stable") if shadow else ())
    if baseline is None:
        return _with_shadow_note(_inconclusive("no baseline for this window (the operator restarted): "
                                               "this interval only took one; the next one is measured", *notes),
                                 shadow_note if shadow else None)
    if not canary_pods:
        return _with_shadow_note(_inconclusive("no canary pod could be scraped" if canary_errors
                                               else "no running canary pod to scrape", *notes),
                                 shadow_note if shadow else None)
    measured = a.measure_pods(baseline.canary_pods, canary_pods)
    compared = a.measure_pods(baseline.stable_pods, stable_pods) if stable_pods else None
    mirrored = a.measure_shadow_pods(baseline.stable_pods, stable_pods, canary) if shadow else None
    verdict = a.judge(measured, limits, compared, mirrored)
    verdict = replace(verdict, reasons=verdict.reasons + notes) if notes else verdict
    return _with_shadow_note(verdict, shadow_note if shadow else None)


async def measure_prometheus(prometheus_url: str, limits: a.Limits, *, namespace: str, name: str,
                             canary: str, stable: str | None, window_s: float, now: datetime,
                             timeout: float = 10.0, shadow: bool = False,
                             shadow_note: str | None = None) -> a.Verdict:
    """The PromQL path: the same judgement over the window ending `now`, read from Prometheus.

    An unreachable Prometheus or an odd answer is inconclusive (and logged), not a failure.
    """
    at = now.timestamp()
    try:
        answer = await query_prometheus(
            prometheus_url, a.promql_queries(namespace, name, canary, window_s), time=at, timeout=timeout)
        measured = a.measurement_from_prometheus(answer)
        compared = mirrored = None
        if stable is not None and stable != canary:
            answer = await query_prometheus(
                prometheus_url, a.promql_queries(namespace, name, stable, window_s), time=at, timeout=timeout)
            compared = a.measurement_from_prometheus(answer)
            if shadow:
                answer = await query_prometheus(
                    prometheus_url, a.shadow_promql_queries(namespace, name, stable, canary, window_s), time=at,
                    timeout=timeout)
                mirrored = a.shadow_from_prometheus(answer, canary)
    except (ScrapeError, a.AnalysisError) as exc:
        log.warning("analysis of %s/%s: %s", namespace, name, exc,
                    extra={"object": {"namespace": namespace, "name": name}})
        return _with_shadow_note(_inconclusive(f"metrics unavailable: {exc}"), shadow_note if shadow else None)
    return _with_shadow_note(a.judge(measured, limits, compared, mirrored), shadow_note if shadow else None)
