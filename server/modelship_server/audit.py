"""Prediction audit log: one JSON line per inference request, off the request path.

No torch, no FastAPI. `AuditLogger.log` runs on the request path and only decides sampling
and appends a small tuple to a bounded deque (well under a microsecond: no lock, no thread
wake-up); one background thread wakes every `flush_interval` seconds, formats the JSON
(digests and summaries included) and writes to the stream and the optional file, one
write and flush per wake-up. When the queue is full the line is dropped
and counted: the audit log never slows or fails a request. Errors (status >= 400) are
always logged; `sample_rate` applies to successes only.

Inputs are never written raw unless `include_inputs="raw"`: "none" (default) writes
nothing about them, "digest" a sha256 of the request body (or of the decoded tensors when
no body is given), "summary" per input dtype/shape/min/max/mean. Note that min and max are
values of the input: for a one-element input they are the input, so prefer "digest" for
sensitive data. Any key named in `mask_fields`, at any depth (a record field such as
"client", an input name, a key of `extra`), has its value replaced by "***".
"""
from __future__ import annotations

import hashlib
import math
import random
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Mapping

import numpy as np
import orjson

INPUT_MODES = ("none", "digest", "summary", "raw")
MASK = "***"


@dataclass(slots=True)
class AuditRecord:
    request_id: str
    model: str
    version: str
    protocol: str  # "v2", "v1", "plain", ...
    status: int  # HTTP status code answered
    latency_ms: float
    rows: int = 0  # rows in this request
    batch_size: int = 0  # rows in the forward pass this request rode in (0: none ran)
    client: str | None = None  # client address ("host:port")
    error: str | None = None
    inputs: Mapping[str, np.ndarray] | None = None  # decoded tensors (summary/raw/digest)
    body: bytes | None = None  # the raw request body (digest)
    extra: Mapping[str, Any] | None = None  # e.g. selected headers; masked like the rest


_second: list[Any] = [None, ""]  # (whole second, its "YYYY-MM-DDTHH:MM:SS" text): one writer thread


