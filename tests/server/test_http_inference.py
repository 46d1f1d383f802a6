"""Inference over real HTTP on loopback with the example model, all protocols, concurrently."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np

from server_harness import ServerThread
from metrics_text import parse, value

TOL = dict(rtol=1e-5, atol=1e-5)  # a batch of N may sum in another order than a batch of 1


def _request(kind: str, x: np.ndarray) -> tuple[str, dict[str, Any]]:
    if kind == "predict":
        return "/predict", {"features": x[0].tolist()}
    if kind == "batch":
        return "/predict/batch", {"batch_features": x.tolist()}
    if kind == "v2":  # row-major flattened data
        return "/v2/models/digits/infer", {
            "id": "r1",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
        }
    if kind == "v2-nested":
        return "/v2/models/digits/versions/1.4.0/infer", {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}],
        }
    if kind == "v1":
        return "/v1/models/digits:predict", {"instances": x.tolist()}
    raise ValueError(kind)


def _logits(kind: str, body: dict[str, Any], rows: int) -> tuple[np.ndarray, list[str] | None]:
    if kind == "predict":
        return np.asarray([body["outputs"]["logits"]], np.float32), [body["prediction"]]
    if kind == "batch":
        return np.asarray(body["outputs"]["logits"], np.float32), body["predictions"]
    if kind.startswith("v2"):
        (out,) = body["outputs"]
        assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [rows, 10]
        return np.asarray(out["data"], np.float32).reshape(out["shape"]), None
    return np.asarray(body["predictions"], np.float32), None


def test_concurrent_mixed_requests_match_the_direct_forward(served: ServerThread, heldout, reference) -> None:
    X, _ = heldout
    expected = reference(X)
    before = parse(httpx.get(served.url + "/metrics").text)
    kinds = ["predict", "batch", "v2", "v2-nested", "v1"]
    plan = []  # (kind, first row, rows)
    start = 0
    for i in range(150):
        kind = kinds[i % len(kinds)]
        rows = 1 if kind == "predict" else 1 + (i * 7) % 6
        plan.append((kind, start % (len(X) - 8), rows))
        start += rows

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=served.url, limits=limits, timeout=30) as client:
            async def one(kind: str, first: int, rows: int) -> httpx.Response:
                path, body = _request(kind, X[first : first + rows])
                return await client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})

            return await asyncio.gather(*(one(*p) for p in plan))

    responses = asyncio.run(run())
    for (kind, first, rows), resp in zip(plan, responses):
        assert resp.status_code == 200, (kind, resp.text)
        assert resp.headers["x-model-version"] == "1.4.0"
        assert resp.headers["x-request-id"]
        got, labels = _logits(kind, resp.json(), rows)
        want = expected[first : first + rows]
        np.testing.assert_allclose(got, want, **TOL, err_msg=kind)
        if labels is not None:
            assert labels == [str(i) for i in want.argmax(axis=1)]
        if kind == "v2":
            assert resp.json()["id"] == "r1" and resp.json()["model_version"] == "1.4.0"

    after = parse(httpx.get(served.url + "/metrics").text)
    # Counts match what was sent, per protocol.
    sent = {"predict": 0, "v2": 0, "v1": 0}
    for kind, _, _ in plan:
        sent["predict" if kind in ("predict", "batch") else kind.split("-")[0]] += 1
    for protocol, n in sent.items():
        delta = value(after, "modelship_requests_total", protocol=protocol, code="200") - value(
            before, "modelship_requests_total", protocol=protocol, code="200"
        )
        assert delta == n, protocol
        hist = value(after, "modelship_request_duration_seconds_count", protocol=protocol) - value(
            before, "modelship_request_duration_seconds_count", protocol=protocol
        )
        assert hist == n
    # Every row went through a forward pass, and batches of more than one request formed.
    rows_sent = sum(rows for _, _, rows in plan)
    rows_run = value(after, "modelship_batch_size_rows_sum") - value(before, "modelship_batch_size_rows_sum")
    batches = value(after, "modelship_batch_size_rows_count") - value(before, "modelship_batch_size_rows_count")
    assert rows_run == rows_sent
    assert batches < len(plan), "no request shared a forward pass"
    assert value(after, "modelship_queue_wait_seconds_count") - value(before, "modelship_queue_wait_seconds_count") == len(plan)
    assert value(after, "modelship_compute_seconds_count") - value(before, "modelship_compute_seconds_count") == batches


def test_metrics_expose_model_info_gauges_and_ready(served: ServerThread) -> None:
    resp = httpx.get(served.url + "/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    samples = parse(resp.text)
    assert value(samples, "modelship_model_info", model="digits", version="1.4.0", format="torchscript",
                 device="cpu", precision="fp32") == 1  # fmt: skip
    assert value(samples, "modelship_ready") == 1
    assert value(samples, "modelship_queue_depth_rows") == 0
    assert value(samples, "modelship_inflight_requests") == 0
    assert not any(n.startswith("modelship_gpu_memory") for n, _ in samples)  # CPU only


def test_plain_predict_returns_label_and_probabilities(served: ServerThread, heldout, reference) -> None:
    X, y = heldout
    resp = httpx.post(served.url + "/predict", json={"features": X[3].tolist()})
    body = resp.json()
    probs = np.asarray(body["probabilities"])
    assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-5
    logits = reference(X[3:4])[0]
    assert body["prediction"] == str(logits.argmax()) == str(probs.argmax())
    np.testing.assert_allclose(probs, np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum(), rtol=1e-4)
    # The held-out accuracy through the server is the model's (it classifies digits).
    resp = httpx.post(served.url + "/predict/batch", json={"batch_features": X[:64].tolist()})
    assert np.mean(np.asarray(resp.json()["predictions"], int) == y[:64]) > 0.9


def test_v2_binary_tensor_extension(served: ServerThread, heldout, reference) -> None:
    X, _ = heldout
    x = np.ascontiguousarray(X[:5], dtype="<f4")
    header = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [5, 64], "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    resp = httpx.post(
        served.url + "/v2/models/digits/infer",
        content=header + x.tobytes(),
        headers={"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert resp.status_code == 200, resp.text
    n = int(resp.headers["inference-header-content-length"])
    meta = json.loads(resp.content[:n])
    (out,) = meta["outputs"]
    assert out["shape"] == [5, 10] and out["parameters"]["binary_data_size"] == 5 * 10 * 4
    got = np.frombuffer(resp.content[n:], dtype="<f4").reshape(5, 10)
    np.testing.assert_allclose(got, reference(X[:5]), **TOL)


def test_v2_metadata_and_health(served: ServerThread) -> None:
    url = served.url
    assert httpx.get(url + "/v2").json()["extensions"] == ["binary_tensor_data"]
    assert httpx.get(url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(url + "/v2/health/ready").json() == {"ready": True}
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/ready").status_code == 200
    meta = httpx.get(url + "/v2/models/digits").json()
    assert meta["name"] == "digits" and meta["versions"] == ["1.4.0"] and meta["platform"] == "pytorch_torchscript"
    columns = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]  # the signature names them
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64], "columns": columns}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["labels"] == [str(i) for i in range(10)]
    assert httpx.get(url + "/v2/models/digits/versions/1.4.0").status_code == 200
    assert httpx.get(url + "/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert httpx.get(url + "/v2/models/digits/versions/1.4.0/ready").status_code == 200
    assert httpx.get(url + "/v1/models/digits").json() == {"name": "digits", "ready": True}


def test_every_response_carries_version_and_request_id(served: ServerThread) -> None:
    url = served.url
    for method, path, body in [
        ("GET", "/v2/health/ready", None),
        ("GET", "/metrics", None),
        ("GET", "/no/such/route", None),
        ("GET", "/v2/models/other", None),
        ("POST", "/predict", b"{"),
        ("POST", "/v2/models/other/infer", b"{}"),
        ("POST", "/predict", json.dumps({"features": [0.0] * 64}).encode()),
    ]:
        resp = httpx.request(method, url + path, content=body, headers={"x-request-id": "trace-42"})
        assert resp.headers["x-model-version"] == "1.4.0", path
        assert resp.headers["x-request-id"] == "trace-42", path
        fresh = httpx.request(method, url + path, content=body)
        other = httpx.request(method, url + path, content=body)
        assert fresh.headers["x-request-id"] and fresh.headers["x-request-id"] != other.headers["x-request-id"]


def test_torch_export_program_served_over_http(model_dir, heldout, reference) -> None:
    from modelship_server.app import create_app
    from server_harness import settings_for

    X, _ = heldout
    app = create_app(settings_for(model_dir, model_uri=(model_dir / "model.pt2").as_uri()))
    with ServerThread(app) as srv:
        srv.wait_ready()
        resp = httpx.post(srv.url + "/v2/models/digits/infer", json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [7, 64], "data": X[:7].ravel().tolist()}]})  # fmt: skip
        assert resp.status_code == 200, resp.text
        got = np.asarray(resp.json()["outputs"][0]["data"], np.float32).reshape(7, 10)
        np.testing.assert_allclose(got, reference(X[:7]), **TOL)
        assert httpx.get(srv.url + "/v2/models/digits").json()["platform"] == "pytorch_torch_export"
        samples = parse(httpx.get(srv.url + "/metrics").text)
        assert value(samples, "modelship_model_info", format="torch-export", version="1.0.0") == 1
