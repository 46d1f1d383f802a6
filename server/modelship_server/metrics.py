"""Prometheus metrics on a per-app registry (nothing global, so apps and tests never collide)."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds, fine-grained around the millisecond latencies a batching server lives at.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All server metrics. Inference requests are counted by model, version, protocol, code."""

    def __init__(self, model: str, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelship_requests", "Inference requests answered, by HTTP status code.",
            ["model", "version", "protocol", "code"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "modelship_request_duration_seconds",
            "End-to-end inference request latency inside the server (body read to response).",
            ["model", "version", "protocol"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "modelship_queue_wait_seconds", "Time a request waited in the batching queue.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute = Histogram(
            "modelship_compute_seconds", "Forward-pass time per batch (incl. stacking and splitting).",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "modelship_batch_size_rows", "Rows per forward pass.",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_splits = Counter(
            "modelship_batch_splits",
            "Batched forward passes that raised and were re-run request by request (a bad input, or a model bug).",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("modelship_queue_depth_rows", "Rows waiting in the batching queue.", registry=r)
        self.inflight = Gauge("modelship_inflight_requests", "Inference requests being handled.", registry=r)
        self.ready = Gauge("modelship_ready", "1 when the model is loaded, warmed and not shutting down.", registry=r)
        self.batcher_up = Gauge(
            "modelship_batcher_up",
            "1 while the batching loop runs; 0 before the model is loaded and once the loop has died (then readiness and liveness fail).",
            registry=r,
        )  # fmt: skip
        self.forward_stuck = Gauge(
            "modelship_forward_stuck",
            "1 while a forward pass has run longer than the request timeout (readiness and liveness then fail).",
            registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "modelship_model_info", "The served model (value 1).",
            ["model", "version", "format", "device", "precision"], registry=r,
        )  # fmt: skip
        self._gpu: dict[str, Gauge] = {}
        self.set_identity(model, version)

    def set_identity(self, model: str, version: str) -> None:
        """Bind label children once the model's name and version are known (hot path: no lookups)."""
        old = getattr(self, "model", None), getattr(self, "version", None)
        if old[0] is not None and old != (model, version):
            for hist in (self.queue_wait, self.compute, self.batch_size, self.batch_splits):
                try:
                    hist.remove(*old)  # no empty series under the pre-load identity
                except KeyError:
                    pass
        self.model, self.version = model, version
        self._counters: dict[tuple[str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self.queue_wait_child = self.queue_wait.labels(model, version)
        self.compute_child = self.compute.labels(model, version)
        self.batch_size_child = self.batch_size.labels(model, version)
        self.batch_splits_child = self.batch_splits.labels(model, version)

    def observe_request(self, protocol: str, code: int, seconds: float) -> None:
        key = (protocol, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(self.model, self.version, protocol, str(code))
        counter.inc()
        hist = self._latency.get(protocol)
        if hist is None:
            hist = self._latency[protocol] = self.latency.labels(self.model, self.version, protocol)
        hist.observe(seconds)

    # BatchObserver (called on the event loop by the batcher)
    def on_dispatch(self, queue_wait_s: float) -> None:
        self.queue_wait_child.observe(queue_wait_s)

    def on_batch(self, rows: int, compute_s: float) -> None:
        self.batch_size_child.observe(rows)
        self.compute_child.observe(compute_s)

    def on_split(self) -> None:
        self.batch_splits_child.inc()

    def track(self, queue_depth: Callable[[], float], inflight: Callable[[], float], ready: Callable[[], float]) -> None:
        """Gauges read at scrape time: nothing to update on the hot path."""
        self.queue_depth.set_function(queue_depth)
        self.inflight.set_function(inflight)
        self.ready.set_function(ready)

    def track_health(self, batcher_up: Callable[[], float], forward_stuck: Callable[[], float]) -> None:
        """Health gauges, read at scrape time (see Service.health_problem)."""
        self.batcher_up.set_function(batcher_up)
        self.forward_stuck.set_function(forward_stuck)

    def set_model_info(self, fmt: str, device: str, precision: str) -> None:
        self.model_info.clear()
        self.model_info.labels(self.model, self.version, fmt, device, precision).set(1)

    def track_gpu_memory(self, stats: Callable[[], dict[str, float] | None]) -> None:
        """GPU memory gauges (bytes), read from the model at scrape time; only on CUDA."""
        for key, help_text in (
            ("allocated", "GPU memory held by tensors."),
            ("reserved", "GPU memory reserved by the caching allocator."),
            ("max_allocated", "Peak GPU memory held by tensors."),
        ):
            if key not in self._gpu:
                self._gpu[key] = Gauge(f"modelship_gpu_memory_{key}_bytes", help_text, registry=self.registry)
            self._gpu[key].set_function(lambda key=key: (stats() or {}).get(key, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
