"""Overload answers 503 + Retry-After, a request past its timeout answers 504 (real HTTP)."""
from __future__ import annotations

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
