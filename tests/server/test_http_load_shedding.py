"""Overload answers 503 + Retry-After, a request past its timeout answers 504 (real HTTP)."""
from __future__ import annotations

import json
import socket
import threading

import httpx

from metrics_text import parse, value
from modelship_server.app import create_app
from server_harness import ServerThread, settings_for, wait_for


def test_queue_full_is_503_with_retry_after_and_timeout_is_504(model_dir, heldout) -> None:
    X, _ = heldout
    # A request waits for batch-mates (long delay), the queue holds one row, the timeout is short.
    settings = settings_for(model_dir, max_batch_size=32, max_delay_ms=60_000, max_queue=1, timeout_ms=1500)
    with ServerThread(create_app(settings)) as srv:
        srv.wait_ready()
        first: dict[str, httpx.Response] = {}

        def send_first() -> None:
            first["resp"] = httpx.post(srv.url + "/predict", json={"features": X[0].tolist()}, timeout=30)

        t = threading.Thread(target=send_first)
        t.start()
        wait_for(lambda: srv.service.batcher.queued_rows == 1, 10, "the first request to queue")

        shed = httpx.post(srv.url + "/predict", json={"features": X[1].tolist()})
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert "queue full" in shed.json()["error"]
        assert shed.headers["x-request-id"]

        t.join(30)
        timed_out = first["resp"]
        assert timed_out.status_code == 504, timed_out.text
        assert "timed out" in timed_out.json()["error"]

        samples = parse(httpx.get(srv.url + "/metrics").text)
        assert value(samples, "modelship_requests_total", code="503") == 1
        assert value(samples, "modelship_requests_total", code="504") == 1
        # The timed-out request left the queue without being computed.
        assert value(samples, "modelship_batch_size_rows_count") == 0
        assert value(samples, "modelship_queue_depth_rows") == 0
        # And the server still serves (the next request waits its own delay: use a batch of 32).
        full = httpx.post(srv.url + "/predict/batch", json={"batch_features": X[:32].tolist()}, timeout=30)
        assert full.status_code == 200 and len(full.json()["predictions"]) == 32


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off a raw socket (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    assert len(rest) == length, f"bytes after the response: {rest[length:]!r}"
    return int(lines[0].split(" ", 2)[1]), headers, rest


def _nothing_more(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(1) == b""  # closed, not another response
    except TimeoutError:
        return True
    finally:
        sock.settimeout(10)


def test_a_full_queue_sheds_before_reading_the_body_and_keeps_the_connection(model_dir, heldout) -> None:
    """The 503 comes before the body is read or parsed: half a body (not even JSON) gets it at
    once. The rest of the body is then discarded by the HTTP server, not taken as a request
    (it holds one), and the next request on the connection is answered as itself."""
    X, _ = heldout
    settings = settings_for(model_dir, max_batch_size=32, max_delay_ms=60_000, max_queue=1, timeout_ms=6000)
    with ServerThread(create_app(settings)) as srv:
        srv.wait_ready()
        first: dict[str, httpx.Response] = {}
        t = threading.Thread(target=lambda: first.setdefault(
            "resp", httpx.post(srv.url + "/predict", json={"features": X[0].tolist()}, timeout=30)))  # fmt: skip
        t.start()
        wait_for(lambda: srv.service.batcher.queued_rows == 1, 10, "the first request to queue")

        smuggled = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-request-id: smuggled\r\n\r\n"
        body = smuggled + b"x" * 200_000  # larger than the server's read-ahead (64 KiB)
        half = len(body) // 2
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"x-request-id: shed-1\r\ncontent-length: %d\r\n\r\n" % len(body) + body[:half])  # fmt: skip
            status, headers, answer = _response(sock)
            assert status == 503 and headers["retry-after"] == "1" and headers["x-request-id"] == "shed-1"
            assert "queue full" in json.loads(answer)["error"]
            assert headers.get("connection") != "close"
            sock.sendall(body[half:])
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-request-id: next-1\r\n\r\n")
            status, headers, _ = _response(sock)
            assert status == 200 and headers["x-request-id"] == "next-1"
            assert _nothing_more(sock)

            # Chunked: the same, with the first chunk only before the 503.
            sock.sendall(b"POST /predict/batch HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                         b"x-request-id: shed-2\r\n\r\n%x\r\n%s\r\n" % (len(smuggled), smuggled))  # fmt: skip
            status, headers, _ = _response(sock)
            assert status == 503 and headers["x-request-id"] == "shed-2"
            sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-request-id: next-2\r\n\r\n")
            status, headers, _ = _response(sock)
            assert status == 200 and headers["x-request-id"] == "next-2"
            assert _nothing_more(sock)

            # Another model's name is still a 404, not a 503 to retry.
            sock.sendall(b"POST /v2/models/other/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
            status, _, answer = _response(sock)
            assert status == 404 and "not found" in json.loads(answer)["error"]

        # A client waiting for "100 Continue" gets the 503 instead and sends no body: the
        # server closes the connection so that no body is expected on it.
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
                         b"content-length: %d\r\n\r\n" % len(body))  # fmt: skip
            status, headers, _ = _response(sock)
            assert status == 503 and headers["connection"] == "close"
            assert sock.recv(1) == b""

        t.join(30)
        assert first["resp"].status_code == 504  # nothing joined it: its timeout, not a lost answer
        samples = parse(httpx.get(srv.url + "/metrics").text)
        assert value(samples, "modelship_requests_total", code="503") == 3
        # Nothing but the real requests was served: the smuggled ones never ran.
        assert value(samples, "modelship_requests_total", code="200") == 0
