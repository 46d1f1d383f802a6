"""The serving state shared by the protocols: model, batcher, readiness, identity, metrics.

Numpy only: the torch side is reached through the model object's predict().
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from .batcher import Batcher
from .codec import body_limit, feedback_body_limit
from .errors import NotFound, QueueFull, ShuttingDown, Unavailable
from .feedback import MAX_FEEDBACK_ITEMS
from .metrics import Metrics
from .monitoring import Monitoring, build_monitoring
from .monitoring_metrics import MonitoringCollector
from .peers import FeedbackPeers
from .settings import Settings
from .shadow import Shadow, ShadowCollector
from .shadow_compare import class_outputs_of
from .signature import Signature

log = logging.getLogger(__name__)


class Model(Protocol):
    """What the server needs from a loaded model (model.LoadedModel implements it)."""

    signature: Signature
    info: Any  # .format, .device, .precision

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def memory_stats(self) -> dict[str, float] | None: ...


@dataclass(slots=True)
class Result:
    outputs: dict[str, np.ndarray]
    probabilities: np.ndarray | None = None  # classification signatures: softmax of the first output
    classes: np.ndarray | None = None  # argmax indices
    batch_rows: int = 0  # rows in the forward pass this request rode in


@dataclass(slots=True)
class Call:
    """One inference request as the monitors see it: filled in by Service.infer."""

    request_id: str
    rows: int = 0
    batch_size: int = 0  # rows of its forward pass (0: none ran)
    inputs: dict[str, np.ndarray] | None = None  # decoded tensors (for the audit's digest/summary)
    outputs: dict[str, np.ndarray] | None = None  # this request's outputs (the shadow mirror compares them)
    shadow: bool = False  # a stable pod's mirror (X-Modelship-Shadow): not stored for feedback, not mirrored
    drawn: bool = False  # the server drew the request id (random, never known before): no duplicate check


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32, copy=True)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


class Service:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.name = settings.model_name or "model"
        self.version = settings.model_version or "unknown"
        self.metrics = metrics or Metrics(self.name, self.version)
        self.model: Model | None = None
        self.signature: Signature | None = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.shutting_down = False
        self.inflight = 0
        # Request body limits in bytes, set once the signature is known (0 until then).
        self.body_limit = 0
        self.feedback_body_limit = 0
        self._chunk_rows = 0  # forward passes take at most this many rows (0: no chunking)
        # One thread for loading and every forward pass: CUDA context and torch state stay put.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="modelship-forward")
        self.metrics.track(
            queue_depth=lambda: self.batcher.queued_rows if self.batcher else 0,
            inflight=lambda: self.inflight,
            ready=lambda: 1.0 if self.ready else 0.0,
        )
        self.metrics.track_health(
            batcher_up=lambda: 1.0 if self.batcher is not None and not self.batcher.dead else 0.0,
            forward_stuck=lambda: 1.0 if self.batcher is not None and self.batcher.stuck else 0.0,
        )
        self.on_identity: list[Callable[[], None]] = []
        self.monitoring: Monitoring | None = None
        self._monitor_stop: asyncio.Event | None = None
        self._monitor_task: asyncio.Task | None = None
        peers = settings.feedback_peer_list
        self.peers = FeedbackPeers(peers, settings.feedback_peer_timeout_ms / 1000.0) if peers else None
        self.metrics.registry.register(MonitoringCollector(
            lambda: self.monitoring, lambda: (self.name, self.version),
            forwarded=(lambda: dict(self.peers.answered)) if self.peers else None,
        ))  # fmt: skip
        self.shadow = Shadow(settings.shadow_config, max_queue=settings.shadow_max_queue, max_bytes=settings.shadow_max_bytes,
                             timeout_s=settings.shadow_timeout_ms / 1000.0, concurrency=settings.shadow_concurrency)  # fmt: skip
        self.metrics.registry.register(ShadowCollector(self.shadow))

    @property
    def ready(self) -> bool:
        return self.batcher is not None and not self.shutting_down and self.batcher.problem() is None

    def health_problem(self) -> str | None:
        """Why this server is broken for good (dead batching loop, stuck forward pass): liveness
        fails and the kubelet restarts the container. None while loading, serving or draining."""
        if self.batcher is None or self.shutting_down:
            return None
        return self.batcher.problem()

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self, model: Model, monitoring: Monitoring | None = None) -> None:
        """Serve `model` (loaded and warmed): identity, metrics, monitors, batcher. On the event loop.

        `monitoring` comes from build_monitoring (it may read files: the loader builds it off
        the loop); without one, it is built here."""
        sig = model.signature
        s = self.settings
        self.model, self.signature = model, sig
        if monitoring is None:
            monitoring = build_monitoring(s, sig, model_path(model))
        self.monitoring = monitoring
        self._monitor_stop = asyncio.Event()
        self._monitor_task = asyncio.get_running_loop().create_task(monitoring.run(self._monitor_stop))
        self.name = s.model_name or sig.name or "model"
        self.version = s.model_version or sig.version or "1"
        self.metrics.set_identity(self.name, self.version)
        info = model.info
        self.metrics.set_model_info(info.format, info.device, info.precision)
        if str(info.device).startswith("cuda"):
            self.metrics.track_gpu_memory(model.memory_stats)
        self._input_names = [spec.name for spec in sig.inputs]
        self._first_input = sig.inputs[0].name
        self._first_output = sig.outputs[0].name
        self._classifier = sig.is_classifier
        self.shadow.class_outputs = class_outputs_of([(o.name, o.shape, o.datatype) for o in sig.outputs], sig.is_classifier)
        self._has_dynamic_row_dims = any(-1 in spec.row_shape for spec in sig.inputs)
        # Warm-up covers batch 1 and max_batch_size: a larger request runs as chunks of at
        # most max_batch_size rows, never as one unwarmed (and on a GPU, larger) forward pass.
        self._chunk_rows = s.max_batch_size if sig.batchable else 0
        self.body_limit = s.max_body_bytes or body_limit(sig, s.max_batch_rows)
        self.feedback_body_limit = s.max_body_bytes or feedback_body_limit(sig, s.max_batch_rows, MAX_FEEDBACK_ITEMS)
        batcher = Batcher(
            self._run_batch,
            # A model without a dynamic batch dimension takes one request per call.
            max_batch_size=s.max_batch_size if sig.batchable else 1,
            max_delay=s.max_delay_ms / 1000.0,
            max_queue=s.max_queue,
            timeout=s.timeout_ms / 1000.0,
            executor=self.executor,
            observer=self.metrics,
            stuck_after=s.timeout_ms / 1000.0,
        )
        batcher.start()
        self.batcher = batcher
        for callback in self.on_identity:
            callback()
        log.info("model %s version %s ready", self.name, self.version)

    def begin_shutdown(self) -> None:
        """Readiness false at once; stop admitting inference; queued work still finishes."""
        self.shutting_down = True
        self.shadow.close()  # pending mirrors are dropped (counted), never awaited
        if self.batcher is not None:
            self.batcher.close()

    async def drain(self) -> None:
        self.begin_shutdown()
        if self.batcher is not None:
            await self.batcher.drain()
        self.executor.shutdown(wait=True)
        if self._monitor_stop is not None and self._monitor_task is not None:
            self._monitor_stop.set()
            await self._monitor_task
        if self.monitoring is not None:
            self.monitoring.close()  # the audit lines of the drained requests are written first

    # -- inference -------------------------------------------------------------------------

    def check_ready(self) -> None:
        """503 while loading or shutting down."""
        if self.batcher is None:
            raise Unavailable(self.load_error or "model is loading")
        if self.shutting_down:
            raise ShuttingDown()

    def check_model(self, name: str, version: str | None = None) -> None:
        """404 for another model or version, 503 while not ready."""
        if self.batcher is None:
            if self.settings.model_name and name != self.settings.model_name:
                raise NotFound(f"model {name!r} not found")
            raise Unavailable(self.load_error or "model is loading")
        if name != self.name:
            raise NotFound(f"model {name!r} not found (this server serves {self.name!r})")
        if version is not None and version != self.version:
            raise NotFound(f"model {name!r} has no version {version!r} (serving {self.version!r})")

    def check_admission(self) -> None:
        """Before a request's body is read: 503 + Retry-After when no request could be queued
        now, whatever its size (no free row in the queue, or shutting down). Shedding then costs
        no body decoding, so clients that retry at once do not starve the admitted requests of
        the event loop. A request that passes may still be shed once its rows are known."""
        batcher = self.batcher
        if batcher is None or batcher.dead:
            return  # the handler answers: loading, or unhealthy
        if self.shutting_down:
            raise ShuttingDown()
        if not batcher.admits(1):
            raise QueueFull()

    async def infer(self, inputs: dict[str, np.ndarray], rows: int, call: Call | None = None) -> Result:
        batcher = self.batcher
        if batcher is None:
            raise Unavailable(self.load_error or "model is loading")
        if self.shutting_down:
            raise ShuttingDown()
        result = await batcher.submit(inputs, rows)
        if call is not None:
            call.rows, call.batch_size, call.inputs, call.outputs = rows, result.batch_rows, inputs, result.outputs
            if self.monitoring is not None and not call.shadow:
                # Before the response is sent: feedback that races the response still finds it.
                self.monitoring.record(call.request_id, result, unique=call.drawn)
        return result

    def _run_batch(self, payloads: list[dict[str, np.ndarray]]) -> list[Result]:
        """On the worker thread: stack the requests, one forward pass, split the outputs."""
        assert self.model is not None
        if len(payloads) == 1:
            feed = payloads[0]
        else:
            if self._has_dynamic_row_dims:
                # Rows of different trailing shapes (e.g. sequence lengths) cannot stack:
                # one forward pass per shape group, results back in request order.
                groups: dict[tuple, list[int]] = {}
                for i, p in enumerate(payloads):
                    groups.setdefault(tuple(p[n].shape[1:] for n in self._input_names), []).append(i)
                if len(groups) > 1:
                    results: list[Result] = [None] * len(payloads)  # type: ignore[list-item]
                    for members in groups.values():
                        for i, r in zip(members, self._run_batch([payloads[i] for i in members])):
                            results[i] = r
                    return results
            feed = {n: np.concatenate([p[n] for p in payloads]) for n in self._input_names}
        out = self._forward(feed)
        if self.monitoring is not None:
            self.monitoring.observe_batch(feed)  # once per forward pass, here on the forward thread
        probs = classes = None
        if self._classifier:
            probs = softmax(out[self._first_output])
            classes = probs.argmax(axis=-1)
        if len(payloads) == 1:
            return [Result(out, probs, classes, payloads[0][self._first_input].shape[0])]
        sizes = [p[self._first_input].shape[0] for p in payloads]
        cuts = np.cumsum(sizes)[:-1]
        total = sum(sizes)
        parts: dict[str, list[np.ndarray]] = {}
        for name, arr in out.items():
            if arr.shape[:1] != (total,):
                raise RuntimeError(f"output {name!r} has no batch dimension to split")
            parts[name] = np.split(arr, cuts)
        p_parts = np.split(probs, cuts) if probs is not None else [None] * len(sizes)
        c_parts = np.split(classes, cuts) if classes is not None else [None] * len(sizes)
        return [
            Result({name: parts[name][i] for name in parts}, p_parts[i], c_parts[i], total)
            for i in range(len(payloads))
        ]

    def _forward(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """model.predict, in chunks of at most _chunk_rows rows."""
        assert self.model is not None
        step = self._chunk_rows
        rows = feed[self._first_input].shape[0]
        if not step or rows <= step:
            return self.model.predict(feed)
        parts = [self.model.predict({n: a[i : i + step] for n, a in feed.items()}) for i in range(0, rows, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def model_path(model: Model) -> str | None:
    """The local model file (its directory holds the reference profile), if the model says."""
    path = getattr(model.info, "path", None)
    return str(path) if path else None
