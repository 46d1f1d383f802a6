"""The private admin port (MODELSHIP_ADMIN_PORT): /metrics, /feedback, /drift and the API docs
there and not on the inference port; inference there and not on the admin port; health on both."""
from __future__ import annotations

import threading
from typing import Iterator

import httpx
import pytest

from modelship_server.app import create_app
from server_harness import ServerThread, bound_socket, free_port, settings_for, start_process, wait_for

ROW = [0.5] * 64
HEALTH = ["/health", "/ready", "/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready",
          "/v2/models/digits/versions/1.4.0/ready"]  # fmt: skip
ADMIN_GETS = ["/metrics", "/v2/models/digits/drift", "/openapi.json", "/docs"]
METADATA = ["/v2", "/v2/models/digits", "/v2/models/digits/versions/1.4.0", "/v1/models/digits"]
INFER = [("/predict", {"features": ROW}), ("/predict/batch", {"batch_features": [ROW]}),
         ("/v1/models/digits:predict", {"instances": [ROW]}),
         ("/v2/models/digits/infer", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}]})]  # fmt: skip


class TwoPortServer(ServerThread):
    """ServerThread listening on a second (admin) socket too, as __main__ does."""

    def __init__(self, app: object, sock: object, admin_sock: object) -> None:
        super().__init__(app, sock)
        self.admin_sock = admin_sock
        self.admin_url = f"http://127.0.0.1:{admin_sock.getsockname()[1]}"  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock, admin_sock]}, daemon=True)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.admin_sock.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def two_ports(model_dir) -> Iterator[TwoPortServer]:
    sock, admin = bound_socket(), bound_socket()
    settings = settings_for(model_dir, model_version="1.4.0", admin_port=admin.getsockname()[1])
    with TwoPortServer(create_app(settings), sock, admin) as srv:
        srv.wait_ready()
        yield srv


def test_inference_and_metadata_on_the_main_port_only(two_ports: TwoPortServer) -> None:
    for path, body in INFER:
        assert httpx.post(two_ports.url + path, json=body).status_code == 200, path
        resp = httpx.post(two_ports.admin_url + path, json=body)
        assert resp.status_code == 404 and resp.json()["error"] == "not found", path
    for path in METADATA:
        assert httpx.get(two_ports.url + path).status_code == 200, path
        assert httpx.get(two_ports.admin_url + path).status_code == 404, path


def test_metrics_feedback_drift_and_docs_on_the_admin_port_only(two_ports: TwoPortServer) -> None:
    resp = httpx.post(two_ports.url + "/predict", json={"features": ROW})
    feedback = {"request_id": resp.headers["x-request-id"], "truth": "0"}
    for path in ADMIN_GETS:
        resp = httpx.get(two_ports.url + path)
        assert resp.status_code == 404 and resp.json()["error"] == "not found", path
        assert resp.headers["x-request-id"] and resp.headers["x-model-version"] == "1.4.0"
        assert httpx.get(two_ports.admin_url + path).status_code == 200, path
    assert "modelship_requests_total" in httpx.get(two_ports.admin_url + "/metrics").text
    for path in ("/feedback", "/v2/models/digits/feedback"):
        assert httpx.post(two_ports.url + path, json=feedback).status_code == 404, path
    assert httpx.post(two_ports.admin_url + "/feedback", json=feedback).status_code == 200
    assert httpx.post(two_ports.url + "/nothing/here").status_code == 404


def test_health_answers_on_both_ports(two_ports: TwoPortServer) -> None:
    for path in HEALTH:
        assert httpx.get(two_ports.url + path).status_code == 200, path
        assert httpx.get(two_ports.admin_url + path).status_code == 200, path


def test_without_an_admin_port_everything_is_on_one_port(served: ServerThread) -> None:
    for path in ADMIN_GETS + METADATA + HEALTH[:4]:
        assert httpx.get(served.url + path).status_code == 200, path


def test_the_process_listens_on_the_admin_port(model_dir) -> None:
    port, admin = free_port(), free_port()
    proc = start_process((model_dir / "model.pt").as_uri(), port, "--torch-threads", "1",
                         env={"MODELSHIP_ADMIN_PORT": str(admin)})  # fmt: skip
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{admin}/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        wait_for(ready, 60, "the admin port")
        assert proc.poll() is None
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        assert "modelship_ready 1.0" in httpx.get(f"http://127.0.0.1:{admin}/metrics").text
        assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"features": ROW}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
