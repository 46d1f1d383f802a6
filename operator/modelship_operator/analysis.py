"""Canary analysis: measure error rate and p99 latency, judge them against the limits. Pure.

Two ways to measure, one way to judge:

* **Scrape path** (no Prometheus): parse each pod's ``/metrics`` into a :class:`Snapshot`, take
  ``delta(before, after)`` per pod over the interval, sum the deltas over the pods of a revision
  (:func:`measure_pods`), and compute requests, 5xx share and p99 (:func:`measure`).
* **PromQL path**: :func:`promql_queries` builds ``increase()`` / ``histogram_quantile()``
  queries for one revision's pods; :func:`measurement_from_prometheus` reads the answers of
  Prometheus' ``/api/v1/query``.
* **Shadow comparison** (shadow steps): the STABLE pods mirror requests to the canary and count
  what they compared in ``modelship_shadow_*`` series labelled with the canary's revision hash;
  :func:`measure_shadow` (scrape deltas) or :func:`shadow_from_prometheus` turn them into a
  :class:`ShadowMeasurement` (rows compared, disagreement, mean absolute difference).

:func:`judge` turns a :class:`Measurement` (and a shadow step's :class:`ShadowMeasurement`) into a
:class:`Verdict` (pass / fail / inconclusive).

Series selection in Prometheus: by the labels the operator controls, never by pod name. Every
server pod carries ``app.kubernetes.io/instance`` (its ModelDeployment) and
``modelship.dev/revision`` (its revision hash); the operator's ServiceMonitor and the chart's
PodMonitor copy them into the target labels :data:`SERIES_LABELS` (``modeldeployment``,
``revision``) with the relabelings :func:`series_relabelings` describes, and the queries select
``namespace``, ``modeldeployment`` and ``revision``. (A pod-name regex cannot work: Kubernetes cuts
generated pod names at 63 characters, so long names lose the replica-set suffix.) The server's own
``version`` label is not used: two revisions may share a model version.

The query window reaches back at least :data:`MIN_WINDOW_SCRAPES` scrape intervals
(:func:`query_window`): ``increase()`` needs two samples inside its range and extrapolates from
them, so a window of one scrape interval usually holds one sample and answers nothing.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

from prometheus_client.parser import text_string_to_metric_families

# The server's metric names (server/modelship_server/metrics.py) -- the one place to align them.
REQUESTS_METRIC = "modelship_requests"  # counter: model, version, protocol, code
LATENCY_METRIC = "modelship_request_duration_seconds"  # histogram (seconds): model, version, protocol
CODE_LABEL = "code"
QUANTILE = 0.99

_REQUESTS_TOTAL = REQUESTS_METRIC + "_total"
_REQUESTS_CREATED = REQUESTS_METRIC + "_created"
_LATENCY_BUCKET = LATENCY_METRIC + "_bucket"
_LATENCY_CREATED = LATENCY_METRIC + "_created"

# The stable pods' shadow series (server/modelship_server/shadow.py). Every one carries `revision`,
# the canary hash the operator pushed; requests also `outcome`. All only grow, but the max.
SHADOW_REQUESTS = "modelship_shadow_requests_total"  # outcome: compared | dropped | error | mismatch
SHADOW_ROWS = "modelship_shadow_rows_total"  # rows compared (mismatched answers' rows included)
SHADOW_DISAGREEMENTS = "modelship_shadow_disagreements_total"  # rows whose predicted class differed
SHADOW_ABS_DIFF_SUM = "modelship_shadow_abs_diff_sum"  # sum over rows of the row's mean |stable - canary|
SHADOW_ABS_DIFF_MAX = "modelship_shadow_abs_diff_max"  # a gauge: the largest difference seen
SHADOW_COUNTERS = (SHADOW_REQUESTS, SHADOW_ROWS, SHADOW_DISAGREEMENTS, SHADOW_ABS_DIFF_SUM)
SHADOW_REVISION_LABEL = "revision"
SHADOW_OUTCOMES = ("compared", "dropped", "error", "mismatch")

LabelSet = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: one series


class AnalysisError(ValueError):
    """Metrics that cannot be parsed or a Prometheus answer of an unexpected shape."""


def _key(labels: Mapping[str, str]) -> LabelSet:
    return tuple(sorted(labels.items()))


@dataclass(frozen=True)
class Snapshot:
    """The analysis-relevant series of one pod's ``/metrics`` (or a sum/delta of such)."""

    requests: Mapping[LabelSet, float] = field(default_factory=dict)  # request counter, by series
    buckets: Mapping[LabelSet, float] = field(default_factory=dict)  # cumulative buckets (with le)
    created: Mapping[LabelSet, float] = field(default_factory=dict)  # series creation times
    shadow: Mapping[LabelSet, float] = field(default_factory=dict)  # shadow series, with __name__

    def requests_by_code(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, value in self.requests.items():
            code = dict(labels).get(CODE_LABEL, "")
            out[code] = out.get(code, 0.0) + value
        return out


_SHADOW_NAMES = frozenset((*SHADOW_COUNTERS, SHADOW_ABS_DIFF_MAX))


def parse_metrics(text: str) -> Snapshot:
    """Parse Prometheus text exposition; keeps the request counter, the latency histogram and
    the shadow comparison series only."""
    requests: dict[LabelSet, float] = {}
    buckets: dict[LabelSet, float] = {}
    created: dict[LabelSet, float] = {}
    shadow: dict[LabelSet, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == _REQUESTS_TOTAL:
                    requests[_key(sample.labels)] = float(sample.value)
                elif sample.name == _LATENCY_BUCKET:
                    buckets[_key(sample.labels)] = float(sample.value)
                elif sample.name in (_REQUESTS_CREATED, _LATENCY_CREATED):
                    created[(("__name__", sample.name), *_key(sample.labels))] = float(sample.value)
                elif sample.name in _SHADOW_NAMES:
                    shadow[(("__name__", sample.name), *_key(sample.labels))] = float(sample.value)
    except ValueError as exc:  # the parser raises ValueError on malformed lines
        raise AnalysisError(f"cannot parse metrics: {exc}") from exc
    return Snapshot(requests, buckets, created, shadow)


def _series_name(labels: LabelSet) -> str:
    return labels[0][1] if labels and labels[0][0] == "__name__" else ""


def _restarted(before: Snapshot, after: Snapshot) -> bool:
    """A counter went down, a series vanished, or a series was re-created: the process restarted."""
    for old, new in ((before.requests, after.requests), (before.buckets, after.buckets)):
        for labels, value in old.items():
            if labels not in new or new[labels] < value:
                return True
    return any(after.created.get(labels, t) != t for labels, t in before.created.items())


def _shadow_delta(before: Mapping[LabelSet, float], after: Mapping[LabelSet, float]) -> dict[LabelSet, float]:
    """Per series: the increase, or the whole value of a series that went down (its stats were
    reset: the pod restarted, or the revision's stats were dropped and begun again). The max
    gauge is not a counter: its latest value is kept."""
    out: dict[LabelSet, float] = {}
    for k, v in after.items():
        old = before.get(k, 0.0)
        out[k] = v if _series_name(k) == SHADOW_ABS_DIFF_MAX or v < old else v - old
    return out


def delta(before: Snapshot | None, after: Snapshot) -> Snapshot:
    """What one pod served between two scrapes. A restarted (or new) pod: ``after`` is the delta."""
    if before is None or _restarted(before, after):
        return after
    return Snapshot(
        {k: v - before.requests.get(k, 0.0) for k, v in after.requests.items()},
        {k: v - before.buckets.get(k, 0.0) for k, v in after.buckets.items()},
        dict(after.created),
        _shadow_delta(before.shadow, after.shadow),
    )


def aggregate(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Sum series over pods (creation times are per pod and dropped; the shadow max is a max)."""
    requests: dict[LabelSet, float] = {}
    buckets: dict[LabelSet, float] = {}
    shadow: dict[LabelSet, float] = {}
    for snap in snapshots:
        for k, v in snap.requests.items():
            requests[k] = requests.get(k, 0.0) + v
        for k, v in snap.buckets.items():
            buckets[k] = buckets.get(k, 0.0) + v
        for k, v in snap.shadow.items():
            shadow[k] = max(shadow.get(k, v), v) if _series_name(k) == SHADOW_ABS_DIFF_MAX else shadow.get(k, 0.0) + v
    return Snapshot(requests, buckets, {}, shadow)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's ``histogram_quantile`` over cumulative buckets ``{upper bound: count}``.

    Linear interpolation inside the bucket holding the rank; the lowest bucket starts at 0; a rank
    in the +Inf bucket returns the highest finite bound. None where PromQL returns NaN.
    """
    if not 0 <= q <= 1:
        raise ValueError("q must be within 0..1")
    bounds = sorted(buckets)
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        return None
    counts, running = [], 0.0
    for b in bounds:  # enforce monotonic counts, as Prometheus does for scrape races
        running = max(running, buckets[b])
        counts.append(running)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    i = next(i for i, c in enumerate(counts) if c >= rank)
    if i == len(bounds) - 1:
        return bounds[-2]
    if i == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0 if i == 0 else bounds[i - 1]
    below = 0.0 if i == 0 else counts[i - 1]
    in_bucket = counts[i] - below
    return start + (bounds[i] - start) * ((rank - below) / in_bucket)


@dataclass(frozen=True)
class Measurement:
    """One revision over one analysis window."""

    requests: float
    errors: float  # 5xx answers
    latency_p99_ms: float | None  # None: no latency samples
    by_code: Mapping[str, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return None if self.requests <= 0 else self.errors / self.requests


def _is_server_error(code: str) -> bool:
    return len(code) == 3 and code.startswith("5")


def _measurement(by_code: Mapping[str, float], p99_seconds: float | None) -> Measurement:
    requests = sum(by_code.values())
    errors = sum(v for code, v in by_code.items() if _is_server_error(code))
    p99 = None if p99_seconds is None or math.isnan(p99_seconds) else p99_seconds * 1000.0
    return Measurement(requests, errors, p99, dict(by_code))


def measure(window: Snapshot) -> Measurement:
    """Requests, 5xx and p99 of a delta snapshot (bucket deltas summed over series by ``le``)."""
    by_le: dict[float, float] = {}
    for labels, value in window.buckets.items():
        le = dict(labels).get("le")
        if le is None:
            continue
        bound = float(le)  # float() reads "+Inf"
        by_le[bound] = by_le.get(bound, 0.0) + value
    return _measurement(window.requests_by_code(), histogram_quantile(QUANTILE, by_le))


def measure_pods(before: Mapping[str, Snapshot], after: Mapping[str, Snapshot]) -> Measurement:
    """One revision's measurement from per-pod scrapes at the start and end of the window.

    Pods only in ``after`` are new: all they served counts. Pods only in ``before`` are gone: what
    they served since is unknown and left out.
    """
    return measure(aggregate(delta(before.get(pod), snap) for pod, snap in after.items()))


@dataclass(frozen=True)
class ShadowMeasurement:
    """What the stable pods compared with one canary revision over one window (a shadow step)."""

    revision: str  # the canary hash the comparison is labelled with
    rows: float  # rows compared, mismatched answers' rows included
    disagreements: float | None  # None: the stable pods report no class disagreement series
    abs_diff_sum: float | None  # None: no absolute difference series
    abs_diff_max: float | None  # the largest difference the pods have seen for this revision
    outcomes: Mapping[str, float] = field(default_factory=dict)  # mirrored requests by outcome
    pods: int | None = None  # stable pods read (None: not known, the PromQL path)

    @property
    def disagreement(self) -> float | None:
        return None if self.rows <= 0 or self.disagreements is None else self.disagreements / self.rows

    @property
    def mean_abs_diff(self) -> float | None:
        return None if self.rows <= 0 or self.abs_diff_sum is None else self.abs_diff_sum / self.rows


def measure_shadow(window: Snapshot, revision: str, pods: int | None = None) -> ShadowMeasurement:
    """The shadow comparison with `revision` in a delta snapshot of the stable pods."""
    sums: dict[str, float] = {}
    outcomes: dict[str, float] = {}
    biggest: float | None = None
    for labels, value in window.shadow.items():
        tags = dict(labels)
        if tags.get(SHADOW_REVISION_LABEL) != revision:
            continue
        name = tags.pop("__name__", "")
        if name == SHADOW_ABS_DIFF_MAX:
            biggest = value if biggest is None else max(biggest, value)
            continue
        sums[name] = sums.get(name, 0.0) + value
        if name == SHADOW_REQUESTS:
            outcome = tags.get("outcome", "")
            outcomes[outcome] = outcomes.get(outcome, 0.0) + value
    return ShadowMeasurement(revision, sums.get(SHADOW_ROWS, 0.0), sums.get(SHADOW_DISAGREEMENTS),
                             sums.get(SHADOW_ABS_DIFF_SUM), biggest, outcomes, pods)


def measure_shadow_pods(before: Mapping[str, Snapshot], after: Mapping[str, Snapshot],
                        revision: str) -> ShadowMeasurement:
    """The stable pods' comparison with the canary `revision` from per-pod scrapes at the start
    and end of the window (new pods count in full, gone pods are left out, as measure_pods)."""
    window = aggregate(delta(before.get(pod), snap) for pod, snap in after.items())
    return measure_shadow(window, revision, len(after))


class Limits(Protocol):
    """What judge needs from ``spec.AnalysisSpec`` (the shadow limits are read when present)."""

    max_error_rate: float
    max_latency_p99_ms: float | None
    min_requests: int


PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass(frozen=True)
class Verdict:
    result: str  # pass | fail | inconclusive
    reasons: tuple[str, ...]
    canary: Measurement
    stable: Measurement | None = None
    shadow: ShadowMeasurement | None = None  # a shadow step's comparison (stable pods' series)

    @property
    def message(self) -> str:
        return "; ".join(self.reasons)

    def to_status(self) -> dict[str, Any]:
        """The measured part of ``status.canary.analysis`` (the rollout adds time and tallies)."""
        out: dict[str, Any] = {
            "verdict": self.result.capitalize(),
            "requests": int(round(self.canary.requests)),
            "message": self.message,
        }
        if self.canary.error_rate is not None:
            out["errorRate"] = round(self.canary.error_rate, 6)
        if self.canary.latency_p99_ms is not None:
            out["latencyP99Ms"] = round(self.canary.latency_p99_ms, 3)
        if self.shadow is not None:
            out["compared"] = int(round(self.shadow.rows))
            if self.shadow.disagreement is not None:
                out["disagreement"] = round(self.shadow.disagreement, 6)
            if self.shadow.mean_abs_diff is not None:
                out["meanAbsDiff"] = round(self.shadow.mean_abs_diff, 6)
        return out


def _describe(m: Measurement) -> str:
    rate = "n/a" if m.error_rate is None else f"{m.error_rate:.2%}"
    p99 = "n/a" if m.latency_p99_ms is None else f"{m.latency_p99_ms:.1f}ms"
    return f"{m.requests:.0f} requests, error rate {rate}, p99 {p99}"


def _worst(a: str, b: str) -> str:
    order = (PASS, INCONCLUSIVE, FAIL)
    return max(a, b, key=order.index)


def _describe_shadow(s: ShadowMeasurement) -> str:
    parts = [f"{s.rows:.0f} rows compared" + ("" if s.pods is None else f" by {s.pods} stable pod(s)")]
    if s.disagreement is not None:
        parts.append(f"disagreement {s.disagreement:.2%}")
    if s.mean_abs_diff is not None:
        parts.append(f"mean abs diff {s.mean_abs_diff:.4g}")
    if s.abs_diff_max is not None:
        parts.append(f"max abs diff {s.abs_diff_max:.4g}")
    mirrored = ", ".join(f"{o} {s.outcomes.get(o, 0.0):.0f}" for o in SHADOW_OUTCOMES if s.outcomes.get(o))
    return "shadow: " + ", ".join(parts) + (f" (mirrored requests: {mirrored})" if mirrored else "")


def judge_shadow(shadow: ShadowMeasurement, limits: Limits) -> tuple[str, list[str]]:
    """The shadow part of a verdict, with the same semantics as the error rate: fewer than
    ``minRequests`` compared rows is inconclusive; a limit exceeded fails; a limit whose data
    the stable pods do not report is inconclusive. Answers of another form than the stable's
    (outcome ``mismatch``) fail: they cannot be compared, and the server counts every row of
    them as disagreeing. Without a shadow limit set the numbers are only reported."""
    max_disagreement = getattr(limits, "max_disagreement", None)
    max_mean_abs_diff = getattr(limits, "max_mean_abs_diff", None)
    if max_disagreement is None and max_mean_abs_diff is None:
        return PASS, []
    minimum = max(1, int(limits.min_requests))
    if shadow.rows < minimum:
        why = f"only {shadow.rows:.0f} rows compared by the stable pods in the window, {minimum} needed"
        lost = {o: shadow.outcomes.get(o, 0.0) for o in ("dropped", "error") if shadow.outcomes.get(o)}
        if lost:
            why += " (mirrored requests " + ", ".join(f"{o}: {n:.0f}" for o, n in lost.items()) + ")"
        elif shadow.pods == 0:
            why += " (no stable pod could be read)"
        return INCONCLUSIVE, [why]
    result, reasons = PASS, []
    mismatched = shadow.outcomes.get("mismatch", 0.0)
    if mismatched > 0:
        result = FAIL
        reasons.append(f"{mismatched:.0f} mirrored request(s) answered in another form than the stable's outputs "
                       "(outcome mismatch)")
    if max_disagreement is not None:
        d = shadow.disagreement
        if d is None:
            result = _worst(result, INCONCLUSIVE)
            reasons.append(f"maxDisagreement is set but the stable pods report no class disagreement for revision "
                           f"{shadow.revision} (a model without class outputs?): use maxMeanAbsDiff")
        elif d > max_disagreement:
            result = FAIL
            reasons.append(f"disagreement {d:.2%} above maxDisagreement {max_disagreement:.2%} "
                           f"({shadow.disagreements:.0f} of {shadow.rows:.0f} rows)")
        else:
            reasons.append(f"disagreement {d:.2%} within {max_disagreement:.2%}")
    if max_mean_abs_diff is not None:
        m = shadow.mean_abs_diff
        if m is None:
            result = _worst(result, INCONCLUSIVE)
            reasons.append(f"maxMeanAbsDiff is set but the stable pods report no absolute difference for revision "
                           f"{shadow.revision}")
        elif m > max_mean_abs_diff:
            result = FAIL
            reasons.append(f"mean abs diff {m:.4g} above maxMeanAbsDiff {max_mean_abs_diff:g}")
        else:
            reasons.append(f"mean abs diff {m:.4g} within {max_mean_abs_diff:g}")
    return result, reasons


def judge(canary: Measurement, limits: Limits, stable: Measurement | None = None,
          shadow: ShadowMeasurement | None = None) -> Verdict:
    """Absolute limits decide; the stable revision's numbers are reported alongside.

    Fewer than ``minRequests`` (and never fewer than one) is inconclusive, even when the few
    requests look bad: too little traffic is no evidence either way, and ``failureLimit`` counts
    failures only. With enough requests, every exceeded limit is a reason to fail; a latency limit
    with no latency samples is inconclusive.
    """
    reasons: list[str] = []
    result = PASS
    minimum = max(1, int(limits.min_requests))
    if canary.requests < minimum:
        result = INCONCLUSIVE
        reasons.append(f"only {canary.requests:.0f} requests in the window, {minimum} needed")
    else:
        rate = canary.error_rate or 0.0
        if rate > limits.max_error_rate:
            result = FAIL
            reasons.append(f"error rate {rate:.2%} above {limits.max_error_rate:.2%}")
        else:
            reasons.append(f"error rate {rate:.2%} within {limits.max_error_rate:.2%}")
        if limits.max_latency_p99_ms is not None:
            p99 = canary.latency_p99_ms
            if p99 is None:
                result = FAIL if result == FAIL else INCONCLUSIVE
                reasons.append("no latency samples")
            elif p99 > limits.max_latency_p99_ms:
                result = FAIL
                reasons.append(f"p99 {p99:.1f}ms above {limits.max_latency_p99_ms:g}ms")
            else:
                reasons.append(f"p99 {p99:.1f}ms within {limits.max_latency_p99_ms:g}ms")
    if shadow is not None:  # a shadow step: the canary's own traffic is what the stable mirrored
        shadow_result, shadow_reasons = judge_shadow(shadow, limits)
        if shadow_result == FAIL:  # the failing reasons first: Events and abort reasons lead with them
            reasons = shadow_reasons + reasons
        else:
            reasons += shadow_reasons
        result = _worst(result, shadow_result)
    reasons.append(f"canary: {_describe(canary)}")
    if stable is not None:
        reasons.append(f"stable: {_describe(stable)}")
    if shadow is not None:
        reasons.append(_describe_shadow(shadow))
    return Verdict(result, tuple(reasons), canary, stable, shadow)


# --- PromQL path -----------------------------------------------------------------------------
REQUESTS_QUERY = "requests_by_code"
P99_QUERY = "latency_p99_seconds"


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Target labels that carry a pod's ModelDeployment and revision into its series, by pod label.
# The ServiceMonitor template and the chart's PodMonitor write exactly these (see module docstring).
INSTANCE_POD_LABEL = "app.kubernetes.io/instance"
REVISION_POD_LABEL = "modelship.dev/revision"
SERIES_LABELS = {INSTANCE_POD_LABEL: "modeldeployment", REVISION_POD_LABEL: "revision"}
MIN_WINDOW_SCRAPES = 4


def meta_label(pod_label: str) -> str:
    """The Prometheus Kubernetes service-discovery label that holds a pod label's value."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


def series_relabelings() -> tuple[tuple[str, str], ...]:
    """(source meta label, target label) pairs a scrape config needs for :func:`promql_queries`."""
    return tuple((meta_label(pod_label), target) for pod_label, target in SERIES_LABELS.items())


def query_window(since_last_s: float, interval_s: float, scrape_interval_s: float) -> float:
    """Seconds the PromQL window of one analysis reaches back: the time since the last counted
    window, never less than ``analysis.interval`` nor :data:`MIN_WINDOW_SCRAPES` scrape intervals."""
    return max(since_last_s, interval_s, MIN_WINDOW_SCRAPES * scrape_interval_s)


def series_selector(namespace: str, name: str, revision_hash: str) -> str:
    """The label matchers of one revision's series."""
    return ",".join([
        f"namespace={_promql_string(namespace)}",
        f"{SERIES_LABELS[INSTANCE_POD_LABEL]}={_promql_string(name)}",
        f"{SERIES_LABELS[REVISION_POD_LABEL]}={_promql_string(revision_hash)}",
    ])


def promql_queries(namespace: str, name: str, revision_hash: str, window_seconds: float) -> dict[str, str]:
    """Queries for one revision over the last ``window_seconds`` (see :func:`query_window`).

    ``increase()`` of a series that appears inside the window misses its first value, so the
    very first requests of a new status code can be undercounted by up to one scrape interval.
    """
    selector = series_selector(namespace, name, revision_hash)
    window = f"{max(1, int(math.ceil(window_seconds)))}s"
    return {
        REQUESTS_QUERY: f"sum by ({CODE_LABEL}) (increase({_REQUESTS_TOTAL}{{{selector}}}[{window}]))",
        P99_QUERY: (
            f"histogram_quantile({QUANTILE}, sum by (le) (rate({_LATENCY_BUCKET}{{{selector}}}[{window}])))"
        ),
    }


def _vector(answer: Any) -> list[dict[str, Any]]:
    data = answer.get("data", answer) if isinstance(answer, Mapping) else None
    if not isinstance(data, Mapping) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise AnalysisError(f"expected an instant vector from Prometheus, got {answer!r:.200}")
    return data["result"]


def _sample_value(sample: Mapping[str, Any]) -> float:
    try:
        return float(sample["value"][1])  # [unix time, "value as string"]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise AnalysisError(f"malformed Prometheus sample {sample!r:.200}") from exc


def measurement_from_prometheus(results: Mapping[str, Any]) -> Measurement:
    """A Measurement from the answers (``data`` or the whole JSON body) to :func:`promql_queries`."""
    by_code: dict[str, float] = {}
    for sample in _vector(results[REQUESTS_QUERY]):
        value = _sample_value(sample)
        if not math.isnan(value):
            code = str(sample.get("metric", {}).get(CODE_LABEL, ""))
            by_code[code] = by_code.get(code, 0.0) + value
    p99 = None
    for sample in _vector(results[P99_QUERY]):
        value = _sample_value(sample)
        p99 = None if math.isnan(value) or math.isinf(value) else value
    return _measurement(by_code, p99)


# --- shadow comparison through Prometheus ----------------------------------------------------
# The server labels its shadow series `revision` (the canary hash); the scrape config's target
# label `revision` (the stable pod's own revision, SERIES_LABELS) wins that name, and Prometheus
# keeps the server's value as `exported_revision` (honor_labels false, the default of
# ServiceMonitors and PodMonitors).
EXPORTED_REVISION_LABEL = "exported_" + SHADOW_REVISION_LABEL
SHADOW_OUTCOMES_QUERY = "shadow_requests_by_outcome"
SHADOW_ROWS_QUERY = "shadow_rows"
SHADOW_DISAGREEMENTS_QUERY = "shadow_disagreements"
SHADOW_ABS_DIFF_SUM_QUERY = "shadow_abs_diff_sum"
SHADOW_ABS_DIFF_MAX_QUERY = "shadow_abs_diff_max"


def shadow_promql_queries(namespace: str, name: str, stable_hash: str, canary_hash: str,
                          window_seconds: float) -> dict[str, str]:
    """Queries for what the stable revision's pods compared with the canary over the window.
    A series that no pod exports answers an empty vector (read as "no data", not as 0)."""
    selector = (series_selector(namespace, name, stable_hash)
                + f",{EXPORTED_REVISION_LABEL}={_promql_string(canary_hash)}")
    window = f"{max(1, int(math.ceil(window_seconds)))}s"

    def increase(metric: str) -> str:
        return f"sum(increase({metric}{{{selector}}}[{window}]))"

    return {
        SHADOW_OUTCOMES_QUERY: f"sum by (outcome) (increase({SHADOW_REQUESTS}{{{selector}}}[{window}]))",
        SHADOW_ROWS_QUERY: increase(SHADOW_ROWS),
        SHADOW_DISAGREEMENTS_QUERY: increase(SHADOW_DISAGREEMENTS),
        SHADOW_ABS_DIFF_SUM_QUERY: increase(SHADOW_ABS_DIFF_SUM),
        SHADOW_ABS_DIFF_MAX_QUERY: f"max(max_over_time({SHADOW_ABS_DIFF_MAX}{{{selector}}}[{window}]))",
    }


def _scalar(answer: Any) -> float | None:
    values = [_sample_value(s) for s in _vector(answer)]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) if values else None


def shadow_from_prometheus(results: Mapping[str, Any], canary_hash: str) -> ShadowMeasurement:
    """A ShadowMeasurement from the answers to :func:`shadow_promql_queries`."""
    outcomes: dict[str, float] = {}
    for sample in _vector(results[SHADOW_OUTCOMES_QUERY]):
        value = _sample_value(sample)
        if not math.isnan(value):
            outcome = str(sample.get("metric", {}).get("outcome", ""))
            outcomes[outcome] = outcomes.get(outcome, 0.0) + value
    rows = _scalar(results[SHADOW_ROWS_QUERY])
    return ShadowMeasurement(
        canary_hash, rows or 0.0, _scalar(results[SHADOW_DISAGREEMENTS_QUERY]),
        _scalar(results[SHADOW_ABS_DIFF_SUM_QUERY]), _scalar(results[SHADOW_ABS_DIFF_MAX_QUERY]), outcomes)
