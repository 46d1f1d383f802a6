"""Health that tells the truth (a dead batching loop, a stuck forward pass), and forward passes
never larger than max_batch_size: over real HTTP with the real example model."""
from __future__ import annotations

import threading
from typing import Any

import httpx
import numpy as np

from metrics_text import parse, value
from modelship_server.app import create_app
from modelship_server.model import load_model
from server_harness import ServerThread, settings_for, wait_for

HEALTH = ("/health", "/v2/health/live")
READY = ("/ready", "/v2/health/ready", "/v2/models/digits/ready")


class Instrumented:
    """The real loaded model; records the rows of each forward pass and can be made to hang."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.signature = model.signature
        self.info = model.info
        self.rows: list[int] = []
        self.hang = threading.Event()
        self.release = threading.Event()

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.rows.append(next(iter(inputs.values())).shape[0])
        if self.hang.is_set():
            assert self.release.wait(30), "test never released the forward pass"
        return self.model.predict(inputs)

    def memory_stats(self) -> dict[str, float] | None:
        return None


def _statuses(url: str, paths: tuple[str, ...]) -> set[int]:
    return {httpx.get(url + p).status_code for p in paths}


def test_a_dead_batching_loop_fails_liveness_and_readiness(model_dir, heldout) -> None:
    X, _ = heldout
    app = create_app(settings_for(model_dir, max_batch_size=8))
    with ServerThread(app) as srv:
        srv.wait_ready()
        assert _statuses(srv.url, HEALTH + READY) == {200}
        assert value(parse(httpx.get(srv.url + "/metrics").text), "modelship_batcher_up") == 1
        batcher = srv.service.batcher
        batcher._loop.call_soon_threadsafe(batcher._task.cancel)  # the loop dies (as a bug would kill it)
        wait_for(lambda: batcher.dead, 10, "the batcher to die")
        assert _statuses(srv.url, HEALTH + READY) == {503}
        resp = httpx.get(srv.url + "/v2/health/live")
        assert resp.json()["live"] is False and "batching loop is dead" in resp.json()["error"]
        assert "batching loop is dead" in httpx.get(srv.url + "/v2/health/ready").json()["error"]
        resp = httpx.post(srv.url + "/predict", json={"features": X[0].tolist()})
        assert resp.status_code == 503 and "batching loop is dead" in resp.json()["error"]
        samples = parse(httpx.get(srv.url + "/metrics").text)
        assert value(samples, "modelship_batcher_up") == 0 and value(samples, "modelship_ready") == 0


def test_a_forward_pass_stuck_past_the_timeout_fails_liveness_until_it_returns(model_dir, heldout) -> None:
    X, _ = heldout
    settings = settings_for(model_dir, max_batch_size=8, timeout_ms=400)
    model = Instrumented(load_model(settings))
    with ServerThread(create_app(settings, model=model)) as srv:
        srv.wait_ready()
        model.hang.set()
        try:
            answered: list[httpx.Response] = []
            client = threading.Thread(target=lambda: answered.append(
                httpx.post(srv.url + "/predict", json={"features": X[0].tolist()}, timeout=30)))  # fmt: skip
            client.start()
            client.join(30)
            assert answered[0].status_code == 504  # the request gave up at its timeout...
            wait_for(lambda: _statuses(srv.url, HEALTH) == {503}, 10, "liveness to fail")  # ...the forward is stuck
            health = httpx.get(srv.url + "/health").json()
            assert health["status"] == "unhealthy" and "stuck" in health["error"]
            assert _statuses(srv.url, READY) == {503}
            assert value(parse(httpx.get(srv.url + "/metrics").text), "modelship_forward_stuck") == 1
        finally:
            model.hang.clear()
            model.release.set()
        wait_for(lambda: _statuses(srv.url, HEALTH + READY) == {200}, 10, "health to come back")
        assert value(parse(httpx.get(srv.url + "/metrics").text), "modelship_forward_stuck") == 0
        assert httpx.post(srv.url + "/predict", json={"features": X[0].tolist()}).status_code == 200


def test_requests_larger_than_max_batch_size_run_in_warmed_chunks(model_dir, heldout, reference) -> None:
    X, _ = heldout
    settings = settings_for(model_dir, max_batch_size=8, max_batch_rows=64)
    model = Instrumented(load_model(settings))
    with ServerThread(create_app(settings, model=model)) as srv:
        srv.wait_ready()
        model.rows.clear()
        resp = httpx.post(srv.url + "/predict/batch", json={"batch_features": X[:61].tolist()})
        assert resp.status_code == 200
        assert model.rows == [8] * 7 + [5]  # never one 61-row forward pass
        logits = np.array(resp.json()["outputs"]["logits"])
        np.testing.assert_allclose(logits, reference(X[:61]), rtol=1e-5, atol=1e-5)
        samples = parse(httpx.get(srv.url + "/metrics").text)
        assert value(samples, "modelship_batch_size_rows_count") == 1  # one batch, computed in chunks
