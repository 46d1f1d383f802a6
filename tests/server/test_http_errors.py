"""Every bad input gets its 4xx with a message; the server stays healthy and counts no 5xx."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from metrics_text import parse, value
from server_harness import ServerThread

ROW = [1.0] * 64


def v2(inputs: list, **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def v2_input(data: object, shape: list, datatype: str = "FP32", name: str = "input") -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


INFER = "/v2/models/digits/infer"
CASES = [
    # (id, path, body, status, words expected in the message)
    ("plain wrong shape", "/predict", {"features": [1.0] * 63}, 400, "shape"),
    ("plain two rows", "/predict", {"features": [ROW, ROW]}, 400, "shape"),
    ("plain strings", "/predict", {"features": ["a"] * 64}, 400, "FP32"),
    ("plain booleans", "/predict", {"features": [True] * 64}, 400, "FP32"),
    ("plain nulls", "/predict", {"features": [None] * 64}, 400, "FP32"),
    ("plain overflows fp32", "/predict", {"features": [1e39] * 64}, 400, "non-finite"),
    ("plain missing field", "/predict", {"feature": ROW}, 400, "features"),
    ("plain not an object", "/predict", [ROW], 400, "object"),
    ("batch ragged", "/predict/batch", {"batch_features": [ROW, [1.0] * 10]}, 400, "rectangular"),
    ("batch empty", "/predict/batch", {"batch_features": []}, 400, "no"),
    ("batch too many rows", "/predict/batch", {"batch_features": [ROW] * 65}, 400, "limit"),
    ("batch missing field", "/predict/batch", {"features": ROW}, 400, "batch_features"),
    ("v2 wrong datatype", INFER, v2([v2_input(ROW, [1, 64], "FP64")]), 400, "datatype"),
    ("v2 wrong shape", INFER, v2([v2_input([1.0] * 63, [1, 63])]), 400, "shape"),
    ("v2 data does not fill shape", INFER, v2([v2_input(ROW, [2, 64])]), 400, "fill"),
    ("v2 unknown input", INFER, v2([v2_input(ROW, [1, 64], name="pixels")]), 400, "unknown input"),
    ("v2 missing inputs", INFER, b'{"id": "x"}', 400, "inputs"),
    ("v2 missing data", INFER, v2([{"name": "input", "datatype": "FP32", "shape": [1, 64]}]), 400, "data"),
    ("v2 too many rows", INFER, v2([v2_input([ROW] * 65, [65, 64])]), 400, "limit"),
    ("v2 unknown output", INFER, v2([v2_input(ROW, [1, 64])], outputs=[{"name": "nope"}]), 400, "unknown output"),
    ("v2 unknown model", "/v2/models/nope/infer", v2([v2_input(ROW, [1, 64])]), 404, "nope"),
    ("v2 unknown version", "/v2/models/digits/versions/9/infer", v2([v2_input(ROW, [1, 64])]), 404, "version"),
    ("v1 unknown model", "/v1/models/nope:predict", {"instances": [ROW]}, 404, "nope"),
    ("v1 missing instances", "/v1/models/digits:predict", {"rows": [ROW]}, 400, "instances"),
    ("v1 wrong shape", "/v1/models/digits:predict", {"instances": [[1.0] * 3]}, 400, "shape"),
    ("malformed json", "/predict", b'{"features": [1, 2', 400, "malformed JSON"),
    ("json NaN literal", "/predict", b'{"features": [NaN]}', 400, "malformed JSON"),
    ("empty body", "/v1/models/digits:predict", b"", 400, "empty"),
    ("unknown route", "/predict/nothing", {"features": ROW}, 404, "not found"),
]


@pytest.mark.parametrize("name,path,body,status,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_its_4xx_with_a_message(served: ServerThread, name, path, body, status, words) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = httpx.post(served.url + path, content=content, headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert isinstance(error, str) and words.lower() in error.lower(), error
    assert resp.headers["x-request-id"] and resp.headers["x-model-version"] == "1.4.0"


def test_binary_non_finite_and_bad_sizes_are_rejected(served: ServerThread) -> None:
    x = np.ones((1, 64), "<f4")
    x[0, 5] = np.nan
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                     "parameters": {"binary_data_size": 256}}]}).encode()  # fmt: skip
    url = served.url + INFER
    hdrs = {"inference-header-content-length": str(len(header))}
    resp = httpx.post(url, content=header + x.tobytes(), headers=hdrs)
    assert resp.status_code == 400 and "non-finite" in resp.json()["error"]
    resp = httpx.post(url, content=header + x.tobytes()[:100], headers=hdrs)
    assert resp.status_code == 400 and "binary_data_size" in resp.json()["error"]
    resp = httpx.post(url, content=header, headers={"inference-header-content-length": "99999"})
    assert resp.status_code == 400 and "out of range" in resp.json()["error"]


def test_server_stays_healthy_after_bad_input_and_counts_no_5xx(served: ServerThread, heldout, reference) -> None:
    for _, path, body, _, _ in CASES:  # once more, back to back
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert httpx.post(served.url + path, content=content).status_code < 500
    assert httpx.get(served.url + "/v2/health/ready").status_code == 200
    X, _ = heldout
    resp = httpx.post(served.url + "/predict", json={"features": X[0].tolist()})
    assert resp.status_code == 200
    np.testing.assert_allclose(resp.json()["outputs"]["logits"], reference(X[:1])[0], rtol=1e-5, atol=1e-5)
    samples = parse(httpx.get(served.url + "/metrics").text)
    assert value(samples, "modelship_requests_total", code="400") >= 2 * sum(1 for c in CASES if c[3] == 400 and c[1] != "/predict/nothing")
    assert not any(n == "modelship_requests_total" and dict(ls)["code"].startswith("5") for n, ls in samples)


def test_wrong_method_on_an_inference_route_is_405(served: ServerThread) -> None:
    resp = httpx.get(served.url + "/v2/models/digits/infer")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST" and "POST" in resp.json()["error"]
    assert resp.headers["x-request-id"] and resp.headers["x-model-version"] == "1.4.0"
