"""The audit log of a real server: stdout of a server process, or a file; inputs only as configured."""
from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelship_server.app import create_app
from metrics_text import parse, value
from server_harness import ServerThread, free_port, settings_for, start_process, wait_for

MODEL = "digits"
MARK = 13.375  # a distinctive input value: it must never show up in a log that was not asked for it


def _v2(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def _audit_lines(text: str) -> list[dict[str, Any]]:
    """The audit lines among a process's output (its log lines are not JSON)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)  # every JSON-looking line must parse
            if doc.get("kind") == "audit":
                lines.append(doc)
    return lines


def _send_mix(url: str, X: np.ndarray) -> dict[str, tuple[int, int]]:
    """Requests of every protocol, a client-chosen id and a bad request: request id -> (status, rows)."""
    seen: dict[str, tuple[int, int]] = {}
    with httpx.Client(base_url=url, timeout=30) as c:
        for path, body, rows, headers in [
            ("/predict", {"features": X[0].tolist()}, 1, {}),
            ("/predict/batch", {"batch_features": X[1:5].tolist()}, 4, {}),
            (f"/v1/models/{MODEL}:predict", {"instances": X[5:7].tolist()}, 2, {}),
            (f"/v2/models/{MODEL}/infer", _v2(X[7:10]), 3, {"x-request-id": "client-chosen-42"}),
            (f"/v2/models/{MODEL}/infer", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [MARK, 1, 2]}]}, 0, {}),
        ]:  # fmt: skip
            r = c.post(path, json=body, headers=headers)
            seen[r.headers["x-request-id"]] = (r.status_code, rows)
    assert "client-chosen-42" in seen
    return seen


def test_audit_lines_on_stdout_carry_the_request_ids_and_no_inputs(model_dir: Path, heldout) -> None:
    X, _ = heldout
    X = X.copy()
    X[:, 20] = MARK
    port = free_port()
    proc = start_process((model_dir / "model.pt").as_uri(), port, "--torch-threads", "1", "--audit-log", "stdout")
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "server process readiness")
        seen = _send_mix(url, X)
        proc.send_signal(signal.SIGTERM)  # a drained server writes its queued audit lines before exit
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, out[-2000:]
    lines = _audit_lines(out)
    assert {line["request_id"] for line in lines} == set(seen) and len(lines) == len(seen)
    for line in lines:
        status, rows = seen[line["request_id"]]
        assert list(line)[:11] == ["ts", "kind", "request_id", "model", "version", "protocol", "status",
                                   "latency_ms", "rows", "batch_size", "client"]  # fmt: skip
        assert line["ts"].endswith("Z") and line["model"] == MODEL and line["version"] == "1.0.0"
        assert line["status"] == status and line["rows"] == rows and line["batch_size"] >= rows
        assert line["latency_ms"] > 0 and line["client"].startswith("127.0.0.1:")
        assert "inputs" not in line and "input_digest" not in line
        assert ("error" in line) == (status >= 400)
    assert {line["protocol"] for line in lines} == {"predict", "v1", "v2"}
    assert str(MARK) not in out and "13.38" not in out  # no raw input anywhere in the output


def _file_server(model_dir: Path, path: Path, **audit: Any) -> ServerThread:
    return ServerThread(create_app(settings_for(model_dir, audit_file=str(path), **audit)))


def _wait_lines(path: Path, n: int) -> list[dict[str, Any]]:
    wait_for(lambda: path.exists() and len(_audit_lines(path.read_text())) >= n, 10, f"{n} audit lines in {path}")
    return _audit_lines(path.read_text())


def test_audit_file_with_summary_inputs_and_masked_fields(model_dir: Path, heldout, tmp_path: Path) -> None:
    X, _ = heldout
    X = X.copy()
    X[:, 20] = MARK
    path = tmp_path / "audit.jsonl"
    with _file_server(model_dir, path, audit_inputs="summary", audit_mask="client,input") as srv:
        srv.wait_ready()
        r = httpx.post(f"{srv.url}/v2/models/{MODEL}/infer", json=_v2(X[:4]))
        assert r.status_code == 200
        (line,) = _wait_lines(path, 1)
        assert line["request_id"] == r.headers["x-request-id"]
        assert line["client"] == "***" and line["inputs"] == {"input": "***"}
    with _file_server(model_dir, path, audit_inputs="summary", audit_log="off") as srv:
        srv.wait_ready()
        r = httpx.post(f"{srv.url}/v2/models/{MODEL}/infer", json=_v2(X[:4]))
        line = _wait_lines(path, 2)[-1]  # appended to the same file
        summary = line["inputs"]["input"]
        assert summary["shape"] == [4, 64] and summary["dtype"] == "float32" and "data" not in summary
        # a summary reveals extremes and the mean, never the values themselves
        assert summary["max"] == float(X[:4].max()) and summary["min"] == float(X[:4].min())
        assert str(MARK) not in path.read_text()
        assert line["client"].startswith("127.0.0.1:")


def test_audit_digest_raw_and_sampling(model_dir: Path, heldout, tmp_path: Path) -> None:
    X, _ = heldout
    digest_path, raw_path = tmp_path / "digest.jsonl", tmp_path / "raw.jsonl"
    with _file_server(model_dir, digest_path, audit_inputs="digest", audit_sample_rate=0.0) as srv:
        srv.wait_ready()
        body = json.dumps(_v2(X[:2])).encode()
        ok = httpx.post(f"{srv.url}/v2/models/{MODEL}/infer", content=body, headers={"content-type": "application/json"})
        bad = httpx.post(f"{srv.url}/v2/models/{MODEL}/infer", content=b'{"inputs": []}')
        assert ok.status_code == 200 and bad.status_code == 400
        (line,) = _wait_lines(digest_path, 1)  # sample rate 0: successes are not logged, errors are
        assert line["request_id"] == bad.headers["x-request-id"] and line["status"] == 400
        assert line["input_digest"] == "sha256:" + hashlib.sha256(b'{"inputs": []}').hexdigest()
        assert "inputs" in line["error"]
        m = parse(httpx.get(srv.url + "/metrics").text)
        assert value(m, "modelship_audit_sampled_out_total") == 1 and value(m, "modelship_audit_lines_total") == 1
    with _file_server(model_dir, raw_path, audit_inputs="raw") as srv:
        srv.wait_ready()
        r = httpx.post(f"{srv.url}/v2/models/{MODEL}/infer", json=_v2(X[:2]))
        (line,) = _wait_lines(raw_path, 1)
        assert line["request_id"] == r.headers["x-request-id"]
        np.testing.assert_array_equal(np.asarray(line["inputs"]["input"]["data"], np.float32), X[:2])
