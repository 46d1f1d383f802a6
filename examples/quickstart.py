"""Quick start, no cluster needed: serve the example model locally and talk to it.

    python examples/build_model.py --out examples/model
    python examples/quickstart.py --model-dir examples/model [--port 8080]

Starts the bundled server (`python -m modelship_server`) on the model, waits until it is
ready, sends real held-out digits (raw pixels: the model scales them itself) through
`/predict` (by position and by column name), `/predict/batch` and the Open
Inference Protocol (`/v2/models/{name}/infer`), prints predictions against the true labels
and the held-out accuracy, sends the true labels back as feedback (online accuracy) and asks
for an input-drift report (held-out inputs, then deliberately shifted ones), shows a few lines
of `/metrics`, then stops the server with SIGTERM and checks that it exits cleanly. Exits
non-zero on any failure.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
MIN_ACCURACY = 0.9


class QuickstartError(RuntimeError):
    pass


# ---------------------------------------------------------------- HTTP


def call(base: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, dict, Any]:
    """One request; returns (status, headers, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers), e.read()
    ctype = headers.get("content-type", headers.get("Content-Type", ""))
    return status, headers, json.loads(raw) if "json" in ctype else raw.decode(errors="replace")


def post_ok(base: str, path: str, body: Any) -> tuple[dict, Any]:
    status, headers, payload = call(base, "POST", path, body)
    if status != 200:
        raise QuickstartError(f"POST {path} -> {status}: {payload}")
    return headers, payload


