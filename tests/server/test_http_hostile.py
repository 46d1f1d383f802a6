"""Hostile input over real HTTP: bodies are limited before parsing, absurd shapes and lying
binary headers get a 4xx with a message, and the server never answers 5xx for them."""
from __future__ import annotations

import json
import socket
import time

import httpx
import numpy as np
import pytest

from metrics_text import parse
from modelship_server.codec import body_limit
from server_harness import ServerThread

INFER = "/v2/models/digits/infer"
ROW = [0.5] * 64


def _limit(srv: ServerThread) -> int:
    service = srv.service
    assert service.body_limit == body_limit(service.signature, service.settings.max_batch_rows)
    return service.body_limit


def _raw_exchange(srv: ServerThread, head: bytes, chunks: list[bytes], timeout: float = 10.0) -> bytes:
    """Send `head` and then `chunks` on one connection, stopping as soon as a response arrives;
    returns the response bytes. The request body is never completed by this function."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as sock:
        sock.sendall(head)
        sock.settimeout(0.05)
        for chunk in [b"", *chunks]:
            if chunk:
                sock.sendall(chunk)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if data:
                sock.settimeout(timeout)
                while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _content_length(data):
                    more = sock.recv(65536)
                    if not more:
                        break
                    data += more
                return data
        sock.settimeout(timeout)
        return sock.recv(65536)


def _content_length(response: bytes) -> int:
    head = response.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_the_limit_follows_max_batch_rows_and_the_row_size(served: ServerThread) -> None:
    limit = _limit(served)
    # A request of max_batch_rows full-precision rows, pretty-printed, fits under it...
    rows = [[float(np.float32(-1.2345678e-12))] * 64] * served.service.settings.max_batch_rows
    pretty = json.dumps({"batch_features": rows}, indent=2).encode()
    assert len(pretty) < limit < 4 * len(pretty)
    assert httpx.post(served.url + "/predict/batch", content=pretty, timeout=30).status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/predict/batch", INFER, "/v1/models/digits:predict"])
def test_a_declared_oversized_body_is_refused_before_it_is_sent(served: ServerThread, path: str) -> None:
    limit = _limit(served)
    head = (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {64 << 20}\r\n\r\n").encode()  # fmt: skip
    status, body = _status_and_json(_raw_exchange(served, head, []))  # not one body byte sent
    assert status == 413 and str(limit) in body["error"]


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(served: ServerThread) -> None:
    limit = _limit(served)
    head = b"POST /predict/batch HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    piece = b"[" * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    n = limit // len(piece) + 8  # the terminating chunk is never sent
    status, body = _status_and_json(_raw_exchange(served, head, [chunk] * n))
    assert status == 413 and "larger than" in body["error"]


def test_a_64_mb_body_gets_413_fast_and_the_server_stays_healthy(served: ServerThread) -> None:
    body = b'{"batch_features": [' + b"[" + b"1.0," * (16 << 20) + b"1.0]]}"
    start = time.perf_counter()
    resp = httpx.post(served.url + "/predict/batch", content=body, timeout=60)
    assert resp.status_code == 413 and "larger than" in resp.json()["error"]
    assert resp.headers["x-request-id"]
    assert time.perf_counter() - start < 20
    assert httpx.get(served.url + "/v2/health/ready").status_code == 200
    assert httpx.post(served.url + "/predict", json={"features": ROW}).status_code == 200
    samples = parse(httpx.get(served.url + "/metrics").text)
    assert any(n == "modelship_requests_total" and dict(ls)["code"] == "413" for n, ls in samples)


def test_feedback_bodies_are_limited_too(served: ServerThread) -> None:
    limit = served.service.feedback_body_limit
    assert 0 < limit < 16 << 20
    head = (f"POST /feedback HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {limit + 1}\r\n\r\n").encode()  # fmt: skip
    status, body = _status_and_json(_raw_exchange(served, head, []))
    assert status == 413 and str(limit) in body["error"]
    # Chunked: the framework route reads through the limited receive.
    resp = httpx.post(served.url + "/feedback", content=iter([b"[" * 65536] * (limit // 65536 + 2)))
    assert resp.status_code == 413 and "larger than" in resp.json()["error"]
    assert httpx.post(served.url + "/feedback", content=b"[" * 100_000).status_code == 400  # deep nesting


def _v2(inputs: list, **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


ABSURD_SHAPES = [[2**63, 2, 64], [2**64 - 1, 64], [0, 2**62], [1, 0, 2**62], [2**32, 2**32, 64], [1] * 40, [1] * 70, [], [-1, 64]]


@pytest.mark.parametrize("shape", ABSURD_SHAPES, ids=[str(len(s)) + "d" for s in ABSURD_SHAPES])
@pytest.mark.parametrize("data", [[], ROW, None], ids=["empty", "row", "binary"])
def test_absurd_shapes_are_4xx(served: ServerThread, shape: list, data: list | None) -> None:
    item: dict = {"name": "input", "datatype": "FP32", "shape": shape}
    headers = {}
    if data is None:
        item["parameters"] = {"binary_data_size": 256}
        header = _v2([item])
        content = header + np.ones(64, "<f4").tobytes()
        headers["inference-header-content-length"] = str(len(header))
    else:
        item["data"] = data
        content = _v2([item])
    resp = httpx.post(served.url + INFER, content=content, headers=headers)
    assert resp.status_code == 400, resp.text
    assert "shape" in resp.json()["error"]


@pytest.mark.parametrize("path,body", [
    ("/predict", {"features": json.loads("[" * 70 + "1.0" + "]" * 70)}),
    ("/predict", {"features": json.loads("[" * 63 + "1.0" + "]" * 63)}),
    ("/predict/batch", {"batch_features": json.loads("[" * 70 + "1.0" + "]" * 70)}),
    ("/v1/models/digits:predict", {"instances": json.loads("[" * 70 + "1.0" + "]" * 70)}),
    ("/v1/models/digits:predict", {"inputs": 3}),
    ("/v1/models/digits:predict", {"inputs": [ROW] * 65}),
    (INFER, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}], "id": [[[1]]]}),
    (INFER, {"inputs": [{"name": ["input"], "datatype": "FP32", "shape": [1, 64], "data": ROW}]}),
    (INFER, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}], "outputs": [{"name": {}}]}),
    (INFER, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": {"a": 1}}]}),
    (INFER, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW, "parameters": [1]}]}),
    (INFER, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [True, 64], "data": ROW}]}),
    (INFER, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [[ROW, ROW]]}]}),
])  # fmt: skip
def test_deep_nesting_and_wrong_types_are_400(served: ServerThread, path: str, body: dict) -> None:
    resp = httpx.post(served.url + path, content=json.dumps(body).encode())
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]


def test_json_nested_past_the_parser_limit_is_400(served: ServerThread) -> None:
    for path in ("/predict", INFER, "/v1/models/digits:predict"):
        resp = httpx.post(served.url + path, content=b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}")
        assert resp.status_code == 400 and "malformed JSON" in resp.json()["error"], path


@pytest.mark.parametrize("length,size", [
    ("abc", 256), ("-1", 256), ("0", 256), ("99999999999999999999999", 256), ("1e3", 256),
    (None, -1), (None, 2**63), (None, "256"), (None, True), (None, 10**30), (None, 255),
])  # fmt: skip
def test_lying_binary_extension_headers_are_400(served: ServerThread, length: str | None, size: object) -> None:
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                     "parameters": {"binary_data_size": size}}]}).encode()  # fmt: skip
    resp = httpx.post(served.url + INFER, content=header + np.ones(64, "<f4").tobytes(),
                      headers={"inference-header-content-length": length or str(len(header))})  # fmt: skip
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]


def test_no_5xx_was_counted(served: ServerThread) -> None:
    samples = parse(httpx.get(served.url + "/metrics").text)
    assert not any(n == "modelship_requests_total" and dict(ls)["code"].startswith("5") for n, ls in samples)
