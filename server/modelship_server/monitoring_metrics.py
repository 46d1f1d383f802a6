"""Prometheus view of the monitors, read at scrape time (nothing to update on the hot path).

Names and meanings: docs/monitoring.md, "Metrics". Every series carries `model` and `version`.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .feedback import OUTCOMES
from .monitoring import Monitoring

MAX_FEATURE_SERIES = 256  # per-feature series only up to this many features (images would explode)
NAN = float("nan")


class MonitoringCollector(Collector):
    def __init__(self, monitoring: Callable[[], Monitoring | None], identity: Callable[[], tuple[str, str]],
                 forwarded: Callable[[], dict[str, int]] | None = None) -> None:  # fmt: skip
        self._monitoring = monitoring
        self._identity = identity
        self._forwarded = forwarded

    def describe(self) -> list[Metric]:
        return []  # series appear once a model is attached; no collect() at registration

    def collect(self) -> Iterator[Metric]:
        mon = self._monitoring()
        if mon is None:
            return
        ident = list(self._identity())
        yield from self._drift(mon, ident)
        yield from self._feedback(mon, ident)
        yield from self._audit(mon, ident)
        yield from self._stores(mon, ident)

    def _stores(self, mon: Monitoring, ident: list[str]) -> Iterator[Metric]:
        """Memory of every per-request store, against its byte budget (MODELSHIP_*_MAX_BYTES)."""
        labels = ["model", "version", "store"]
        held = GaugeMetricFamily("modelship_monitor_store_bytes",
                                 "Estimated memory held by a monitoring store (feedback, audit, drift).", labels=labels)  # fmt: skip
        entries = GaugeMetricFamily("modelship_monitor_store_entries",
                                    "Items in a monitoring store: pending predictions and remembered ids (feedback), "
                                    "queued lines (audit), input rows in the window (drift).", labels=labels)  # fmt: skip
        budget = GaugeMetricFamily("modelship_monitor_store_budget_bytes",
                                   "The byte budget of a monitoring store.", labels=labels)  # fmt: skip
        if mon.feedback is not None:
            st = mon.feedback.stats()
            held.add_metric([*ident, "feedback"], st.bytes)
            entries.add_metric([*ident, "feedback"], st.pending + st.remembered)
            budget.add_metric([*ident, "feedback"], st.max_bytes if st.max_bytes is not None else math.inf)
        if mon.audit is not None:
            held.add_metric([*ident, "audit"], mon.audit.queued_bytes)
            entries.add_metric([*ident, "audit"], mon.audit.queued)
            budget.add_metric([*ident, "audit"], mon.audit.max_bytes if mon.audit.max_bytes is not None else math.inf)
        if mon.drift is not None:
            held.add_metric([*ident, "drift"], mon.drift.nbytes)
            entries.add_metric([*ident, "drift"], mon.drift.rows)
            budget.add_metric([*ident, "drift"], mon.drift_max_bytes)
        yield from (held, entries, budget)

    def _drift(self, mon: Monitoring, ident: list[str]) -> Iterator[Metric]:
        yield _gauge("modelship_drift_enabled", "1 when input drift is monitored (a reference profile was loaded).",
                     ident, 1.0 if mon.drift is not None else 0.0)  # fmt: skip
        drift = mon.drift
        if drift is None:
            return
        report = mon.report
        inconclusive = report is None or report.inconclusive
        yield _gauge("modelship_drift_threshold", "The PSI at or above which a feature counts as drifted.", ident, drift.threshold)
        yield _gauge("modelship_drift_window_rows", "Input rows in the window of the last drift computation.",
                     ident, report.rows if report else 0)  # fmt: skip
        yield _gauge("modelship_drift_inconclusive", "1 while the window holds fewer rows than the minimum to score drift.",
                     ident, 1.0 if inconclusive else 0.0)  # fmt: skip
        yield _gauge("modelship_drift_detected", "1 when any input feature drifted from the reference (0 while inconclusive).",
                     ident, 1.0 if report is not None and report.drift else 0.0)  # fmt: skip
        yield _gauge("modelship_drift_psi_max", "Largest per-feature population stability index.", ident, report.psi_max if report else NAN)
        yield _gauge("modelship_drift_psi_mean", "Mean per-feature population stability index.", ident, report.psi_mean if report else NAN)
        yield _gauge("modelship_drift_ks_max", "Largest per-feature two-sample Kolmogorov-Smirnov statistic.", ident, report.ks_max if report else NAN)
        if report is not None:
            yield _gauge("modelship_drift_last_run_timestamp_seconds", "When drift was last computed (Unix time).", ident, report.computed_at)
        yield _counter("modelship_drift_runs", "Drift computations run.", ident, mon.periodic.runs)
        yield _counter("modelship_drift_errors", "Drift computations that failed.", ident, mon.periodic.errors)
        if report is None or report.inconclusive or len(report.features) > MAX_FEATURE_SERIES:
            return
        labels = ["model", "version", "feature"]
        psi = GaugeMetricFamily("modelship_drift_psi", "Population stability index of a feature against the reference.", labels=labels)
        ks = GaugeMetricFamily("modelship_drift_ks", "Two-sample KS statistic of a feature against the reference.", labels=labels)
        flag = GaugeMetricFamily("modelship_drift_feature_detected", "1 when this feature drifted.", labels=labels)
        for f in report.features:
            psi.add_metric([*ident, f.name], f.psi)
            ks.add_metric([*ident, f.name], f.ks)
            flag.add_metric([*ident, f.name], 1.0 if f.drift else 0.0)
        yield from (psi, ks, flag)

    def _feedback(self, mon: Monitoring, ident: list[str]) -> Iterator[Metric]:
        store = mon.feedback
        if store is None:
            return
        st = store.stats()
        if st.task == "classification":
            yield _gauge("modelship_online_accuracy", "Share of the last matched rows whose prediction was right (from feedback).",
                         ident, st.accuracy if st.accuracy is not None else NAN)  # fmt: skip
        else:
            yield _gauge("modelship_online_mae", "Mean absolute error over the last matched rows (from feedback).",
                         ident, st.mae if st.mae is not None else NAN)  # fmt: skip
        yield _gauge("modelship_feedback_window_rows", "Matched rows behind the online accuracy / MAE.", ident, st.window_rows)
        yield _gauge("modelship_feedback_pending_predictions", "Predictions waiting for feedback.", ident, st.pending)
        yield _gauge("modelship_feedback_pending_rows", "Prediction rows waiting for feedback.", ident, st.pending_rows)
        by_result = CounterMetricFamily("modelship_feedback", "Feedback items answered, by result.", labels=["model", "version", "result"])
        for outcome in OUTCOMES:
            by_result.add_metric([*ident, outcome], st.counts.get(outcome, 0))
        yield by_result
        yield _counter("modelship_feedback_matched_rows", "Prediction rows joined to their ground truth.", ident, st.matched_rows)
        yield _counter("modelship_feedback_evicted", "Predictions dropped before feedback arrived (age, capacity or bytes).", ident, st.evicted)
        yield _counter("modelship_feedback_duplicate_ids",
                       "Predictions not stored because their request id was already known (the first stays).",
                       ident, st.duplicates)  # fmt: skip
        if self._forwarded is not None:
            fwd = CounterMetricFamily("modelship_feedback_forwarded",
                                      "Feedback items this pod did not know, answered by a peer pod, by the peer's result.",
                                      labels=["model", "version", "result"])  # fmt: skip
            for outcome, n in sorted(self._forwarded().items()):
                fwd.add_metric([*ident, outcome], n)
            yield fwd

    def _audit(self, mon: Monitoring, ident: list[str]) -> Iterator[Metric]:
        audit = mon.audit
        if audit is None:
            return
        yield _counter("modelship_audit_lines", "Audit lines written.", ident, audit.written)
        yield _counter("modelship_audit_dropped", "Audit lines dropped (writer queue full).", ident, audit.dropped)
        yield _counter("modelship_audit_sampled_out", "Successful requests not audited (sampling).", ident, audit.sampled_out)


def _gauge(name: str, doc: str, ident: list[str], value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["model", "version"])
    g.add_metric(ident, float(value) if value is not None else math.nan)
    return g


def _counter(name: str, doc: str, ident: list[str], value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc, labels=["model", "version"])
    c.add_metric(ident, float(value))
    return c
