"""Readiness only after load + warm-up; SIGTERM drains admitted work and exits 0."""
from __future__ import annotations

import asyncio
import json
import signal
import threading

import httpx
import numpy as np

from metrics_text import parse, value
from modelship_server.app import create_app
from modelship_server.model import load_model
from server_harness import ServerThread, free_port, settings_for, start_process, wait_for


def test_live_at_once_ready_only_after_load_and_warm_up(model_dir, heldout) -> None:
    X, _ = heldout
    gate = threading.Event()
    loaded = []

    def gated_loader(settings):
        assert gate.wait(60), "test never opened the gate"
        model = load_model(settings)  # the real loader: load + warm-up
        loaded.append(model)
        return model

    ready_when_hooked: list[bool] = []
    app = create_app(settings_for(model_dir, max_batch_size=16), loader=gated_loader,
                     on_ready=lambda: ready_when_hooked.append(app.state.service.ready))  # fmt: skip
    with ServerThread(app) as srv:
        try:
            _check_loading_then_ready(srv, X, gate, loaded)
        finally:
            gate.set()  # never leave the loader blocked (shutdown waits for it)
    assert ready_when_hooked == [False]  # the runner's hook (heap freeze) ran once, before readiness


def _check_loading_then_ready(srv: ServerThread, X: np.ndarray, gate: threading.Event, loaded: list) -> None:
    url = srv.url
    assert httpx.get(url + "/v2/health/live").status_code == 200
    assert httpx.get(url + "/health").status_code == 200
    for path in ("/v2/health/ready", "/ready", "/v2/models/digits/ready"):
        resp = httpx.get(url + path)
        assert resp.status_code == 503 and "loading" in resp.json()["error"], path
    resp = httpx.post(url + "/predict", json={"features": X[0].tolist()})
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert value(parse(httpx.get(url + "/metrics").text), "modelship_ready") == 0

    gate.set()
    srv.wait_ready()
    assert loaded[0].warmup_batches == [1, 16]  # warmed at batch 1 and the max batch size
    assert httpx.post(url + "/predict", json={"features": X[0].tolist()}).status_code == 200
    assert value(parse(httpx.get(url + "/metrics").text), "modelship_ready") == 1


def test_a_model_that_cannot_load_never_turns_ready(model_dir) -> None:
    failures = []
    settings = settings_for(model_dir, model_uri=(model_dir / "missing.pt").as_uri())
    with ServerThread(create_app(settings, on_load_failure=failures.append)) as srv:
        wait_for(lambda: failures, 30, "the load failure")
        resp = httpx.get(srv.url + "/v2/health/ready")
        assert resp.status_code == 503 and "missing.pt" in resp.json()["error"]
        assert httpx.get(srv.url + "/v2/health/live").status_code == 200


def test_shutdown_turns_readiness_false_refuses_new_work_and_finishes_queued(model_dir, heldout, reference) -> None:
    X, _ = heldout
    settings = settings_for(model_dir, max_batch_size=64, max_delay_ms=60_000)
    with ServerThread(create_app(settings)) as srv:
        srv.wait_ready()
        results: list[httpx.Response] = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(
                httpx.post(srv.url + "/predict", json={"features": X[i].tolist()}, timeout=30)))
            for i in range(3)
        ]  # fmt: skip
        for t in threads:
            t.start()
        wait_for(lambda: srv.service.batcher.queued_rows == 3, 10, "three queued requests")
        srv.service.begin_shutdown()  # what the SIGTERM handler calls
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 503
        refused = httpx.post(srv.url + "/predict", json={"features": X[0].tolist()})
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        for t in threads:
            t.join(30)
        assert sorted(r.status_code for r in results) == [200, 200, 200]
        got = sorted(tuple(r.json()["outputs"]["logits"]) for r in results)
        want = sorted(tuple(row) for row in reference(X[:3]).tolist())
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)


def test_sigterm_under_load_answers_every_admitted_request_and_exits_0(model_dir, heldout, reference) -> None:
    X, _ = heldout
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Requests wait for batch-mates up to 60 s: at SIGTERM they are all still queued.
    proc = start_process((model_dir / "model.pt").as_uri(), port, "--max-batch-size", "256",
                         "--max-delay-ms", "60000", "--torch-threads", "1")  # fmt: skip
    try:
        def ready() -> bool:
            try:
                return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None  # exited: fail below, not by timeout

        wait_for(ready, 90, "the server process to turn ready")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        n = 40

        async def load() -> tuple[list, list]:
            limits = httpx.Limits(max_connections=n + 8)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
                async def one(i: int) -> httpx.Response | Exception:
                    try:
                        return await client.post("/predict", content=json.dumps({"features": X[i].tolist()}))
                    except httpx.HTTPError as e:
                        return e

                admitted = [asyncio.ensure_future(one(i)) for i in range(n)]
                async with httpx.AsyncClient(base_url=url, timeout=5) as probe:
                    for _ in range(500):  # until the server holds all n in its queue
                        depth = value(parse((await probe.get("/metrics")).text), "modelship_queue_depth_rows")
                        if depth == n:
                            break
                        await asyncio.sleep(0.02)
                    assert depth == n
                proc.send_signal(signal.SIGTERM)
                late = [asyncio.ensure_future(one(i)) for i in range(n, n + 10)]
                return list(await asyncio.gather(*admitted)), list(await asyncio.gather(*late))

        admitted, late = asyncio.run(load())
        assert [getattr(r, "status_code", r) for r in admitted] == [200] * n
        expected = reference(X[:n])
        got = np.array([r.json()["outputs"]["logits"] for r in admitted])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        # Work sent after SIGTERM is refused (503) or finds the socket closed; never a 5xx other than 503.
        for r in late:
            if isinstance(r, httpx.Response):
                assert r.status_code in (200, 503), r.text
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_process_exits_1_when_the_model_cannot_load(model_dir) -> None:
    proc = start_process((model_dir / "missing.pt").as_uri(), free_port())
    try:
        assert proc.wait(timeout=90) == 1
        assert proc.stdout is not None and "model not found" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
