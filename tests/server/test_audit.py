"""The audit log: JSON lines, request ids, no raw inputs by default, masking, sampling, never blocking."""
from __future__ import annotations

import hashlib
import io
import json
import random
import threading
import time

import numpy as np
import pytest

from modelship_server.audit import AuditLogger, AuditRecord

# Distinctive feature values: if any of these strings shows up in a line, raw input leaked.
VALUES = np.array([[1234.5678, 987.6543, 4242.125], [3141.5926, 2718.2818, 1618.0339]])
BODY = json.dumps({"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64", "data": VALUES.ravel().tolist()}]}).encode()


def record(i: int = 0, status: int = 200, **kw) -> AuditRecord:
    base = dict(
        request_id=f"req-{i}", model="digits", version="1.0.0", protocol="v2", status=status,
        latency_ms=3.25, rows=2, batch_size=8, client="10.1.2.3:5555",
        inputs={"input": VALUES}, body=BODY,
    )  # fmt: skip
    base.update(kw)
    return AuditRecord(**base)


def lines_of(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def value_strings() -> list[str]:
    return [repr(float(v)) for v in VALUES.ravel()] + [f"{v:.2f}" for v in VALUES.ravel()]


def test_one_json_line_per_request_with_the_request_fields() -> None:
    out = io.StringIO()
    with AuditLogger(stream=out, clock=lambda: 1767323045.678) as audit:
        for i in range(5):
            assert audit.log(record(i, status=200 if i % 2 else 400, error=None if i % 2 else "bad shape"))
        assert audit.flush()
    lines = lines_of(out)
    assert [line["request_id"] for line in lines] == [f"req-{i}" for i in range(5)]
    first = lines[0]
    assert first["ts"] == "2026-01-02T03:04:05.678Z"
    assert first["kind"] == "audit"
    assert {k: first[k] for k in ("model", "version", "protocol", "status", "latency_ms", "rows", "batch_size", "client")} == {
        "model": "digits", "version": "1.0.0", "protocol": "v2", "status": 400, "latency_ms": 3.25,
        "rows": 2, "batch_size": 8, "client": "10.1.2.3:5555",
    }  # fmt: skip
    assert first["error"] == "bad shape" and "error" not in lines[1]
    assert audit.written == 5 and audit.dropped == 0


@pytest.mark.parametrize("mode", ["none", "digest"])
def test_no_raw_input_values_by_default_or_with_digest(mode: str) -> None:
    out = io.StringIO()
    with AuditLogger(stream=out, include_inputs=mode) as audit:
        audit.log(record(1))
        audit.log(record(2, body=None))  # digest falls back to the decoded tensors
        audit.flush()
    text = out.getvalue()
    assert text.count("\n") == 2
    for s in value_strings():
        assert s not in text
    lines = lines_of(out)
    if mode == "none":
        assert all("inputs" not in line and "input_digest" not in line for line in lines)
    else:
        assert lines[0]["input_digest"] == "sha256:" + hashlib.sha256(BODY).hexdigest()
        assert lines[1]["input_digest"].startswith("sha256:") and lines[1]["input_digest"] != lines[0]["input_digest"]


def test_summary_reveals_only_shape_and_aggregates() -> None:
    out = io.StringIO()
    with AuditLogger(stream=out, include_inputs="summary") as audit:
        audit.log(record(1))
        audit.flush()
    line = lines_of(out)[0]
    summary = line["inputs"]["input"]
    assert summary["shape"] == [2, 3] and summary["dtype"] == "float64"
    assert summary["min"] == VALUES.min() and summary["max"] == VALUES.max()
    assert summary["mean"] == pytest.approx(VALUES.mean())
    text = out.getvalue()
    inner = [v for v in VALUES.ravel() if v not in (VALUES.min(), VALUES.max())]
    assert all(repr(float(v)) not in text for v in inner)


def test_raw_inputs_only_when_explicitly_configured() -> None:
    out = io.StringIO()
    with AuditLogger(stream=out, include_inputs="raw") as audit:
        audit.log(record(1))
        audit.flush()
    assert lines_of(out)[0]["inputs"]["input"]["data"] == VALUES.tolist()
    assert all(repr(float(v)) in out.getvalue() for v in VALUES.ravel())


def test_masked_fields_at_any_depth() -> None:
    out = io.StringIO()
    with AuditLogger(stream=out, include_inputs="summary", mask_fields=("client", "input", "tenant")) as audit:
        audit.log(record(1, extra={"tenant": "acme-secret", "user_agent": "curl/8"}))
        audit.flush()
    line = lines_of(out)[0]
    assert line["client"] == "***" and line["inputs"] == {"input": "***"}
    assert line["extra"] == {"tenant": "***", "user_agent": "curl/8"}
    assert "10.1.2.3" not in out.getvalue() and "acme-secret" not in out.getvalue()
    assert line["request_id"] == "req-1"


def test_sampling_rate_applies_to_successes_and_errors_are_always_logged() -> None:
    out = io.StringIO()
    n = 10_000
    with AuditLogger(stream=out, sample_rate=0.25, rng=random.Random(42)) as audit:
        for i in range(n):
            audit.log(record(i))
        for i in range(n, n + 300):
            audit.log(record(i, status=500 if i % 2 else 404))
        assert audit.flush()
    lines = lines_of(out)
    successes = sum(line["status"] == 200 for line in lines)
    sd = (n * 0.25 * 0.75) ** 0.5
    assert abs(successes - n * 0.25) < 5 * sd
    assert sum(line["status"] >= 400 for line in lines) == 300
    assert audit.sampled_out == n - successes and audit.logged == len(lines)
    # the same seed samples the same requests: reproducible
    again = AuditLogger(stream=io.StringIO(), sample_rate=0.25, rng=random.Random(42))
    try:
        picked = [i for i in range(n) if again.log(record(i))]
    finally:
        again.close()
    assert picked == [int(line["request_id"][4:]) for line in lines if line["status"] == 200]
    with AuditLogger(stream=io.StringIO(), sample_rate=0.0) as off:
        assert not off.log(record(1)) and off.log(record(2, status=503))


def test_file_gets_the_same_lines(tmp_path) -> None:
    out = io.StringIO()
    path = tmp_path / "audit.jsonl"
    with AuditLogger(stream=out, path=path) as audit:
        for i in range(3):
            audit.log(record(i))
    assert path.read_text() == out.getvalue() and len(path.read_text().splitlines()) == 3
    with AuditLogger(path=path, to_stream=False) as audit:  # file only, appended
        audit.log(record(9))
    assert [json.loads(s)["request_id"] for s in path.read_text().splitlines()] == ["req-0", "req-1", "req-2", "req-9"]


class BlockedStream(io.StringIO):
    """A stream whose writes hang until released (a stuck log pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait(10)
        return super().write(s)


def test_a_stuck_stream_never_blocks_the_request_path() -> None:
    stream = BlockedStream()
    audit = AuditLogger(stream=stream, queue_size=5)
    try:
        started = time.perf_counter()
        accepted = [audit.log(record(i)) for i in range(200)]
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0  # put_nowait: no waiting on the stuck writer
        assert audit.dropped > 0 and audit.dropped + audit.logged == 200
        assert sum(accepted) == audit.logged <= 5 + 1 + 512  # queue + the burst the writer holds
        stream.release.set()
        assert audit.flush(timeout=10)
        assert len(lines_of(stream)) == audit.logged
    finally:
        stream.release.set()
        audit.close()
    assert not audit.log(record(1))  # closed: counted as dropped, no exception


def test_log_call_is_cheap() -> None:
    """The request-path cost: sampling + a queue put (formatting happens on the writer thread)."""
    with AuditLogger(stream=io.StringIO(), include_inputs="digest", queue_size=100_000) as audit:
        recs = [record(i) for i in range(5000)]
        started = time.perf_counter()
        for r in recs:
            audit.log(r)
        per_call = (time.perf_counter() - started) / len(recs)
        assert audit.flush(timeout=20)
    assert per_call < 200e-6  # typically a few microseconds; generous for a shared CI core
    assert audit.written == 5000


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="include_inputs"):
        AuditLogger(stream=io.StringIO(), include_inputs="everything")
    with pytest.raises(ValueError, match="sample_rate"):
        AuditLogger(stream=io.StringIO(), sample_rate=1.5)


class _StuckStream(io.StringIO):
    """A stream whose writes wait until released: a writer that cannot keep up."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait(30)
        return super().write(s)


def test_queue_is_bounded_in_bytes_while_the_writer_is_stuck() -> None:
    out = _StuckStream()
    big = b"x" * 100_000  # a 100 kB body, kept for its digest
    audit = AuditLogger(stream=out, include_inputs="digest", max_bytes=1 << 20, flush_interval=0.01)
    try:
        assert not audit.wants_inputs and audit.wants_body  # the digest needs the body only
        accepted = [audit.log(record(i, inputs=None, body=big)) for i in range(100)]
        assert 8 <= sum(accepted) <= 11 and audit.dropped == 100 - sum(accepted)
        assert audit.queued_bytes <= 1 << 20
        out.release.set()
        assert audit.flush(10)
        assert audit.queued_bytes == 0 and audit.queued == 0
        assert audit.log(record(100, inputs=None, body=big))  # room again
        assert audit.flush(10)
    finally:
        out.release.set()
        audit.close()
    lines = lines_of(out)
    assert len(lines) == audit.written == sum(accepted) + 1
    assert lines[-1]["input_digest"] == "sha256:" + hashlib.sha256(big).hexdigest()