def utc_iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a Z: 2026-01-02T03:04:05.678Z."""
    sec, ms = divmod(int(ts * 1000), 1000)
    if _second[0] != sec:  # the date text is formatted once per second, not per line
        _second[:] = [sec, datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{ms:03d}Z"


def input_digest(inputs: Mapping[str, np.ndarray] | None, body: bytes | None) -> str | None:
    """sha256 of the raw body when given, else of the tensors (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    if body is not None:
        h.update(body)
    elif inputs:
        for name in sorted(inputs):
            arr = np.ascontiguousarray(inputs[name])
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
    else:
        return None
    return "sha256:" + h.hexdigest()


# Estimated bytes of a queued record besides its body and tensors: the slotted record, its
# strings (id, model, version, protocol, client) and the queue tuple.
RECORD_OVERHEAD = 600


def record_bytes(r: AuditRecord) -> int:
    """Estimated memory a queued record holds (the body and tensors it references included)."""
    size = RECORD_OVERHEAD + (len(r.body) if r.body is not None else 0) + (len(r.error) if r.error else 0)
    if r.inputs:
        size += sum(getattr(a, "nbytes", 0) for a in r.inputs.values())
    return size


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def input_summary(arr: np.ndarray) -> dict[str, Any]:
    a = np.asarray(arr)
    out: dict[str, Any] = {"dtype": str(a.dtype), "shape": list(a.shape)}
    if a.size and a.dtype.kind in "biuf":
        out.update(
            min=_finite(float(a.min())), max=_finite(float(a.max())), mean=_finite(float(a.mean(dtype=np.float64)))
        )
    return out


def _raw(arr: np.ndarray) -> dict[str, Any]:
    a = np.asarray(arr)
    data = a.tolist()
    if a.dtype.kind == "f" and not np.isfinite(a).all():  # JSON has no NaN/inf
        data = np.where(np.isfinite(a), a.astype(object), None).tolist()
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": data}


def _mask(value: Any, masked: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: (MASK if k in masked else _mask(v, masked)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, masked) for v in value]
    return value


class AuditLogger:
    """One JSON line per logged request to `stream` (default stdout) and optionally `path`.

    Counters: `logged` (accepted for writing), `sampled_out`, `dropped` (queue full, over
    `max_bytes`, or closed), `written`, `write_errors`. Call `close()` on shutdown to drain and stop.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        path: str | Path | None = None,
        sample_rate: float = 1.0,
        include_inputs: str = "none",
        mask_fields: Iterable[str] = (),
        rng: random.Random | None = None,
        queue_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        to_stream: bool = True,
        flush_interval: float = 0.05,
        max_bytes: int | None = 8 << 20,
    ) -> None:
        if include_inputs not in INPUT_MODES:
            raise ValueError(f"include_inputs must be one of {INPUT_MODES}, got {include_inputs!r}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("sample_rate must be in [0, 1]")
        if queue_size < 1 or (max_bytes is not None and max_bytes < 1):
            raise ValueError("queue_size and max_bytes must be >= 1")
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        self.sample_rate, self.include_inputs = sample_rate, include_inputs
        self.mask_fields = frozenset(mask_fields)
        self._rng = rng or random.Random()
        self._clock = clock
        self._outputs: list[IO[str]] = []
        if to_stream:
            self._outputs.append(stream if stream is not None else sys.stdout)
        self._file: IO[str] | None = None
        if path is not None:
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
            self._outputs.append(self._file)
        # deque.append/popleft are atomic: the request path takes no lock and wakes no thread
        self._pending: deque[Any] = deque()
        self._queue_size = queue_size
        self.max_bytes = max_bytes
        # Estimated bytes queued = _bytes_in - _bytes_out: each counter has one writer (the
        # request path, the writer thread), so neither needs a lock.
        self._bytes_in = self._bytes_out = 0
        self._flush_interval = flush_interval
        self._wake = threading.Event()  # cuts the interval short (flush, close)
        self._closed = False
        self.logged = self.sampled_out = self.dropped = self.written = self.write_errors = 0
        self._thread = threading.Thread(target=self._run, name="modelship-audit", daemon=True)
        self._thread.start()

    @property
    def wants_inputs(self) -> bool:
        """Whether records should carry the decoded tensors (else pass inputs=None). The
        digest is of the body: the tensors are not kept for it."""
        return self.include_inputs in ("summary", "raw")

    @property
    def wants_body(self) -> bool:
        """Whether records should carry the raw request body (only the digest uses it)."""
        return self.include_inputs == "digest"

    # -- request path -----------------------------------------------------------------
    def should_log(self, status: int) -> bool:
        if status >= 400 or self.sample_rate >= 1.0:
            return True
        return self.sample_rate > 0.0 and self._rng.random() < self.sample_rate

    def log(self, record: AuditRecord) -> bool:
        """Queue one line for `record`; True when it will be written. Never blocks."""
        if not self.should_log(record.status):
            self.sampled_out += 1
            return False
        size = record_bytes(record)
        if (self._closed or len(self._pending) >= self._queue_size
                or (self.max_bytes is not None and self._bytes_in - self._bytes_out + size > self.max_bytes)):  # fmt: skip
            self.dropped += 1  # closed, or the writer is behind: drop rather than wait or grow
            return False
        self._bytes_in += size
        self._pending.append((self._clock(), record, size))
        self.logged += 1
        return True

    @property
    def queued(self) -> int:
        """Lines waiting for the writer thread."""
        return len(self._pending)

    @property
    def queued_bytes(self) -> int:
        """Estimated memory held by the lines waiting for the writer thread."""
        return max(0, self._bytes_in - self._bytes_out)

    # -- formatting (writer thread) -------------------------------------------------------
    def format(self, ts: float, r: AuditRecord) -> str:
        line: dict[str, Any] = {
            "ts": utc_iso(ts),
            "kind": "audit",
            "request_id": r.request_id,
            "model": r.model,
            "version": r.version,
            "protocol": r.protocol,
            "status": r.status,
            "latency_ms": round(float(r.latency_ms), 3),
            "rows": r.rows,
            "batch_size": r.batch_size,
            "client": r.client,
        }
        if r.error is not None:
            line["error"] = r.error
        mode = self.include_inputs
        if mode == "digest":
            line["input_digest"] = input_digest(r.inputs, r.body)
        elif mode == "summary" and r.inputs is not None:
            line["inputs"] = {name: input_summary(arr) for name, arr in r.inputs.items()}
        elif mode == "raw" and r.inputs is not None:
            line["inputs"] = {name: _raw(arr) for name, arr in r.inputs.items()}
        if r.extra:
            line["extra"] = dict(r.extra)
        if self.mask_fields:
            line = _mask(line, self.mask_fields)
        return orjson.dumps(line, default=str).decode()  # ~5x faster than json.dumps: the thread shares the GIL

    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            stop = self._closed  # read before draining: what was queued before close is written
            while pending:
                lines, events = [], []
                while pending and len(lines) < 4096:
                    item = pending.popleft()
                    if isinstance(item, threading.Event):
                        events.append(item)
                        continue
                    ts, record, size = item
                    try:
                        lines.append(self.format(ts, record))
                    except Exception:  # noqa: BLE001 - a bad record must not stop auditing
                        self.write_errors += 1
                    self._bytes_out += size
                if lines:
                    text = "\n".join(lines) + "\n"
                    for out in self._outputs:
                        try:
                            out.write(text)
                            out.flush()
                        except Exception:  # noqa: BLE001 - e.g. a closed pipe; counted
                            self.write_errors += 1
                    self.written += len(lines)
                for event in events:
                    event.set()
            if stop:
                return

    # -- lifecycle --------------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line queued before this call is written; False on timeout."""
        if self._closed or not self._thread.is_alive():
            return not self._thread.is_alive()
        done = threading.Event()
        self._pending.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the writer thread and close the file."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        if self._file is not None and not self._thread.is_alive():
            self._file.close()

    def __enter__(self) -> AuditLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