# ---------------------------------------------------------------- server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_file: Path, port: int, log: Path) -> Iterator[subprocess.Popen]:
    """The bundled server as a subprocess; killed on the way out if still running."""
    cmd = [
        sys.executable, "-m", "modelship_server",
        "--model-uri", model_file.resolve().as_uri(),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    print(f"$ {' '.join(cmd)}")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> float:
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise QuickstartError(f"server exited with code {proc.returncode} before becoming ready")
        try:
            if call(base, "GET", "/v2/health/ready", timeout=1.0)[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    raise QuickstartError(f"server not ready within {timeout:.0f}s")


def stop(proc: subprocess.Popen, timeout: float) -> float:
    """SIGTERM and wait: a clean shutdown exits 0."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise QuickstartError(f"server still running {timeout:.0f}s after SIGTERM") from None
    if code != 0:
        raise QuickstartError(f"server exited with code {code} after SIGTERM")
    return time.monotonic() - started


# ---------------------------------------------------------------- the walkthrough


def label_of(logits: list[float], labels: list[str]) -> str:
    return labels[int(np.argmax(logits))]


def show_single(base: str, x: np.ndarray, y: np.ndarray, labels: list[str], n: int) -> None:
    print(f"\n/predict, one digit per request ({n} of them):")
    for i in range(n):
        headers, out = post_ok(base, "/predict", {"features": x[i].tolist()})
        pred = out["prediction"]
        if pred != label_of(out["outputs"]["logits"], labels):
            raise QuickstartError(f"/predict: prediction {pred} is not the argmax of its logits")
        mark = "ok" if pred == labels[y[i]] else "WRONG"
        print(f"  sample {i:>3}: predicted {pred} (p={max(out['probabilities']):.3f})  true {labels[y[i]]}  "
              f"{mark}   x-model-version: {headers.get('x-model-version')}")  # fmt: skip


def show_named(base: str, x: np.ndarray, columns: list[str]) -> None:
    """The signature names the 64 columns: a row may be sent by name, in any order."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(columns))
    by_name = {columns[j]: float(x[0, j]) for j in order}  # shuffled on purpose
    _, named = post_ok(base, "/predict", {"features": by_name})
    _, positional = post_ok(base, "/predict", {"features": x[0].tolist()})
    if named["outputs"] != positional["outputs"]:
        raise QuickstartError("/predict by name and by position disagree")
    print(f"\n/predict by name: {{\"features\": {{\"{columns[order[0]]}\": {x[0, order[0]]:g}, ...}}}} "
          f"(64 names, shuffled) -> {named['prediction']}, as by position")  # fmt: skip
    del by_name[columns[5]]
    status, _, answer = call(base, "POST", "/predict", {"features": {**by_name, "pixel_8_8": 0}})
    if status != 400:
        raise QuickstartError(f"/predict with a missing and an unknown name -> {status}, not 400")
    print(f"  one name missing, one unknown -> {status}: {answer['error']}")


def batch_accuracy(base: str, x: np.ndarray, y: np.ndarray, labels: list[str], rows: int) -> float:
    preds: list[str] = []
    for start in range(0, len(x), rows):
        _, out = post_ok(base, "/predict/batch", {"batch_features": x[start : start + rows].tolist()})
        preds += out["predictions"]
    if len(preds) != len(x):
        raise QuickstartError(f"/predict/batch returned {len(preds)} predictions for {len(x)} rows")
    return float(np.mean([p == labels[t] for p, t in zip(preds, y)]))


def concurrent_singles(base: str, x: np.ndarray, y: np.ndarray, labels: list[str], workers: int) -> float:
    """Many one-row requests at once: the server batches them together."""

    def one(i: int) -> bool:
        _, out = post_ok(base, "/predict", {"features": x[i].tolist()})
        return out["prediction"] == labels[y[i]]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return float(np.mean(list(pool.map(one, range(len(x))))))


def v2_infer(base: str, name: str, x: np.ndarray, y: np.ndarray, labels: list[str]) -> None:
    body = {
        "id": "quickstart",
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
    }
    _, out = post_ok(base, f"/v2/models/{name}/infer", body)
    logits = out["outputs"][0]
    data = np.asarray(logits["data"], dtype=np.float32).reshape(logits["shape"])
    preds = [label_of(row, labels) for row in data]
    print(f"\nOpen Inference Protocol: POST /v2/models/{name}/infer with a [{len(x)}, 64] FP32 tensor")
    print(f"  output '{logits['name']}' {logits['datatype']} shape {logits['shape']}")
    print(f"  predicted {' '.join(preds)}")
    print(f"  true      {' '.join(labels[t] for t in y)}")


def monitoring(base: str, name: str, x: np.ndarray, y: np.ndarray, offline_accuracy: float) -> None:
    """Feedback joined to earlier predictions by x-request-id, and drift against the training inputs."""
    items = []
    for start in range(0, len(x), 50):
        headers, _ = post_ok(base, "/predict/batch", {"batch_features": x[start : start + 50].tolist()})
        rid = headers.get("x-request-id") or headers.get("X-Request-Id")
        items.append({"request_id": rid, "truth": y[start : start + 50].tolist()})
    _, answer = post_ok(base, f"/v2/models/{name}/feedback", {"feedback": items})
    status, _, text = call(base, "GET", "/metrics")
    online = next((float(line.split()[-1]) for line in str(text).splitlines()
                   if line.startswith("modelship_online_accuracy{")), float("nan"))  # fmt: skip
    print(f"\nfeedback: POST /v2/models/{name}/feedback with the true labels of {len(items)} earlier "
          f"requests (by x-request-id): {answer['matched']} matched")  # fmt: skip
    print(f"  online accuracy from feedback (modelship_online_accuracy): {online:.4f}, "
          f"as measured above: {offline_accuracy:.4f}")  # fmt: skip
    if answer["matched"] != len(items) or abs(online - offline_accuracy) > 1e-9:
        raise QuickstartError("online accuracy from feedback does not match the held-out accuracy")
    status, _, report = call(base, "GET", f"/v2/models/{name}/drift")
    if status != 200:
        raise QuickstartError(f"GET /v2/models/{name}/drift -> {status}: {report}")
    print(f"drift: GET /v2/models/{name}/drift over the last {report['rows']} inputs: "
          f"PSI max {report['psi_max']:.3f} (threshold {report['threshold']:g}), drift {report['drift']}")  # fmt: skip
    if report["drift"]:
        raise QuickstartError("held-out inputs were reported as drifted")
    shifted = x.copy()
    shifted[:, 36] += 4.0  # one pixel column reads brighter: a camera that changed
    for start in range(0, len(x), 50):
        post_ok(base, "/predict/batch", {"batch_features": shifted[start : start + 50].tolist()})
    _, _, report = call(base, "GET", f"/v2/models/{name}/drift")
    print(f"  after {len(x)} inputs with pixel 36 brightened: drift {report['drift']}, "
          f"drifted features {report['drifted']} (the exported gauges follow at the next interval)")  # fmt: skip
    if report["drifted"] != ["f36"]:
        raise QuickstartError(f"expected drift in f36 only, got {report['drifted']}")


# The handful of families worth a first look, in this order (all prefixed modelship_).
SHOWN_METRICS = {
    "modelship_model_info": "the served model",
    "modelship_requests": "requests answered, by protocol and status code",
    "modelship_batch_size_rows": "rows per forward pass: dynamic batching at work",
    "modelship_request_duration_seconds": "end-to-end latency",
    "modelship_queue_wait_seconds": "time waiting for batch-mates",
    "modelship_compute_seconds": "forward pass per batch",
    "modelship_online_accuracy": "accuracy from feedback (ground truth joined by x-request-id)",
    "modelship_drift_detected": "input drift against the training data (scored every 30 s)",
}


def show_metrics(base: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    status, _, text = call(base, "GET", "/metrics")
    if status != 200:
        raise QuickstartError(f"GET /metrics -> {status}")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    print(f"\nGET /metrics ({len(families)} families; a few of them):")
    for name, what in SHOWN_METRICS.items():
        fam = families.get(name)
        if fam is None:
            continue
        print(f"  {name} — {what}")
        if fam.type == "histogram":
            print(f"      {summarize_histogram(fam)}")
        else:
            for s in fam.samples:
                if fam.type != "counter" or s.name.endswith("_total"):
                    print(f"      {fmt_labels(s.labels)} {s.value:g}")


def fmt_labels(labels: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items())


def summarize_histogram(fam: Any) -> str:
    """count, mean and bucket-bounded p50 / p99 over all label sets of a histogram."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for s in fam.samples:
        if s.name.endswith("_bucket"):
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
        elif s.name.endswith("_sum"):
            total += s.value
        elif s.name.endswith("_count"):
            count += s.value
    if not count:
        return "no observations"

    def quantile(q: float) -> float:
        return next((le for le in sorted(buckets) if buckets[le] >= q * count), float("inf"))

    if fam.name.endswith("_seconds"):  # milliseconds read better at this scale
        scale, unit = 1e3, " ms"
    else:
        scale, unit = 1.0, ""
    return (f"count {count:g}  mean {total / count * scale:.3g}{unit}  "
            f"p50 <= {quantile(0.5) * scale:g}{unit}  p99 <= {quantile(0.99) * scale:g}{unit}")  # fmt: skip


def run(model_dir: Path, port: int, model_file: str) -> None:
    sig = json.loads((model_dir / "signature.json").read_text())
    labels, name = sig["labels"], sig["name"]
    heldout = np.load(model_dir / "heldout.npz")
    x, y = heldout["X"].astype(np.float32), heldout["y"]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="modelship-quickstart-") as tmp:
        log = Path(tmp) / "server.log"
        with running_server(model_dir / model_file, port, log) as proc:
            try:
                took = wait_ready(base, proc, READY_TIMEOUT_S)
                print(f"server ready on {base} after {took:.1f}s (model loaded and warmed)")
                show_single(base, x, y, labels, n=5)
                show_named(base, x, sig["inputs"][0]["columns"])
                acc_batch = batch_accuracy(base, x, y, labels, rows=64)
                print(f"\n/predict/batch, 64 digits per request: held-out accuracy {acc_batch:.4f} "
                      f"over {len(x)} samples")  # fmt: skip
                acc_single = concurrent_singles(base, x, y, labels, workers=16)
                print(f"/predict, {len(x)} one-digit requests from 16 threads at once: "
                      f"accuracy {acc_single:.4f}")  # fmt: skip
                v2_infer(base, name, x[:8], y[:8], labels)
                monitoring(base, name, x, y, acc_batch)
                show_metrics(base)
                if min(acc_batch, acc_single) < MIN_ACCURACY:
                    raise QuickstartError(f"held-out accuracy below {MIN_ACCURACY}")
                took = stop(proc, STOP_TIMEOUT_S)
                print(f"\nSIGTERM: server drained and exited cleanly in {took:.1f}s")
            except Exception:
                print(f"\n--- server log (last lines) ---\n{tail(log)}", file=sys.stderr)
                raise


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="serve the example model locally and send it predictions")
    p.add_argument("--model-dir", type=Path, required=True, help="output of examples/build_model.py")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--model-file", default="model.pt", help="model.pt (TorchScript) or model.pt2 (torch.export)")
    args = p.parse_args(argv)
    try:
        run(args.model_dir, args.port or free_port(), args.model_file)
    except (QuickstartError, OSError, KeyError, ValueError) as e:
        print(f"\nquickstart FAILED: {e}", file=sys.stderr)
        return 1
    print("\nquickstart OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
